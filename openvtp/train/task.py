"""`PretrainTask`: the VTP model plus its enabled objectives, weighted in one place.

DDP (or compile) wraps this one module: one forward and one backward per micro-step.
A lambda of 0 means the objective is not built, so its branch costs nothing.
"""
from __future__ import annotations

import torch
from torch import nn

from openvtp.config.schema import PretrainConfig
from openvtp.models import VTPModel
from openvtp.models.vtp import CLIP_PREFIXES

from .objectives import ClipObjective, ReconObjective, SSLObjective


class PretrainTask(nn.Module):
    def __init__(self, cfg: PretrainConfig, model: VTPModel):
        super().__init__()
        self.model = model
        self.weights = {"clip": cfg.clip.weight, "ssl": cfg.ssl.weight, "rec": cfg.recon.weight}
        self.clip = ClipObjective(cfg.clip) if cfg.clip.weight > 0 else None
        self.ssl = SSLObjective(cfg.ssl, model) if cfg.ssl.weight > 0 else None
        self.rec = ReconObjective(cfg.recon) if cfg.recon.weight > 0 else None
        # parts no objective trains are frozen, so DDP does not wait for their gradients
        if self.clip is None:
            for name, p in model.named_parameters():
                if name.startswith(CLIP_PREFIXES):
                    p.requires_grad_(False)
        if self.rec is None and model.pixel_decoder is not None:
            model.pixel_decoder.requires_grad_(False)

    def objectives(self) -> dict[str, nn.Module]:
        return {k: v for k, v in (("clip", self.clip), ("ssl", self.ssl), ("rec", self.rec)) if v is not None}

    def forward(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        """Named terms: keys ending in `_loss` are optimised (weighted into `loss`), the rest are logged."""
        terms: dict[str, torch.Tensor] = {}
        total = 0.0
        for name, objective in self.objectives().items():
            out = objective(self.model, batch, step)
            total = total + self.weights[name] * out[f"{name}_loss"]
            terms.update(out)
        terms["loss"] = total
        return terms
