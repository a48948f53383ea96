"""Normalisation layers with the released eps values."""
from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight, computed in float32 (released: eps 1e-5, no bias)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * self.weight.float()).to(x.dtype)


def make_norm(kind: str, dim: int) -> nn.Module:
    """'rmsnorm' (eps 1e-5) or 'layernorm' (eps 1e-6), as in the vision trunk and pixel decoder."""
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=1e-5)
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=1e-6)
    raise ValueError(f"unknown norm layer {kind!r}")
