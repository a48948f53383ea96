"""Flow matching on the linear path with velocity prediction (SiT / LightningDiT).

Convention (SiT's, kept so that the published LightningDiT/VTP numbers apply unchanged):
t = 0 is noise, t = 1 is data,

    x_t = t * x_1 + (1 - t) * eps,    target velocity  u = d x_t / d t = x_1 - eps,

and sampling integrates dx/dt = v(x, t) from t = 0 (eps ~ N(0, I)) to t = 1. In this convention
the VTP repository's logit-normal timestep density has mu = -0.75, sigma = 1.0 (median
t = sigmoid(-0.75) = 0.32, i.e. weighted towards the noisy end); LightningDiT's own default is
mu = 0. With the other common convention (t = 1 noise) the sign of mu flips.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TIMESTEP_SAMPLING = ("logit_normal", "uniform")


def sample_timesteps(
    n: int,
    mode: str = "logit_normal",
    mu: float = -0.75,
    sigma: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(n,) times in (0, 1): sigmoid(N(mu, sigma^2)) for 'logit_normal', U(0, 1) for 'uniform'."""
    device = generator.device if generator is not None else device
    if mode == "logit_normal":
        return torch.sigmoid(mu + sigma * torch.randn(n, generator=generator, device=device))
    if mode == "uniform":
        return torch.rand(n, generator=generator, device=device)
    raise ValueError(f"unknown timestep sampling {mode!r} (choose from {TIMESTEP_SAMPLING})")


def interpolate(x1: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, u_t) on the linear path for data x1, noise and per-sample t (B,)."""
    tb = t.view(-1, *([1] * (x1.dim() - 1))).to(x1.dtype)
    return tb * x1 + (1 - tb) * noise, x1 - noise


class FlowMatchingLoss(nn.Module):
    """MSE between predicted and target velocity, plus LightningDiT's optional cosine term.

    Returns `flow_loss` (MSE, mean over all elements), `cos_loss` (mean of 1 - cos(v_pred, u)
    over the channel dim at every position; raw, unweighted) and `loss` = flow_loss +
    cos_weight * cos_loss, the optimised total. LightningDiT adds the two with weight 1.
    """

    def __init__(
        self,
        timestep_sampling: str = "logit_normal",
        lognorm_mu: float = -0.75,
        lognorm_sigma: float = 1.0,
        cos_weight: float = 1.0,
    ):
        super().__init__()
        assert timestep_sampling in TIMESTEP_SAMPLING, f"unknown timestep sampling {timestep_sampling!r}"
        self.timestep_sampling = timestep_sampling
        self.lognorm_mu = lognorm_mu
        self.lognorm_sigma = lognorm_sigma
        self.cos_weight = cos_weight

    def terms(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms for a velocity prediction (B, C, ...) against the target; computed in fp32."""
        pred, target = pred.float(), target.float()
        flow = F.mse_loss(pred, target)
        cos = (1 - F.cosine_similarity(pred, target, dim=1)).mean()
        return {"flow_loss": flow, "cos_loss": cos, "loss": flow + self.cos_weight * cos}

    def forward(
        self,
        model: nn.Module,
        x1: torch.Tensor,
        y: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """model(x_t, t, y) -> velocity; x1 (B, C, H, W) normalised clean latents; y (B,) labels.

        t (B,) and noise (B, C, H, W) are drawn from `generator` unless given (the trainer draws
        them for the global batch, so a run does not depend on how many processes share it).
        """
        if t is None:
            t = sample_timesteps(x1.shape[0], self.timestep_sampling, self.lognorm_mu, self.lognorm_sigma, generator,
                                 x1.device)
        if noise is None:
            device = generator.device if generator is not None else x1.device
            noise = torch.randn(x1.shape, generator=generator, device=device, dtype=x1.dtype)
        t, noise = t.to(x1.device), noise.to(x1.device, x1.dtype)
        xt, ut = interpolate(x1, noise, t)
        return self.terms(model(xt, t, y), ut)
