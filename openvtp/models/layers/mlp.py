"""Feed-forward layers of the vision trunk and pixel decoder."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def swiglu_hidden(dim: int, mlp_ratio: float) -> int:
    """Released rule: int(int(dim * ratio) * 2 / 3) rounded up to a multiple of 8 (64 -> 176, 1024 -> 2736)."""
    hidden = int(int(dim * mlp_ratio) * 2 / 3)
    return (hidden + 7) // 8 * 8


class SwiGLU(nn.Module):
    """w3(silu(w1 x) * w2 x); w1 is the gated branch."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = swiglu_hidden(dim, mlp_ratio)
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(dim, hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0):
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
    raise ValueError(f"unknown ffn layer {kind!r}")
