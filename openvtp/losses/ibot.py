"""iBOT masked-patch loss: teacher patch distributions supervise the student at masked positions."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from openvtp.losses.dino import sinkhorn_knopp, update_center_


def mask_index(masks: torch.Tensor) -> torch.Tensor:
    """(N, P) bool patch masks -> (M,) flat positions of the masked patches, image-major: the rows
    x.flatten(0, 1)[masks.flatten()] selects. Its length M is data: on a GPU, making it waits for the device."""
    return masks.reshape(-1).nonzero().squeeze(1)


class IBOTPatchLoss(nn.Module):
    """Weighted cross-entropy over the M masked patches of a batch, each image counting equally.

    Inputs are the masked rows only, flattened over images: (M, K) with M = total masked patches.
    Teacher side as in DINOLoss: `sinkhorn_knopp_teacher` (default) or `softmax_center_teacher`
    followed by `update_center`; `center` is a checkpointed buffer separate from DINO's.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @staticmethod
    def mask_weights(masks: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """(N, P) bool patch masks -> (M,) weights 1 / (masked patches in that image), in the
        row order of x.flatten(0, 1)[masks.flatten()] (image-major). `index`: `mask_index(masks)`,
        best made on the host (a GPU would otherwise wait for M)."""
        masks = masks.flatten(1)
        per_image = masks.sum(dim=1, keepdim=True).clamp(min=1)  # (N, 1)
        weights = (1.0 / per_image).expand(masks.shape).reshape(-1)  # (N * P,)
        return weights.index_select(0, mask_index(masks) if index is None else index)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self,
        teacher_patch_logits: torch.Tensor,
        teacher_temp: float,
        n_masked_patches_tensor: torch.Tensor | None = None,
        n_iterations: int = 3,
    ) -> torch.Tensor:
        """(M, K) teacher logits at the masked positions -> (M, K) probabilities, balanced over the
        masked patches of all ranks. n_masked_patches_tensor: this rank's M (default: rows given);
        it is not modified."""
        return sinkhorn_knopp(teacher_patch_logits, teacher_temp, n_iterations, n_masked_patches_tensor)

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_patch_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """(M, K) -> softmax((logits - center) / teacher_temp), with the centre before this batch."""
        return F.softmax((teacher_patch_logits.float() - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_patch_logits: torch.Tensor) -> None:
        """center <- m * center + (1 - m) * mean of the (M, K) masked-patch logits over all ranks."""
        update_center_(self.center, teacher_patch_logits, self.center_momentum)

    def forward(
        self, student_patch_logits: torch.Tensor, teacher_probs: torch.Tensor, mask_weights: torch.Tensor,
        n_images: int | None = None,
    ) -> torch.Tensor:
        """student_patch_logits, teacher_probs: (M, K); mask_weights: (M,), 1 / masked patches of the
        row's image (see `mask_weights`). Returns sum(w * CE) / n_images, each masked image's mean
        patch cross-entropy summed and divided by `n_images`: all images of the batch, masked or not,
        as DINOv2's forward_masked; by default sum(w), the images that have masks. Zero when M == 0."""
        assert student_patch_logits.shape == teacher_probs.shape, (
            f"student {tuple(student_patch_logits.shape)} vs teacher {tuple(teacher_probs.shape)}")
        assert mask_weights.shape == student_patch_logits.shape[:1], "one weight per masked patch"
        log_p = F.log_softmax(student_patch_logits.float() / self.student_temp, dim=-1)  # (M, K)
        ce = -(teacher_probs.float() * log_p).sum(dim=-1)  # (M,)
        w = mask_weights.float()
        # clamp: with no masked patch the sum is 0 and the loss 0, still attached to the graph
        denominator = w.sum().clamp(min=1e-12) if n_images is None else max(n_images, 1)
        return (w * ce).sum() / denominator
