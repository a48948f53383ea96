"""KoLeo regulariser: spreads features uniformly by penalising small nearest-neighbour distances."""

import torch
import torch.nn as nn
import torch.nn.functional as F


class KoLeoLoss(nn.Module):
    """Kozachenko-Leonenko entropy estimator (Sablayrolles et al. 2019, used by DINOv2).

    loss = -mean_i log(||x_i - x_nn(i)|| + eps), with x L2-normalised and nn(i) the nearest other
    row of the same batch (per rank, not gathered).
    """

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: (B, D), B >= 2; L2-normalised here (a no-op for normalised input), in fp32."""
        assert features.ndim == 2 and features.shape[0] >= 2, "KoLeo needs (B, D) with B >= 2"
        x = F.normalize(features.float(), dim=-1, eps=self.eps)  # (B, D)
        with torch.no_grad():
            # on the sphere the nearest neighbour is the largest dot product; -2 < any cosine excludes self
            dots = x @ x.t()  # (B, B)
            dots.fill_diagonal_(-2.0)
            nn_idx = dots.argmax(dim=1)  # (B,)
        dist = (x - x[nn_idx]).norm(dim=-1)  # (B,)
        return -torch.log(dist + self.eps).mean()
