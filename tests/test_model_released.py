"""Edge cases where openvtp follows the released model (MiniMax-AI/VTP, vtp/models/vtp_hf) beyond the fixtures."""
import pytest
import torch

from openvtp import OpenVTPError, VTPConfig, VTPModel
from openvtp.models.layers.mlp import swiglu_hidden


def _tiny(**overrides) -> VTPModel:
    return VTPModel(VTPConfig.preset("vtp-tiny", **overrides)).eval()


@pytest.mark.parametrize("ffn", ["swiglu", "mlp"])
def test_decoder_ffn_width_ignores_vision_mlp_ratio(ffn):
    # The released DinoV3PixelDecoder is built without ffn_ratio (default 4); only the trunk reads the ratio.
    model = _tiny(vision_mlp_ratio=2.0, vision_ffn_layer=ffn, decoder_ffn_layer=ffn)
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    first = "w1" if ffn == "swiglu" else "fc1"
    width = (lambda d, r: swiglu_hidden(d, r)) if ffn == "swiglu" else (lambda d, r: int(d * r))
    assert state[f"trunk.blocks.0.mlp.{first}.weight"] == (width(64, 2.0), 64)
    assert state[f"pixel_decoder.blocks.0.mlp.{first}.weight"] == (width(64, 4.0), 64)
    assert width(64, 2.0) != width(64, 4.0)


def test_rec_forward_returns_the_input_as_target():
    model = _tiny()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        out = model(x, forward_type="rec")
    assert list(out) == ["latents", "reconstructed_image", "target_image"]
    assert out["target_image"] is x


def test_clip_forward_returns_logit_bias_when_the_model_has_one():
    with torch.inference_mode():
        plain = _tiny()(torch.randn(1, 3, 32, 32), forward_type="clip")
        biased_model = _tiny(init_logit_bias=-10.0)
        biased = biased_model(torch.randn(1, 3, 32, 32), forward_type="clip")
    assert "logit_bias" not in plain
    assert list(biased) == ["image_features", "logit_scale", "logit_bias"]
    assert biased["logit_bias"] is biased_model.logit_bias and biased["logit_bias"].item() == -10.0


def test_intermediate_layers_come_in_block_order():
    model = _tiny(vision_depth=3)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        asked = model.get_intermediate_layers_feature(x, n=[2, 0], return_class_token=True)
        ascending = model.get_intermediate_layers_feature(x, n=[0, 2], return_class_token=True)
        last_two = model.get_intermediate_layers_feature(x, n=2)
    for (p, c), (q, d) in zip(asked, ascending):
        assert torch.equal(p, q) and torch.equal(c, d)
    assert not torch.equal(asked[0][0], asked[1][0])
    assert torch.equal(last_two[1], model.get_last_layer_feature(x)["patch_tokens"])
    with pytest.raises(OpenVTPError, match="distinct block indices"):
        model.get_intermediate_layers_feature(x, n=[1, 1])
    with pytest.raises(OpenVTPError, match="distinct block indices"):
        model.get_intermediate_layers_feature(x, n=[3])


def test_clip_forward_without_text_tower_is_a_clear_error():
    model = _tiny(train_clip=False)
    x = torch.randn(1, 3, 32, 32)
    for kwargs in ({"image": x}, {"text": torch.zeros(1, 77, dtype=torch.long)}, {}):
        # the released model raises RuntimeError("CLIP not enabled ..."); ours is also an OpenVTPError
        with pytest.raises(RuntimeError, match="no text tower") as e:
            model(forward_type="clip", **kwargs)
        assert isinstance(e.value, OpenVTPError)
    with pytest.raises(RuntimeError, match="no pixel decoder"):
        _tiny(train_reconstruction=False)(x, forward_type="rec")
    with pytest.raises(OpenVTPError, match="needs an image"):
        model(forward_type="rec")
