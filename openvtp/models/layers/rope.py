"""2-D axial rotary position embedding, bit-compatible with the released bf16 behaviour.

The released model hard-wires RoPE to bfloat16: the periods are a bf16 buffer stored in the
checkpoint, the sin/cos tables are computed in bf16 with rounding after every op, and q/k
(class token included) are rotated in bf16. Reproducing the reference outputs to 1e-5 needs
every one of these roundings (conformance README, quirk 1), so they are done here on purpose.
"""
from __future__ import annotations

import math

import torch
from torch import nn

ROPE_DTYPE = torch.bfloat16


class RopeEmbedding(nn.Module):
    """Per-token (sin, cos) tables for an h x w patch grid; coordinates normalised per axis to [-1, 1]."""

    def __init__(self, head_dim: int, base: float = 100.0):
        super().__init__()
        assert head_dim % 4 == 0, "RoPE needs head_dim % 4 == 0"
        n = head_dim // 4
        periods = base ** (2 * torch.arange(n, dtype=ROPE_DTYPE) / (head_dim // 2))
        self.register_buffer("periods", periods, persistent=True)  # (head_dim/4,) bf16
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _apply(self, fn, recurse=True):
        # Moving the model (.to / .float / .half) must not change the hard-wired bf16 periods.
        super()._apply(fn, recurse)
        if self.periods.dtype != ROPE_DTYPE:
            self.periods = self.periods.to(ROPE_DTYPE)
        self._tables.clear()
        return self

    def forward(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(sin, cos), each (h*w, head_dim) in bf16, tokens row-major; cached per grid."""
        p = self.periods
        # tables made under inference_mode cannot enter autograd: they are cached apart. A model
        # built under inference_mode has inference-tensor periods, which keep no version counter.
        version = -1 if p.is_inference() else p._version
        key = (h, w, p.device, version, p.data_ptr(), torch.is_inference_mode_enabled())
        tables = self._tables.get(key)
        if tables is None:
            if len(self._tables) > 16:
                self._tables.clear()
            tables = self._tables[key] = self._compute(h, w)
        return tables

    def _compute(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        dd = dict(device=self.periods.device, dtype=ROPE_DTYPE)
        coords_h = torch.arange(0.5, h, **dd) / h
        coords_w = torch.arange(0.5, w, **dd) / w
        coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1).flatten(0, 1)  # (N, 2)
        coords = 2.0 * coords - 1.0
        angles = 2 * math.pi * coords[:, :, None] / self.periods[None, None, :]  # (N, 2, head_dim/4)
        angles = angles.flatten(1, 2).tile(2)  # (N, head_dim)
        return torch.sin(angles), torch.cos(angles)


def apply_rope(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotate the last sin.shape[0] tokens of x (B, H, N, Dh); leading (class) tokens pass through bf16 too."""
    dtype = x.dtype
    x = x.to(sin.dtype)
    prefix = x.shape[-2] - sin.shape[-2]
    rot = x[..., prefix:, :]
    x1, x2 = rot.chunk(2, dim=-1)
    rot = rot * cos + torch.cat((-x2, x1), dim=-1) * sin
    if prefix:
        rot = torch.cat((x[..., :prefix, :], rot), dim=-2)
    return rot.to(dtype)
