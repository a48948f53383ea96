"""LightningDiT: a class-conditional diffusion transformer on tokenizer latents (DiT + SiT + LightningDiT).

The generator the VTP repository trains on its latents. Compared with DiT it adds RMSNorm, SwiGLU,
2-D RoPE (on top of DiT's fixed sin-cos position embedding) and optional QK-norm; conditioning is
adaLN-zero as in DiT. Parameter names follow LightningDiT's (`x_embedder`, `t_embedder`,
`y_embedder`, `blocks.N.adaLN_modulation`, `final_layer`, `mlp.w12`/`mlp.w3`) so its released
weights map over by name.

Time convention (SiT/LightningDiT): t = 0 is pure noise, t = 1 is data, and the network predicts
the velocity d x_t / d t (see `openvtp.losses.flow`). t enters the sinusoidal embedder as is, in
[0, 1], as in SiT.

The layers here are deliberately not shared with the tokenizer's `models/layers`: the tokenizer's
RoPE is hard-wired to bf16 and normalised coordinates for checkpoint conformance, while
LightningDiT uses integer grid positions, base 10000, and adaLN-modulated blocks.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from openvtp.errors import OpenVTPError

from .dit_sizes import DIT_PRESETS, DIT_SIZES, dit_preset_names  # noqa: F401 (the registry lives without torch)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (B, N, D) with per-sample shift/scale (B, D)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def sincos_pos_embed_2d(dim: int, h: int, w: int) -> torch.Tensor:
    """DiT/MAE fixed 2-D sin-cos embedding, (h*w, dim), row-major; first half encodes rows, second columns."""
    assert dim % 4 == 0, "sin-cos position embedding needs hidden_size % 4 == 0"

    def one_axis(d: int, pos: torch.Tensor) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2))
        out = pos.double()[:, None] * omega[None]  # (P, d/2)
        return torch.cat([out.sin(), out.cos()], dim=1)

    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    # MAE puts the column (w) coordinate in the first half.
    emb = torch.cat([one_axis(dim // 2, cols.flatten()), one_axis(dim // 2, rows.flatten())], dim=1)
    return emb.float()


class RotaryEmbedding2D(nn.Module):
    """Axial RoPE on an h x w grid (EVA-02 / LightningDiT): integer positions, base 10000.

    The first half of each head's channels rotates with the row index, the second half with the
    column index; rotations act on interleaved channel pairs (2i, 2i+1).
    """

    def __init__(self, head_dim: int, h: int, w: int, base: float = 10000.0):
        super().__init__()
        assert head_dim % 4 == 0, f"RoPE needs head_dim % 4 == 0 (got {head_dim})"
        half = head_dim // 2
        freqs = 1.0 / base ** (torch.arange(0, half, 2, dtype=torch.float64) / half)  # (half/2,)
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        ang_r = rows.flatten()[:, None].double() * freqs  # (N, half/2)
        ang_c = cols.flatten()[:, None].double() * freqs
        angles = torch.cat([ang_r, ang_c], dim=1).repeat_interleave(2, dim=1)  # (N, head_dim)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, heads, N, head_dim)."""
        pairs = x.unflatten(-1, (-1, 2))  # (B, H, N, Dh/2, 2)
        rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
        return x * self.cos.to(x.dtype) + rotated * self.sin.to(x.dtype)


class Attention(nn.Module):
    """Self-attention with qkv bias, optional QK-norm (before RoPE), fused SDPA."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, rmsnorm: bool):
        super().__init__()
        assert dim % num_heads == 0, f"hidden_size {dim} not divisible by num_heads {num_heads}"
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        norm = (lambda d: nn.RMSNorm(d, eps=1e-6)) if rmsnorm else (lambda d: nn.LayerNorm(d, eps=1e-6))
        self.q_norm = norm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding2D | None) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x (B, H, N, Dh)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope(q), rope(k)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, Dh)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class SwiGLUFFN(nn.Module):
    """w3(silu(a) * b) with [a, b] = w12(x); hidden = 2/3 of the GELU MLP's, as LightningDiT."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class GeluMlp(nn.Module):
    """DiT's MLP: fc1 -> tanh-GELU -> fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def _norm(dim: int, rmsnorm: bool) -> nn.Module:
    # Affine-free LayerNorm as in DiT (adaLN supplies scale and shift); RMSNorm keeps its weight as LightningDiT.
    return nn.RMSNorm(dim, eps=1e-6) if rmsnorm else nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)


class TimestepEmbedder(nn.Module):
    """Scalar t -> sinusoidal features (256) -> MLP, as DiT."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]  # (B, half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class labels -> vectors; row `num_classes` is the null class used for classifier-free guidance.

    Dropping labels for guidance training is the loss's job (`FlowMatchingLoss`), so the forward
    pass is deterministic and a resumed run reproduces the drop pattern from its seed.
    """

    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels)


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-zero: shift/scale/gate for attention and MLP from the condition."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, use_qknorm: bool, use_swiglu: bool,
                 use_rmsnorm: bool):
        super().__init__()
        self.norm1 = _norm(hidden_size, use_rmsnorm)
        self.attn = Attention(hidden_size, num_heads, qk_norm=use_qknorm, rmsnorm=use_rmsnorm)
        self.norm2 = _norm(hidden_size, use_rmsnorm)
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.mlp = SwiGLUFFN(hidden_size, int(2 / 3 * mlp_hidden)) if use_swiglu else GeluMlp(hidden_size, mlp_hidden)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope: RotaryEmbedding2D | None) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), rope)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """adaLN-modulated norm, then a linear map to patch_size**2 * out_channels per token."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, use_rmsnorm: bool):
        super().__init__()
        self.norm_final = _norm(hidden_size, use_rmsnorm)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class LightningDiT(nn.Module):
    """Class-conditional diffusion transformer predicting the flow velocity of a latent image."""

    def __init__(
        self,
        input_size: int = 16,
        patch_size: int = 1,
        in_channels: int = 64,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        class_dropout_prob: float = 0.1,
        use_qknorm: bool = False,
        use_swiglu: bool = True,
        use_rmsnorm: bool = True,
        use_rope: bool = True,
        learn_sigma: bool = False,
    ):
        super().__init__()
        assert patch_size in (1, 2), f"patch_size must be 1 or 2 (got {patch_size})"
        assert input_size % patch_size == 0, f"input_size {input_size} not divisible by patch_size {patch_size}"
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.learn_sigma = learn_sigma
        self.num_classes = num_classes
        # Rate at which training replaces labels by the null class; the trainer passes it to FlowMatchingLoss.
        self.class_dropout_prob = class_dropout_prob
        grid = input_size // patch_size

        self.x_embedder = nn.Module()
        self.x_embedder.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(hidden_size, grid, grid)[None], persistent=True)
        self.rope = RotaryEmbedding2D(hidden_size // num_heads, grid, grid) if use_rope else None
        self.blocks = nn.ModuleList(
            [DiTBlock(hidden_size, num_heads, mlp_ratio, use_qknorm, use_swiglu, use_rmsnorm) for _ in range(depth)]
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels, use_rmsnorm)
        self.initialize_weights()

    @property
    def null_class(self) -> int:
        return self.num_classes

    def initialize_weights(self) -> None:
        """DiT's init: xavier linears, zero biases, and zeroed adaLN + output layer (the block starts as identity)."""

        def basic(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

        self.apply(basic)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, p*p*C) -> (B, C, H, W)."""
        p, c, g = self.patch_size, self.out_channels, self.input_size // self.patch_size
        x = x.view(x.shape[0], g, g, p, p, c)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) latents at time t (B,) in [0, 1]; y (B,) labels, `null_class` = unconditional."""
        assert x.shape[-1] == self.input_size and x.shape[-2] == self.input_size, (
            f"latent grid {tuple(x.shape[-2:])} != model input_size {self.input_size}")
        x = self.x_embedder.proj(x).flatten(2).transpose(1, 2) + self.pos_embed.to(x.dtype)  # (B, N, D)
        c = self.t_embedder(t) + self.y_embedder(y)  # (B, D)
        for block in self.blocks:
            x = block(x, c, self.rope)
        x = self.final_layer(x, c)  # (B, N, p*p*C_out)
        x = self.unpatchify(x)
        if self.learn_sigma:
            x = x[:, : self.in_channels]
        return x

    def forward_with_cfg(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        cfg_scale: float,
        interval: tuple[float, float] = (0.0, 1.0),
        guided_channels: int | None = None,
    ) -> torch.Tensor:
        """Classifier-free guided velocity: v_u + s (v_c - v_u), where lo <= t <= hi, else v_c.

        Conditional and unconditional passes are batched (2B). Guidance acts on all channels by
        default. LightningDiT's (and DiT's) released code guides only the first 3 channels, a
        leftover of DiT's 4-channel SD-VAE latents; `guided_channels=3` reproduces that.
        LightningDiT's `cfg_interval_start=s` is `interval=(s, 1.0)` here.
        """
        B = x.shape[0]
        out = self.forward(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, self.null_class)]))
        cond, uncond = out[:B], out[B:]
        k = self.out_channels if guided_channels is None else guided_channels
        guided = cond.clone()
        guided[:, :k] = uncond[:, :k] + cfg_scale * (cond[:, :k] - uncond[:, :k])
        lo, hi = interval
        inside = ((t >= lo) & (t <= hi)).view(B, *([1] * (x.dim() - 1)))
        return torch.where(inside, guided, cond)


def build_dit(preset: str, **kwargs) -> LightningDiT:
    """A LightningDiT from a named size (`dit-xl-1`, ...); kwargs give input_size, in_channels, num_classes, flags."""
    if preset not in DIT_PRESETS:
        raise OpenVTPError(f"unknown DiT preset '{preset}' (known: {', '.join(DIT_PRESETS)})")
    return LightningDiT(**{**DIT_PRESETS[preset], **kwargs})
