"""OpenCLIP-style text transformer blocks (`text_transformer.resblocks.*`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers.checkpointing import run_block


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class TextAttention(nn.Module):
    """nn.MultiheadAttention's packed layout (in_proj_weight, in_proj_bias, out_proj) on SDPA."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        B, L, C = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(B, L, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(x.transpose(1, 2).reshape(B, L, C))


class TextMlp(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float, quick_gelu: bool):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.c_fc = nn.Linear(dim, hidden)
        self.gelu = QuickGELU() if quick_gelu else nn.GELU()
        self.c_proj = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, quick_gelu: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = TextAttention(dim, num_heads)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = TextMlp(dim, mlp_ratio, quick_gelu)

    def forward(self, x: torch.Tensor, causal: bool = True) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal)
        return x + self.mlp(self.ln_2(x))


class TextTransformer(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float, quick_gelu: bool):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(dim, num_heads, mlp_ratio, quick_gelu) for _ in range(depth))
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor, causal: bool = True) -> torch.Tensor:
        for blk in self.resblocks:
            x = run_block(blk, self.grad_checkpointing, x, causal)
        return x
