"""Reconstruction objective: encode, bottleneck, decode; L1 + LPIPS in pixel space."""
from __future__ import annotations

import torch
from torch import nn

from openvtp.config.schema import ReconConfig
from openvtp.losses import ReconstructionLoss
from openvtp.models import VTPModel


class ReconObjective(nn.Module):
    def __init__(self, cfg: ReconConfig):
        super().__init__()
        self.cfg = cfg
        self.loss = ReconstructionLoss(cfg.l1_weight, cfg.lpips_weight, lpips_backbone=cfg.lpips_backbone)

    def forward(self, model: VTPModel, batch: dict, step: int) -> dict[str, torch.Tensor]:
        images = batch["rec_images"]  # (B_rec, 3, H, W), normalised
        tokens = model.trunk(images, drop_path=self.cfg.drop_path)[:, 1:]
        B, N, _ = tokens.shape
        h, w = images.shape[-2] // model.trunk.patch_size, images.shape[-1] // model.trunk.patch_size
        latents = model.trunk.bottleneck(tokens).transpose(1, 2).reshape(B, -1, h, w)
        recon = model.pixel_decoder(latents)
        terms = self.loss(recon, images)
        return {"rec_loss": terms["loss"], "rec_l1": terms["l1"].detach(), "rec_lpips": terms["lpips"].detach()}
