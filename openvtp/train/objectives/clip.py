"""Image-text contrastive objective: InfoNCE between image CLS projections and text EOT projections."""
from __future__ import annotations

import math

import torch
from torch import nn

from openvtp.config.schema import ClipConfig
from openvtp.losses import ClipLoss
from openvtp.models import VTPModel


class ClipObjective(nn.Module):
    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.cfg = cfg
        self.loss = ClipLoss(gather_with_grad=True)

    def forward(self, model: VTPModel, batch: dict, step: int) -> dict[str, torch.Tensor]:
        tokens = model.trunk(batch["clip_images"], drop_path=self.cfg.drop_path)  # (B, 1+N, D)
        image = model.clip_image_embedding(tokens, normalize=True)
        text = model.get_clip_text_feature(batch["text"], normalize=True)
        scale = model.logit_scale.clamp(max=math.log(self.cfg.max_logit_scale)).exp()
        return {"clip_loss": self.loss(image, text, scale), "logit_scale": scale.detach()}
