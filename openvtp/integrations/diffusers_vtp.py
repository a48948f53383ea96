"""`AutoencoderVTP`: a VTP tokenizer's encoder, bottleneck and pixel decoder as a diffusers autoencoder.

Self-contained on purpose (torch and diffusers only): `openvtp export --format diffusers` copies this very file
next to the weights, so `diffusers.AutoModel.from_pretrained(folder, trust_remote_code=True)` loads it without
openvtp installed, and openvtp's own `AutoencoderVTP` is this module, so the two cannot drift apart.

The layers repeat openvtp's inference path op for op (RoPE in bf16 as the released model does), so latents equal
`VTPModel.encode` to the last bit in fp32. Pixels are in [-1, 1] as diffusers expects. `encode` returns the raw
latent (`EncoderOutput(latent=...)`, deterministic: a VTP latent has no variance), and `decode` takes one; like
AutoencoderKL, `scaling_factor`, `shift_factor` and per-channel `latents_mean` / `latents_std` are config values
that pipelines and training scripts apply (`normalize_latents` / `denormalize_latents` do it here).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import AutoencoderMixin, DecoderOutput, EncoderOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.accelerate_utils import apply_forward_hook

ROPE_DTYPE = torch.bfloat16
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DECODER_MLP_RATIO = 4.0


class RMSNorm(nn.Module):
    """Computed in float32 and cast back, as openvtp's RMSNorm."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * self.weight.float()).to(x.dtype)


def make_norm(kind: str, dim: int) -> nn.Module:
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=1e-5)
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=1e-6)
    raise ValueError(f"unknown norm layer {kind!r} (rmsnorm, layernorm)")


class SwiGLU(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float):
        super().__init__()
        hidden = (int(int(dim * mlp_ratio) * 2 / 3) + 7) // 8 * 8
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(dim, hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class Mlp(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def make_ffn(kind: str, dim: int, mlp_ratio: float) -> nn.Module:
    if kind == "swiglu":
        return SwiGLU(dim, mlp_ratio)
    if kind == "mlp":
        return Mlp(dim, mlp_ratio)
    raise ValueError(f"unknown ffn layer {kind!r} (swiglu, mlp)")


class RopeEmbedding(nn.Module):
    """2-D axial RoPE tables in bf16 (the released model's roundings); `periods` stays bf16 through `.to()`."""

    def __init__(self, head_dim: int, base: float = 100.0):
        super().__init__()
        n = head_dim // 4
        self.register_buffer("periods", base ** (2 * torch.arange(n, dtype=ROPE_DTYPE) / (head_dim // 2)))

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.periods.dtype != ROPE_DTYPE:
            self.periods = self.periods.to(ROPE_DTYPE)
        return self

    def forward(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        dd = dict(device=self.periods.device, dtype=ROPE_DTYPE)
        coords_h = torch.arange(0.5, h, **dd) / h
        coords_w = torch.arange(0.5, w, **dd) / w
        coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1).flatten(0, 1)
        coords = 2.0 * coords - 1.0
        angles = 2 * math.pi * coords[:, :, None] / self.periods[None, None, :]
        angles = angles.flatten(1, 2).tile(2)
        return torch.sin(angles), torch.cos(angles)


def apply_rope(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotate the last len(sin) tokens in bf16; leading (class) tokens pass through bf16 unchanged."""
    dtype = x.dtype
    x = x.to(sin.dtype)
    prefix = x.shape[-2] - sin.shape[-2]
    rot = x[..., prefix:, :]
    x1, x2 = rot.chunk(2, dim=-1)
    rot = rot * cos + torch.cat((-x2, x1), dim=-1) * sin
    if prefix:
        rot = torch.cat((x[..., :prefix, :], rot), dim=-2)
    return rot.to(dtype)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = RMSNorm(self.head_dim, eps=1e-5) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, eps=1e-5) if qk_norm else None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, ffn: str, norm: str, qk_norm: bool,
                 init_values: float | None):
        super().__init__()
        self.norm1 = make_norm(norm, dim)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = make_norm(norm, dim)
        self.mlp = make_ffn(ffn, dim, mlp_ratio)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x: torch.Tensor, rope) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class VTPEncoder(nn.Module):
    """openvtp's vision trunk without the mask token: [cls, patches] -> blocks -> norm -> bottleneck."""

    def __init__(self, patch_size: int, dim: int, depth: int, heads: int, mlp_ratio: float, ffn: str, norm: str,
                 qk_norm: bool, init_values: float | None, latent_channels: int):
        super().__init__()
        self.patch_size = patch_size
        self.patch_embed = PatchEmbed(patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.rope_embed = RopeEmbedding(dim // heads)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, ffn, norm, qk_norm, init_values) for _ in range(depth))
        self.norm = make_norm(norm, dim)
        self.feature_bottleneck = nn.Linear(dim, latent_channels, bias=False) if latent_channels != dim else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised images (B, 3, H, W) -> latents (B, C, H/p, W/p)."""
        x = self.patch_embed(images)
        B, h, w, D = x.shape
        x = torch.cat((self.cls_token.expand(B, -1, -1).to(x.dtype), x.flatten(1, 2)), dim=1)
        rope = self.rope_embed(h, w)
        for blk in self.blocks:
            x = blk(x, rope)
        x = self.norm(x)[:, 1:]
        if self.feature_bottleneck is not None:
            x = self.feature_bottleneck(x)
        return x.transpose(1, 2).reshape(B, -1, h, w)


class VTPDecoder(nn.Module):
    """openvtp's pixel decoder: 1x1 conv in, RoPE blocks, norm, 1x1 conv to 3 p^2, pixel shuffle."""

    def __init__(self, patch_size: int, dim: int, depth: int, heads: int, ffn: str, norm: str, qk_norm: bool,
                 init_values: float | None, latent_channels: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj_in = nn.Conv2d(latent_channels, dim, kernel_size=1)
        self.rope_embed = RopeEmbedding(dim // heads)
        self.blocks = nn.ModuleList(Block(dim, heads, DECODER_MLP_RATIO, ffn, norm, qk_norm, init_values)
                                    for _ in range(depth))
        self.norm = make_norm(norm, dim)
        self.proj_out = nn.Conv2d(dim, 3 * patch_size**2, kernel_size=1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, h, w) -> ImageNet-normalised images (B, 3, h p, w p)."""
        B, _, h, w = latents.shape
        x = F.linear(latents.permute(0, 2, 3, 1).flatten(1, 2), self.proj_in.weight.flatten(1), self.proj_in.bias)
        rope = self.rope_embed(h, w)
        for blk in self.blocks:
            x = blk(x, rope)
        x = F.linear(self.norm(x), self.proj_out.weight.flatten(1), self.proj_out.bias)
        p = self.patch_size
        return x.view(B, h, w, 3, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, 3, h * p, w * p)


class AutoencoderVTP(ModelMixin, AutoencoderMixin, ConfigMixin):
    """VTP tokenizer as a diffusers autoencoder: images in [-1, 1] <-> latents (B, latent_channels, H/p, W/p).

    Slicing (one image at a time) is supported; tiling is not, since a ViT attends over the whole image and
    tiles would change its latents.
    """

    _supports_gradient_checkpointing = False
    _no_split_modules = ["Block"]

    @register_to_config
    def __init__(
        self,
        image_size: int = 256,
        patch_size: int = 16,
        latent_channels: int = 64,
        encoder_embed_dim: int = 1024,
        encoder_depth: int = 24,
        encoder_num_heads: int = 16,
        encoder_mlp_ratio: float = 4.0,
        encoder_ffn_layer: str = "swiglu",
        encoder_norm_layer: str = "rmsnorm",
        encoder_use_qk_norm: bool = False,
        encoder_init_values: float | None = None,
        decoder_embed_dim: int = 1024,
        decoder_depth: int = 24,
        decoder_num_heads: int = 16,
        decoder_ffn_layer: str = "swiglu",
        decoder_norm_layer: str = "layernorm",
        decoder_use_qk_norm: bool = False,
        decoder_init_values: float | None = None,
        scaling_factor: float = 1.0,
        shift_factor: float | None = None,
        latents_mean: list | None = None,
        latents_std: list | None = None,
    ):
        super().__init__()
        for name, stats in (("latents_mean", latents_mean), ("latents_std", latents_std)):
            if stats is not None and len(stats) != latent_channels:
                raise ValueError(f"{name} has {len(stats)} values; expected latent_channels={latent_channels}")
        self.encoder = VTPEncoder(patch_size, encoder_embed_dim, encoder_depth, encoder_num_heads, encoder_mlp_ratio,
                                  encoder_ffn_layer, encoder_norm_layer, encoder_use_qk_norm, encoder_init_values,
                                  latent_channels)
        self.decoder = VTPDecoder(patch_size, decoder_embed_dim, decoder_depth, decoder_num_heads, decoder_ffn_layer,
                                  decoder_norm_layer, decoder_use_qk_norm, decoder_init_values, latent_channels)
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
        return self.encoder((x01 - self.pixel_mean.to(x01.dtype)) / self.pixel_std.to(x01.dtype))

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 4 or z.shape[1] != self.config.latent_channels:
            raise ValueError(f"expected latents (B, {self.config.latent_channels}, h, w), got {tuple(z.shape)}")
        x = self.decoder(z)
        x01 = (x * self.pixel_std.to(x.dtype) + self.pixel_mean.to(x.dtype)).clamp(0, 1)
        return x01 * 2 - 1

    @apply_forward_hook
    def encode(self, x: torch.Tensor, return_dict: bool = True) -> EncoderOutput | tuple[torch.Tensor]:
        """Images in [-1, 1] -> the deterministic latent (not scaled or shifted)."""
        if self.use_slicing and x.shape[0] > 1:
            latent = torch.cat([self._encode(s) for s in x.split(1)])
        else:
            latent = self._encode(x)
        return EncoderOutput(latent=latent) if return_dict else (latent,)

    @apply_forward_hook
    def decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        """Latents (not scaled or shifted) -> images in [-1, 1]."""
        if self.use_slicing and z.shape[0] > 1:
            sample = torch.cat([self._decode(s) for s in z.split(1)])
        else:
            sample = self._decode(z)
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
