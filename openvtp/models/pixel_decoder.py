"""The pixel decoder `pixel_decoder.*`: latent grid -> RoPE ViT blocks -> pixels via pixel shuffle."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Block, RopeEmbedding, make_norm
from .layers.checkpointing import run_block

if TYPE_CHECKING:
    from .config import VTPConfig


# The released decoder is built without an FFN ratio argument, so it always takes its default.
DECODER_MLP_RATIO = 4.0


class PixelDecoder(nn.Module):
    """Conv1x1(C -> Dd), blocks, norm, Conv1x1(Dd -> 3 p^2), PixelShuffle(p).

    The released model hard-codes p = 16; openvtp uses the trunk's patch size, which is the
    same for every released checkpoint. The FFN ratio is the released decoder's fixed 4, not
    `vision_mlp_ratio` (which only the trunk reads). The 1x1 convs are stored as convs (released keys) and
    run as matmuls on channels-last tokens, which avoids two layout copies.
    """

    def __init__(self, cfg: VTPConfig):
        super().__init__()
        dim, heads = cfg.decoder_embed_dim, cfg.decoder_num_heads
        self.patch_size = cfg.vision_patch_size
        self.proj_in = nn.Conv2d(cfg.vision_feature_bottleneck, dim, kernel_size=1)
        self.rope_embed = RopeEmbedding(dim // heads)
        self.blocks = nn.ModuleList(
            Block(dim, heads, DECODER_MLP_RATIO, cfg.decoder_ffn_layer, cfg.decoder_norm_layer,
                  qk_norm=cfg.decoder_use_qk_norm, init_values=cfg.decoder_init_values)
            for _ in range(cfg.decoder_depth))
        self.norm = make_norm(cfg.decoder_norm_layer, dim)
        self.proj_out = nn.Conv2d(dim, 3 * self.patch_size**2, kernel_size=1)
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def embed(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> tokens (B, h*w, Dd), row-major."""
        x = latents.permute(0, 2, 3, 1).flatten(1, 2)  # (B, N, C)
        return F.linear(x, self.proj_in.weight.flatten(1), self.proj_in.bias)

    def forward(self, latents: torch.Tensor, drop_path: float = 0.0) -> torch.Tensor:
        """Latents (B, C, h, w) -> images (B, 3, h*p, w*p) in ImageNet-normalised space."""
        B, _, h, w = latents.shape
        x = self.embed(latents)
        rope = self.rope_embed(h, w)
        for blk in self.blocks:
            x = run_block(blk, self.grad_checkpointing, x, rope, drop_path if self.training else 0.0)
        x = F.linear(self.norm(x), self.proj_out.weight.flatten(1), self.proj_out.bias)  # (B, N, 3 p p)
        p = self.patch_size
        # pixel shuffle: channel c*p*p + i*p + j -> pixel (c, p*y + i, p*x + j)
        return x.view(B, h, w, 3, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, 3, h * p, w * p)
