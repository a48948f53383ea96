"""Converting a `VTPModel` to `AutoencoderVTP` and writing either format.

A diffusers folder holds `config.json` (with `auto_map`), `diffusion_pytorch_model.safetensors` and a verbatim
copy of `diffusers_vtp.py`, so diffusers loads it with `trust_remote_code=True` and no openvtp installed.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from openvtp.constants import IMAGENET_MEAN, IMAGENET_STD
from openvtp.errors import OpenVTPError
from openvtp.runtime.files import replace_dir, temp_dir

MODULE_FILE = Path(__file__).with_name("diffusers_vtp.py")
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"


def autoencoder_class():
    """`AutoencoderVTP`, or an OpenVTPError that says how to install diffusers."""
    try:
        from openvtp.integrations.diffusers_vtp import AutoencoderVTP
    except ImportError as e:
        raise OpenVTPError(f"the diffusers format needs diffusers: pip install 'openvtp[diffusers]' ({e})") from None
    return AutoencoderVTP


def diffusers_config(cfg, latents_stats: dict[str, torch.Tensor] | None = None) -> dict:
    """`AutoencoderVTP` arguments for a `VTPConfig`; per-channel stats (1, C, 1, 1) become latents_mean/std."""
    out = dict(
        image_size=cfg.image_size, patch_size=cfg.vision_patch_size, latent_channels=cfg.vision_feature_bottleneck,
        encoder_embed_dim=cfg.vision_embed_dim, encoder_depth=cfg.vision_depth, encoder_num_heads=cfg.vision_num_heads,
        encoder_mlp_ratio=cfg.vision_mlp_ratio, encoder_ffn_layer=cfg.vision_ffn_layer,
        encoder_norm_layer=cfg.vision_norm_layer, encoder_use_qk_norm=cfg.vision_use_qk_norm,
        encoder_init_values=cfg.vision_init_values,
        decoder_embed_dim=cfg.decoder_embed_dim, decoder_depth=cfg.decoder_depth,
        decoder_num_heads=cfg.decoder_num_heads, decoder_ffn_layer=cfg.decoder_ffn_layer,
        decoder_norm_layer=cfg.decoder_norm_layer, decoder_use_qk_norm=cfg.decoder_use_qk_norm,
        decoder_init_values=cfg.decoder_init_values)
    if latents_stats is not None:
        mean, std = latents_stats["mean"].flatten(), latents_stats["std"].flatten()
        if mean.numel() != cfg.vision_feature_bottleneck:
            raise OpenVTPError(f"latent statistics have {mean.numel()} channels; the model's latents have "
                               f"{cfg.vision_feature_bottleneck}")
        out.update(latents_mean=mean.tolist(), latents_std=std.tolist())
    return out


def diffusers_state_dict(model) -> dict[str, torch.Tensor]:
    """The VTPModel tensors `AutoencoderVTP` has: `trunk.*` -> `encoder.*`, `pixel_decoder.*` -> `decoder.*`
    (no text tower, CLIP head or mask token)."""
    state = {}
    for k, v in model.state_dict().items():
        if k.startswith("trunk.") and k != "trunk.mask_token":
            state["encoder." + k.removeprefix("trunk.")] = v
        elif k.startswith("pixel_decoder."):
            state["decoder." + k.removeprefix("pixel_decoder.")] = v
    return state


def to_diffusers(model, latents_stats: dict[str, torch.Tensor] | None = None):
    """An `AutoencoderVTP` with `model`'s encoder, bottleneck and pixel decoder (in eval mode)."""
    if not model.config.train_reconstruction:
        raise OpenVTPError("this tokenizer has no pixel decoder (train_reconstruction is false); "
                           "a diffusers autoencoder needs one")
    cls = autoencoder_class()
    with torch.device("meta"):
        ae = cls(**diffusers_config(model.config, latents_stats))
    state = diffusers_state_dict(model)
    expected = {k for k in ae.state_dict()}
    if expected != set(state):
        raise OpenVTPError(f"AutoencoderVTP does not match the checkpoint: missing {sorted(expected - set(state))[:4]}, "
                           f"unexpected {sorted(set(state) - expected)[:4]}")
    ae.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True, assign=True)
    ae.pixel_mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)  # non-persistent buffers: still on meta
    ae.pixel_std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ae.eval()


def save_diffusers(model, out: str | os.PathLike, latents_stats: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `model` as a diffusers folder (config.json with auto_map, safetensors weights, diffusers_vtp.py),
    atomically: a temporary folder renamed into place."""
    ae = to_diffusers(model, latents_stats)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(out.parent, out.name)
    try:
        ae.save_pretrained(tmp, safe_serialization=True)
        shutil.copyfile(MODULE_FILE, tmp / MODULE_FILE.name)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
