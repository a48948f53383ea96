"""2-D axial rotary position embedding, bit-compatible with the released bf16 behaviour.

The released model hard-wires RoPE to bfloat16: the periods are a bf16 buffer stored in the
checkpoint, the sin/cos tables are computed in bf16 with rounding after every op, and q/k
(class token included) are rotated in bf16. Reproducing the reference outputs to 1e-5 needs
every one of these roundings (conformance README, quirk 1), so they are done here on purpose.

`apply_rope` is the released code's rotation, `x * cos + cat(-x2, x1) * sin` and a `cat` that puts the
class token back, each op a pass over q or k and each a node for autograd. `apply_rope_qkv`, the eager
attention's path, computes the same bf16 roundings (forward and backward, bit for bit: tests/test_rope.py)
with fewer passes: the sign of rotate_half is folded into a half of the sin table (negation is exact in
bf16), q and k are rotated together, the class token is copied, not concatenated, and one autograd node
replaces about ten.
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


def _rotate(xb: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """bf16 (..., N, Dh) -> rotated bf16: round(round(x * cos) + round(rotate_half(x) * sin)).

    The first N - len(sin) tokens (the class token) are copied. rotate_half(x) * sin is written as
    [x2 * -sin1, x1 * sin2]: -(x2 * s) and x2 * (-s) round to the same bf16 value.
    """
    prefix, half = xb.shape[-2] - sin.shape[0], xb.shape[-1] // 2
    out = torch.empty_like(xb, memory_format=torch.contiguous_format)
    if prefix:
        out[..., :prefix, :] = xb[..., :prefix, :]
    x, rot = xb[..., prefix:, :], out[..., prefix:, :]
    torch.mul(x, cos, out=rot)
    t = torch.empty_like(rot)
    torch.mul(x[..., half:], -sin[:, :half], out=t[..., :half])
    torch.mul(x[..., :half], sin[:, half:], out=t[..., half:])
    rot.add_(t)
    return out


def _rotate_backward(gb: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """The gradient of `_rotate` as autograd computes it through the released op sequence (bf16).

    Per token: g * cos + rotate_half^T(g * sin), rotate_half^T([a, b]) = [b, -a]. With a class
    token the released graph sums two zero-padded slice gradients, which turns every -0 into +0:
    the `+ 0` below does the same, so even the signs of zeros match.
    """
    prefix, half = gb.shape[-2] - sin.shape[0], gb.shape[-1] // 2
    g = gb[..., prefix:, :]
    t = g * sin
    grad = torch.empty_like(gb, memory_format=torch.contiguous_format)
    rot = grad[..., prefix:, :]
    torch.mul(g, cos, out=rot)
    u = torch.empty_like(rot)
    u[..., :half] = t[..., half:]
    torch.neg(t[..., :half], out=u[..., half:])
    rot.add_(u)
    if prefix:
        grad[..., :prefix, :] = gb[..., :prefix, :]
        grad.add_(0.0)
    return grad


class _RopeQKV(torch.autograd.Function):
    """(B, N, 3C) qkv -> q, k rotated (through bf16) and v, each (B, H, N, Dh); one autograd node."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor, num_heads: int):
        B, N, C3 = qkv.shape
        x = qkv.view(B, N, 3, num_heads, C3 // (3 * num_heads))
        dtype = qkv.dtype
        q, k = _rotate(x[:, :, :2].permute(2, 0, 3, 1, 4).to(ROPE_DTYPE), sin, cos).to(dtype).unbind(0)
        ctx.save_for_backward(sin, cos)
        ctx.shape, ctx.dtype = x.shape, dtype
        return q, k, x[:, :, 2].transpose(1, 2)

    @staticmethod
    def backward(ctx, gq, gk, gv):
        sin, cos = ctx.saved_tensors
        grad = torch.empty(ctx.shape, dtype=ctx.dtype, device=sin.device)  # (B, N, 3, H, Dh)
        gq, gk, gv = (g if g is not None else torch.zeros_like(grad[:, :, 0]).transpose(1, 2) for g in (gq, gk, gv))
        grad[:, :, :2] = _rotate_backward(torch.stack([gq, gk]).to(ROPE_DTYPE), sin, cos).permute(1, 3, 0, 2, 4)
        grad[:, :, 2] = gv.transpose(1, 2)
        return grad.flatten(2), None, None, None


def apply_rope(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotate the last sin.shape[0] tokens of x (..., N, Dh) in bf16; leading (class) tokens pass through bf16 too.

    The released op sequence, op for op: what `torch.compile` sees (and fuses) and what q/k-norm models run.
    """
    dtype = x.dtype
    x = x.to(sin.dtype)
    prefix = x.shape[-2] - sin.shape[-2]
    rot = x[..., prefix:, :]
    x1, x2 = rot.chunk(2, dim=-1)
    rot = rot * cos + torch.cat((-x2, x1), dim=-1) * sin
    if prefix:
        rot = torch.cat((x[..., :prefix, :], rot), dim=-2)
    return rot.to(dtype)


def apply_rope_qkv(qkv: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor, num_heads: int):
    """Split a fused qkv projection (B, N, 3C) into q, k, v (B, H, N, Dh), q and k rotated as `apply_rope` does,
    bit for bit, in fewer passes (eager only: its in-place writes into views break a compiled graph)."""
    return _RopeQKV.apply(qkv, sin, cos, num_heads)
