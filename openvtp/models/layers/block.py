"""Pre-norm transformer block of the vision trunk and pixel decoder (timm/DINOv3 names)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .attention import Attention
from .mlp import make_ffn
from .norm import make_norm


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def residual_with_drop_path(x: torch.Tensor, branch: Callable[[torch.Tensor], torch.Tensor], p: float) -> torch.Tensor:
    """x + branch(x); with stochastic depth p > 0 the branch runs only on the kept samples (rescaled).

    Computing the branch on a subset of the batch instead of multiplying by a 0/1 mask saves
    a fraction p of the block's compute, as DINOv2 does.
    """
    if p <= 0.0:
        return x + branch(x)
    b = x.shape[0]
    keep = max(int(b * (1.0 - p)), 1)
    idx = torch.randperm(b, device=x.device)[:keep]
    return torch.index_add(x, 0, idx, branch(x[idx]), alpha=b / keep)


class Block(nn.Module):
    """x + ls1(attn(norm1 x)); x + ls2(mlp(norm2 x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, ffn: str, norm: str,
                 qk_norm: bool = False, init_values: float | None = None):
        super().__init__()
        self.norm1 = make_norm(norm, dim)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = make_norm(norm, dim)
        self.mlp = make_ffn(ffn, dim, mlp_ratio)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x: torch.Tensor, rope=None, drop_path: float = 0.0) -> torch.Tensor:
        x = residual_with_drop_path(x, lambda t: self.ls1(self.attn(self.norm1(t), rope)), drop_path)
        x = residual_with_drop_path(x, lambda t: self.ls2(self.mlp(self.norm2(t))), drop_path)
        return x
