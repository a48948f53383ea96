"""Multi-head self-attention with fused qkv, optional QK-norm and RoPE, on SDPA."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .norm import RMSNorm
from .rope import apply_rope, apply_rope_qkv


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        # QK-norm is always an RMSNorm over the head dim, one weight shared by all heads.
        self.q_norm = RMSNorm(self.head_dim, eps=1e-5) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, eps=1e-5) if qk_norm else None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x)  # (B, N, 3C)
        if rope is not None and self.q_norm is None and not torch.compiler.is_compiling():
            q, k, v = apply_rope_qkv(qkv, *rope, self.num_heads)  # 3 x (B, H, N, Dh)
        else:
            q, k, v = qkv.view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            if self.q_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, Dh)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))
