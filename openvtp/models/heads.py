"""Projection heads on the encoder's features."""

import torch
import torch.nn as nn
import torch.nn.functional as F


class DinoHead(nn.Module):
    """DINO/iBOT head (DINOv2): MLP to a bottleneck, L2-normalise, then cosine scores against K prototypes.

    The last layer is a weight-normalised linear with its gain fixed at 1, implemented by normalising
    the rows of `last_layer.weight` on every forward: logits are cosines in [-1, 1], and rescaling a
    prototype changes nothing. One head serves the CLS (DINO) and the patch tokens (iBOT).
    """

    def __init__(
        self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256, nlayers: int = 3
    ):
        super().__init__()
        assert nlayers >= 1, "DinoHead needs at least one MLP layer"
        if nlayers == 1:
            layers: list[nn.Module] = [nn.Linear(in_dim, bottleneck_dim)]
        else:
            layers = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> (..., out_dim) prototype logits."""
        x = self.mlp(x)  # (..., bottleneck)
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12  # 1e-12 underflows in fp16
        x = F.normalize(x, dim=-1, eps=eps)
        w = F.normalize(self.last_layer.weight, dim=-1, eps=eps)  # (K, bottleneck), unit rows
        return F.linear(x, w)
