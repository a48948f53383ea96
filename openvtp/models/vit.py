"""The vision trunk: a DINOv3-style ViT with RoPE, a class token and a linear bottleneck."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .layers import Block, RopeEmbedding, make_norm
from .layers.checkpointing import run_block

if TYPE_CHECKING:
    from .config import VTPConfig


class PatchEmbed(nn.Module):
    """Conv2d(3, D, p, stride p), no norm; returns channels-last patches (B, h, w, D)."""

    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class VisionTrunk(nn.Module):
    """Encoder `trunk.*`: [cls, patches] -> RoPE blocks -> final norm -> optional bottleneck Linear(D, C)."""

    def __init__(self, cfg: VTPConfig):
        super().__init__()
        dim, heads = cfg.vision_embed_dim, cfg.vision_num_heads
        self.patch_size = cfg.vision_patch_size
        self.patch_embed = PatchEmbed(cfg.vision_patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.rope_embed = RopeEmbedding(dim // heads)
        self.blocks = nn.ModuleList(
            Block(dim, heads, cfg.vision_mlp_ratio, cfg.vision_ffn_layer, cfg.vision_norm_layer,
                  qk_norm=cfg.vision_use_qk_norm, init_values=cfg.vision_init_values)
            for _ in range(cfg.vision_depth))
        self.norm = make_norm(cfg.vision_norm_layer, dim)
        self.feature_bottleneck = nn.Linear(dim, cfg.vision_feature_bottleneck, bias=False) if cfg.has_bottleneck else None
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.feature_bottleneck is None else self.feature_bottleneck(x)

    def tokens(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch-embed and prepend the class token. masks: bool (B, N), True where the mask token replaces a patch."""
        x = self.patch_embed(images)  # (B, h, w, D)
        B, h, w, D = x.shape
        x = x.flatten(1, 2)  # (B, N, D)
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype), x)
            cls = self.cls_token
        else:
            # keeps mask_token in the graph (zero gradient) so DDP sees every parameter used
            cls = self.cls_token + 0 * self.mask_token
        return torch.cat((cls.expand(B, -1, -1).to(x.dtype), x), dim=1), (h, w)

    def forward_blocks(self, images: torch.Tensor, masks: torch.Tensor | None = None, drop_path: float = 0.0,
                       keep: set[int] | None = None) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Residual stream after the last block (B, 1+N, D), plus the streams after blocks in `keep`."""
        x, (h, w) = self.tokens(images, masks)
        rope = self.rope_embed(h, w)
        kept: dict[int, torch.Tensor] = {}
        for i, blk in enumerate(self.blocks):
            x = run_block(blk, self.grad_checkpointing, x, rope, drop_path if self.training else 0.0)
            if keep is not None and i in keep:
                kept[i] = x
        return x, kept

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None, drop_path: float = 0.0) -> torch.Tensor:
        """Final-normed tokens (B, 1+N, D); token 0 is the class token. No bottleneck."""
        x, _ = self.forward_blocks(images, masks, drop_path)
        return self.norm(x)

    def latents(self, images: torch.Tensor) -> torch.Tensor:
        """Bottlenecked patch tokens as a latent grid (B, C, H/p, W/p)."""
        x = self.bottleneck(self(images)[:, 1:])  # (B, N, C)
        h, w = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        return x.transpose(1, 2).reshape(x.shape[0], -1, h, w)
