"""The model reproduces the released reference model's outputs (../shared/conformance)."""
import json

import pytest
import torch
from safetensors.torch import load_file

from openvtp.models import VTPConfig, VTPModel
from openvtp.data.text import tokenize

from .conftest import CONFORMANCE

FIXTURES = ["tiny-swiglu-rms", "tiny-mlp-ln-qknorm"]


def _outputs(model: VTPModel, io: dict) -> dict[str, torch.Tensor]:
    img, rect, text = io["image"], io["image_rect"], io["text"]
    out = {}
    with torch.inference_mode():
        f = model.get_last_layer_feature(img)
        out["last_cls"], out["last_patch"] = f["cls_token"], f["patch_tokens"]
        f = model.get_last_layer_feature(img, use_bottleneck=True)
        out["last_cls_bottleneck"], out["last_patch_bottleneck"] = f["cls_token"], f["patch_tokens"]
        inter = model.get_intermediate_layers_feature(img, n=2, return_class_token=True, norm=True)
        (out["inter0_patch"], out["inter0_cls"]), (out["inter1_patch"], out["inter1_cls"]) = inter
        out["latents"] = model.get_reconstruction_latents(img)
        out["recon"] = model.get_latents_decoded_images(io["latents"])
        out["latents_rect"] = model.get_reconstruction_latents(rect)
        out["recon_rect"] = model.get_latents_decoded_images(io["latents_rect"])
        f = model.get_last_layer_feature(rect)
        out["last_cls_rect"], out["last_patch_rect"] = f["cls_token"], f["patch_tokens"]
        out["clip_image"] = model.get_clip_image_feature(img, normalize=True)
        out["clip_image_raw"] = model.get_clip_image_feature(img, normalize=False)
        out["clip_text"] = model.get_clip_text_feature(text, normalize=True)
        out["clip_text_raw"] = model.get_clip_text_feature(text, normalize=False)
        logits_img, logits_txt = model.get_clip_logits(img, text)
        out["logits"] = logits_img
        torch.testing.assert_close(logits_txt, logits_img.T)
        p = model.config.vision_patch_size
        for suffix, x in (("", img), ("_rect", rect)):
            sin, cos = model.trunk.rope_embed(x.shape[-2] // p, x.shape[-1] // p)
            out[f"dbg_trunk_rope_sin{suffix}"], out[f"dbg_trunk_rope_cos{suffix}"] = sin, cos
        # residual streams, to localise a failure
        _, kept = model.trunk.forward_blocks(img, keep=set(range(len(model.trunk.blocks))))
        for i, x in kept.items():
            out[f"dbg_trunk_block{i}"] = x
        out["dbg_patch_embed"] = model.trunk.patch_embed(img)
        x = model.pixel_decoder.embed(io["latents"])
        h, w = io["latents"].shape[-2:]
        out["dbg_decoder_proj_in"] = x.transpose(1, 2).reshape(x.shape[0], -1, h, w)
    return out


@pytest.mark.parametrize("name", FIXTURES)
def test_reference_outputs(name):
    folder = CONFORMANCE / name
    model = VTPModel.from_pretrained(folder)
    io = load_file(str(folder / "io.safetensors"))
    out = _outputs(model, io)
    refs = [k for k in io if k not in ("image", "image_rect", "text")]
    compared = 0
    for key in refs:
        if key not in out:
            continue
        got, ref = out[key], io[key]
        if ref.dtype == torch.bfloat16:
            assert got.dtype == torch.bfloat16 and torch.equal(got, ref), f"{name}: {key} RoPE table differs"
        else:
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {key}: {m}")
        compared += 1
    # every non-debug reference is covered
    assert not [k for k in refs if k not in out and not k.startswith("dbg_")]
    assert compared >= 25


def test_forward_types_match_methods():
    folder = CONFORMANCE / "tiny-swiglu-rms"
    model = VTPModel.from_pretrained(folder)
    io = load_file(str(folder / "io.safetensors"))
    with torch.inference_mode():
        clip = model(io["image"], io["text"], forward_type="clip")
        rec = model(io["image"], forward_type="rec")
        feat = model(io["image"], forward_type="feature")
    torch.testing.assert_close(clip["image_features"], io["clip_image"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(clip["text_features"], io["clip_text"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(rec["latents"], io["latents"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(feat["patch_tokens"], io["last_patch_bottleneck"], atol=1e-5, rtol=1e-4)


def test_rope_periods_stay_bf16_and_are_loaded():
    folder = CONFORMANCE / "tiny-swiglu-rms"
    meta = json.loads((folder / "meta.json").read_text())
    model = VTPModel.from_pretrained(folder).float()
    periods = model.trunk.rope_embed.periods
    assert periods.dtype == torch.bfloat16
    assert periods.tolist() == meta["rope_periods"]["trunk.rope_embed.periods"]["perturbed"]
    fresh = VTPModel(VTPConfig.from_json_file(folder / "config.json"))
    assert fresh.trunk.rope_embed.periods.tolist() == meta["rope_periods"]["trunk.rope_embed.periods"]["analytic"]


def test_tokenizer_matches_official_ids():
    meta = json.loads((CONFORMANCE / "tiny-swiglu-rms" / "meta.json").read_text())
    ids = tokenize(meta["text_strings"], 77)
    assert ids.dtype == torch.int64
    assert ids.tolist() == meta["text_official_token_ids"]


def test_large_manifest_keys_and_shapes():
    manifest = json.loads((CONFORMANCE / "manifests" / "large.json").read_text())
    with torch.device("meta"):
        model = VTPModel(VTPConfig.from_dict(manifest["config"]))
    state = model.state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == manifest["state_dict"]
    for key, dtype in manifest["state_dict_dtypes_non_float32"].items():
        assert str(state[key].dtype) == f"torch.{dtype}"
    counts = model.param_counts()
    for part in ("trunk", "pixel_decoder", "text", "other", "total"):
        assert counts[part] == manifest["param_count"][part], part


@pytest.mark.parametrize("preset,total", [("vtp-s", 167.2e6), ("vtp-b", 295.6e6), ("vtp-l", 731.6e6)])
def test_preset_parameter_counts(preset, total):
    with torch.device("meta"):
        model = VTPModel(VTPConfig.preset(preset))
    assert round(model.param_counts()["total"] / 1e5) == round(total / 1e5)
