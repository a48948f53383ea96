"""VTPModel behaviour beyond the reference numbers: io, strictness, sizes, pixel API."""
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from openvtp import OpenVTPError, VTPConfig, VTPModel

from .conftest import CONFORMANCE


def _tiny(**overrides) -> VTPModel:
    return VTPModel(VTPConfig.preset("vtp-tiny", **overrides)).eval()


def test_save_load_round_trip_is_bit_identical(tmp_path):
    model = _tiny()
    model.save_pretrained(tmp_path / "m")
    loaded = VTPModel.from_pretrained(tmp_path / "m")
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    x = torch.rand(2, 3, 64, 48)
    with torch.inference_mode():
        assert torch.equal(model.decode(model.encode(x)), loaded.decode(loaded.encode(x)))
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["model_type"] == "vtp" and cfg["architectures"] == ["VTPModel"]
    released = json.loads((CONFORMANCE / "tiny-swiglu-rms" / "config.json").read_text())
    released_fields = set(released) - {"transformers_version"}
    assert released_fields == set(cfg)
    assert load_file(str(tmp_path / "m" / "model.safetensors"))["trunk.rope_embed.periods"].dtype == torch.bfloat16


def test_released_checkpoint_round_trip(tmp_path):
    src = CONFORMANCE / "tiny-mlp-ln-qknorm"
    model = VTPModel.from_pretrained(src)
    model.save_pretrained(tmp_path / "copy")
    ref, ours = load_file(str(src / "model.safetensors")), load_file(str(tmp_path / "copy" / "model.safetensors"))
    assert ref.keys() == ours.keys()
    assert all(torch.equal(ref[k], ours[k]) and ref[k].dtype == ours[k].dtype for k in ref)


def test_strict_loading_names_the_tensor(tmp_path):
    model = _tiny()
    model.save_pretrained(tmp_path / "m")
    state = load_file(str(tmp_path / "m" / "model.safetensors"))
    state["trunk.norm.weight"] = torch.ones(3)
    del state["visual_proj.weight"]
    state["extra.weight"] = torch.ones(1)
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(OpenVTPError) as e:
        VTPModel.from_pretrained(tmp_path / "m")
    msg = str(e.value)
    assert "visual_proj.weight" in msg and "extra.weight" in msg and "trunk.norm.weight" in msg


def test_config_unknown_and_ill_typed_fields(tmp_path):
    with pytest.raises(OpenVTPError, match="vision_embed_dimm"):
        VTPConfig.from_dict({"vision_embed_dimm": 3})
    with pytest.raises(OpenVTPError, match="vision_depth"):
        VTPConfig.from_dict({"vision_depth": "12"})
    with pytest.raises(OpenVTPError, match="multiple of 4"):
        VTPConfig.from_dict({"vision_embed_dim": 60, "vision_num_heads": 4})
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(OpenVTPError, match="not valid JSON"):
        VTPConfig.from_json_file(tmp_path / "config.json")


@pytest.mark.parametrize("key, value, message", [
    ("text_pool_type", "first", "only text_pool_type='argmax' is supported"),
    ("text_proj_type", "mlp", "only text_proj_type='linear' is supported"),
    ("text_embed_cls", True, "text_embed_cls=true is not supported"),
    ("text_output_tokens", True, "text_output_tokens=true is not supported"),
    ("text_ls_init_value", 1e-5, "text_ls_init_value is not supported"),
    ("text_pad_id", "0", "text_pad_id must be an integer"),
])
def test_fixed_fields_load_at_their_value_only(key, value, message):
    """The released config.json's options that can hold one value here are checked on load, not kept as fields."""
    released = json.loads((CONFORMANCE / "tiny-swiglu-rms" / "config.json").read_text())
    assert key in released and key not in {f.name for f in dataclasses.fields(VTPConfig)}
    cfg = VTPConfig.from_dict(released)
    assert cfg.to_dict()[key] == released[key]
    assert VTPConfig.from_dict({**released, "text_pad_id": 1}) == cfg  # any pad id builds the same model
    with pytest.raises(OpenVTPError, match=f"src: {message}"):
        VTPConfig.from_dict({**released, key: value}, source="src")


def test_image_sizes():
    model = _tiny()
    with torch.inference_mode():
        for h, w in ((64, 64), (32, 80), (96, 48)):
            z = model.encode(torch.rand(1, 3, h, w))
            assert z.shape == (1, 8, h // 16, w // 16)
            assert model.decode(z).shape == (1, 3, h, w)
        with pytest.raises(OpenVTPError, match="multiple of the patch size"):
            model.encode(torch.rand(1, 3, 64, 50))


def test_model_built_under_inference_mode_runs(tmp_path):
    _tiny().save_pretrained(tmp_path / "m")
    x = torch.rand(2, 3, 32, 32)
    ref = VTPModel.from_pretrained(tmp_path / "m").eval().encode(x)
    with torch.inference_mode():  # buffers become inference tensors (no version counter)
        model = VTPModel.from_pretrained(tmp_path / "m").eval()
        assert torch.equal(model.encode(x), ref)


def test_pixel_api_normalises_inside():
    model = _tiny()
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        ref = model.get_reconstruction_latents((x - model.pixel_mean) / model.pixel_std)
        assert torch.allclose(model.encode(x), ref)
        out = model.decode(ref)
    assert out.min() >= 0 and out.max() <= 1


def test_masked_tokens_and_drop_path():
    model = _tiny().train()
    x = torch.randn(4, 3, 32, 32)
    masks = torch.zeros(4, 4, dtype=torch.bool)
    masks[:, :2] = True
    out = model.trunk(x, masks=masks, drop_path=0.5)
    out.sum().backward()
    assert model.trunk.mask_token.grad is not None and model.trunk.mask_token.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():  # drop path is off in eval, so two calls agree
        assert torch.equal(model.trunk(x, drop_path=0.5), model.trunk(x, drop_path=0.5))


def test_hub_id_offline_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OpenVTPError, match="cannot fetch model 'MiniMaxAI/VTP-Large-f16d64'"):
        VTPModel.from_pretrained("MiniMaxAI/VTP-Large-f16d64", cache_dir=str(tmp_path), local_files_only=True)
