"""CLIP's symmetric InfoNCE loss, with features gathered from all ranks (open_clip's ClipLoss)."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from openvtp.runtime import dist


gather_features = dist.all_gather  # open_clip's name for it


class ClipLoss(nn.Module):
    """Symmetric InfoNCE over the global batch: every rank builds the full (B_global, B_global) logits.

    Every rank therefore computes the same loss value, equal to the one-process loss on the
    concatenated batch. With gather_with_grad=True and DDP's gradient averaging, the parameter
    gradient also equals the one-process full-batch gradient (each rank's local features receive
    world_size x their share, DDP divides by world_size). gather_with_grad=False gives the same
    value but a parameter gradient world_size times smaller after DDP's averaging.
    """

    def __init__(self, gather_with_grad: bool = True):
        super().__init__()
        self.gather_with_grad = gather_with_grad

    def forward(
        self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
    ) -> torch.Tensor:
        """image_features, text_features: (B, E), already L2-normalised; logit_scale: scalar,
        already exponentiated and clamped. Returns the scalar loss."""
        assert image_features.shape == text_features.shape, (
            f"image {tuple(image_features.shape)} vs text {tuple(text_features.shape)}")
        all_image = gather_features(image_features, self.gather_with_grad)  # (Bg, E)
        all_text = gather_features(text_features, self.gather_with_grad)  # (Bg, E)
        logits_per_image = logit_scale * all_image @ all_text.t()  # (Bg, Bg)
        labels = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
        loss_i2t = F.cross_entropy(logits_per_image.float(), labels)
        loss_t2i = F.cross_entropy(logits_per_image.t().float(), labels)
        return (loss_i2t + loss_t2i) / 2
