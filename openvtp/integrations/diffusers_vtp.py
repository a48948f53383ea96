"""`AutoencoderVTP`: a VTP tokenizer's encoder, bottleneck and pixel decoder as a diffusers autoencoder.

The encoder is openvtp's `VisionTrunk` and the decoder its `PixelDecoder`, so latents equal `VTPModel.encode`
to the last bit in fp32, and the weights keep their openvtp names under `encoder.` and `decoder.`. Pixels are
in [-1, 1] as diffusers expects. `encode` returns the raw latent (`EncoderOutput(latent=...)`, deterministic:
a VTP latent has no variance), and `decode` takes one; like AutoencoderKL, `scaling_factor`, `shift_factor` and
per-channel `latents_mean` / `latents_std` are config values that pipelines and training scripts apply
(`normalize_latents` / `denormalize_latents` do it here).

The config names the towers' `VTPConfig` fields without their `vision_` / `decoder_` prefix: `encoder_config`
holds the trunk's (embed_dim, depth, ...), `decoder_config` the pixel decoder's; `patch_size` and
`latent_channels` are `vision_patch_size` and `vision_feature_bottleneck`. A setting left out is VTP-L's.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import AutoencoderMixin, DecoderOutput, EncoderOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.accelerate_utils import apply_forward_hook

from openvtp.constants import IMAGENET_MEAN, IMAGENET_STD
from openvtp.models.pixel_decoder import PixelDecoder
from openvtp.models.vit import VisionTrunk

# VTP-L's towers: the `VTPConfig` fields `vision_<key>` and `decoder_<key>` (the decoder's FFN ratio is fixed)
VTP_L_ENCODER = dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0, ffn_layer="swiglu",
                     norm_layer="rmsnorm", use_qk_norm=False, init_values=None)
VTP_L_DECODER = dict(embed_dim=1024, depth=24, num_heads=16, ffn_layer="swiglu", norm_layer="layernorm",
                     use_qk_norm=False, init_values=None)


def tower_fields(part: str, given: dict | None, defaults: dict) -> dict:
    """`given` over VTP-L's `defaults`; a key the tower does not read is an error."""
    unknown = set(given or {}) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {part} settings {sorted(unknown)} (known: {', '.join(defaults)})")
    return {**defaults, **(given or {})}


def towers_config(patch_size: int, latent_channels: int, encoder: dict, decoder: dict) -> SimpleNamespace:
    """The `VTPConfig` fields `VisionTrunk` and `PixelDecoder` read."""
    return SimpleNamespace(vision_patch_size=patch_size, vision_feature_bottleneck=latent_channels,
                           has_bottleneck=latent_channels != encoder["embed_dim"],
                           **{f"vision_{k}": v for k, v in encoder.items()},
                           **{f"decoder_{k}": v for k, v in decoder.items()})


class AutoencoderVTP(ModelMixin, AutoencoderMixin, ConfigMixin):
    """VTP tokenizer as a diffusers autoencoder: images in [-1, 1] <-> latents (B, latent_channels, H/p, W/p).

    Slicing (one image at a time) is supported; tiling is not, since a ViT attends over the whole image and
    tiles would change its latents.
    """

    _supports_gradient_checkpointing = False
    _no_split_modules = ["Block"]

    @register_to_config
    def __init__(self, image_size: int = 256, patch_size: int = 16, latent_channels: int = 64,
                 encoder_config: dict | None = None, decoder_config: dict | None = None, scaling_factor: float = 1.0,
                 shift_factor: float | None = None, latents_mean: list | None = None, latents_std: list | None = None):
        super().__init__()
        for name, stats in (("latents_mean", latents_mean), ("latents_std", latents_std)):
            if stats is not None and len(stats) != latent_channels:
                raise ValueError(f"{name} has {len(stats)} values; expected latent_channels={latent_channels}")
        encoder_config = tower_fields("encoder_config", encoder_config, VTP_L_ENCODER)
        decoder_config = tower_fields("decoder_config", decoder_config, VTP_L_DECODER)
        self.register_to_config(encoder_config=encoder_config, decoder_config=decoder_config)
        cfg = towers_config(patch_size, latent_channels, encoder_config, decoder_config)
        self.encoder = VisionTrunk(cfg)
        self.decoder = PixelDecoder(cfg)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.use_slicing = False

    @property
    def spatial_compression_ratio(self) -> int:
        return self.config.patch_size

    def enable_tiling(self, *args, **kwargs):
        raise NotImplementedError("AutoencoderVTP has no tiling: its ViT attends over the whole image, so tiles "
                                  "would change the latents; use enable_slicing() to save memory across a batch")

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        p = self.config.patch_size
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"image size {x.shape[-2]}x{x.shape[-1]} is not a multiple of the patch size {p}")
        x01 = (x + 1) / 2
        return self.encoder.latents((x01 - self.pixel_mean.to(x01.dtype)) / self.pixel_std.to(x01.dtype))

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 4 or z.shape[1] != self.config.latent_channels:
            raise ValueError(f"expected latents (B, {self.config.latent_channels}, h, w), got {tuple(z.shape)}")
        x = self.decoder(z)
        x01 = (x * self.pixel_std.to(x.dtype) + self.pixel_mean.to(x.dtype)).clamp(0, 1)
        return x01 * 2 - 1

    def _sliced(self, fn, x: torch.Tensor) -> torch.Tensor:
        """`fn(x)`, or with slicing on, `fn` on one image (or latent) at a time."""
        if self.use_slicing and x.shape[0] > 1:
            return torch.cat([fn(s) for s in x.split(1)])
        return fn(x)

    @apply_forward_hook
    def encode(self, x: torch.Tensor, return_dict: bool = True) -> EncoderOutput | tuple[torch.Tensor]:
        """Images in [-1, 1] -> the deterministic latent (not scaled or shifted)."""
        latent = self._sliced(self._encode, x)
        return EncoderOutput(latent=latent) if return_dict else (latent,)

    @apply_forward_hook
    def decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        """Latents (not scaled or shifted) -> images in [-1, 1]."""
        sample = self._sliced(self._decode, z)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        return self.decode(self.encode(sample, return_dict=False)[0], return_dict=return_dict)

    def _stats(self, z: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        cfg = self.config
        if cfg.latents_mean is not None and cfg.latents_std is not None:
            mean = torch.tensor(cfg.latents_mean, device=z.device, dtype=z.dtype).view(1, -1, 1, 1)
            std = torch.tensor(cfg.latents_std, device=z.device, dtype=z.dtype).view(1, -1, 1, 1)
            return mean, std
        return (cfg.shift_factor or 0.0), 1.0

    def normalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """What a diffusion model is trained on: (z - mean) / std * scaling_factor (mean, std per channel when the
        config has them, else shift_factor and 1)."""
        mean, std = self._stats(z)
        return (z - mean) / std * self.config.scaling_factor

    def denormalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """The inverse of `normalize_latents`: what `decode` takes."""
        mean, std = self._stats(z)
        return z / self.config.scaling_factor * std + mean


AutoencoderVTP.register_for_auto_class("AutoModel")
