"""DINO self-distillation loss on CLS prototypes scores, with Sinkhorn-Knopp or softmax-centred teacher."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from openvtp.runtime.dist import all_reduce_


@torch.no_grad()
def sinkhorn_knopp(
    logits: torch.Tensor, temp: float, n_iterations: int = 3, n_samples: torch.Tensor | int | None = None
) -> torch.Tensor:
    """Teacher probabilities (N, K) from logits (N, K) by Sinkhorn-Knopp (DINOv2, from SwAV).

    Alternately makes the prototype marginals uniform (each prototype gets 1/K of the mass) and
    the sample marginals uniform, over the samples of all ranks; ends on the sample step, so each
    returned row sums to 1 and the column sums are close to N_global / K.

    Args:
        n_samples: samples on this rank (default N); summed over ranks for the global count.
    """
    logits = logits.float()
    n_local = logits.shape[0] if n_samples is None else n_samples
    n_total = all_reduce_(torch.as_tensor(n_local, dtype=torch.float32, device=logits.device).clone())
    # empty inputs flow through every collective below, so a rank without samples cannot hang the others;
    # a shift common to all ranks cancels in the first normalisation and keeps exp() finite
    local_max = logits.max() if logits.numel() else logits.new_tensor(float("-inf"))
    shift = all_reduce_(local_max.clone(), op="max")
    q = torch.exp((logits - shift) / temp).t()  # (K, N)
    n_protos = q.shape[0]
    q /= all_reduce_(q.sum())
    for _ in range(n_iterations):
        q /= all_reduce_(q.sum(dim=1, keepdim=True))  # (K, 1): each prototype's total mass
        q /= n_protos
        q /= q.sum(dim=0, keepdim=True)  # (1, N): each sample's mass
        q /= n_total
    q *= n_total
    return q.t()


@torch.no_grad()
def update_center_(center: torch.Tensor, logits: torch.Tensor, momentum: float) -> None:
    """EMA of the teacher's mean logit over all rows of all ranks, in place. logits: (..., K)."""
    logits = logits.reshape(-1, logits.shape[-1]).float()
    stats = torch.cat([logits.sum(dim=0), logits.new_tensor([logits.shape[0]])])  # (K + 1,)
    all_reduce_(stats)
    count = stats[-1]
    batch_center = (stats[:-1] / count.clamp(min=1)).view_as(center).to(center.dtype)
    # no rows anywhere: keep the centre (torch.where avoids a host sync)
    center.copy_(torch.where(count > 0, center * momentum + batch_center * (1 - momentum), center))


class DINOLoss(nn.Module):
    """Cross-entropy between teacher CLS distributions and student CLS distributions of other crops.

    Pairing convention: `student_logits` = [global crops..., local crops...] and `teacher_probs` =
    [global crops...] in the same order as the student's first entries; row b of every entry is
    image b. With ignore_diagonal, student global i is never paired with teacher global i, so with
    G global and L local crops there are G*(G-1) + L*G pairs (DINOv2's count: 2 + 16 for 2 + 8 crops).
    The loss is the mean over pairs of the batch-mean cross-entropy.

    Teacher side: `sinkhorn_knopp_teacher` (DINOv2's default), or `softmax_center_teacher` followed
    by `update_center` with the same logits. `center` is a buffer, so it is checkpointed.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self, teacher_logits: torch.Tensor, teacher_temp: float, n_iterations: int = 3
    ) -> torch.Tensor:
        """(N, K) logits of the teacher's global crops (all crops stacked) -> (N, K) probabilities."""
        return sinkhorn_knopp(teacher_logits, teacher_temp, n_iterations)

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """(N, K) -> softmax((logits - center) / teacher_temp), with the centre before this batch."""
        return F.softmax((teacher_logits.float() - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """center <- m * center + (1 - m) * mean of (N, K) teacher logits over all ranks."""
        update_center_(self.center, teacher_logits, self.center_momentum)

    def forward(
        self, student_logits: list[torch.Tensor], teacher_probs: list[torch.Tensor], ignore_diagonal: bool = True
    ) -> torch.Tensor:
        """student_logits: list of (B, K) raw head outputs; teacher_probs: list of (B, K) rows summing to 1."""
        n_s, n_t = len(student_logits), len(teacher_probs)
        assert n_t > 0 and n_s > 0, "DINOLoss needs at least one student and one teacher crop"
        assert not ignore_diagonal or n_s >= n_t, "student list must start with the teacher's global crops"
        n_pairs = n_s * n_t - (n_t if ignore_diagonal else 0)
        assert n_pairs > 0, "no (student, teacher) pair left: one global crop and no local crops"
        # sum_j t_j . log p_i over teachers j != i == (sum_j t_j - t_i) . log p_i: one product per student crop
        t_sum = torch.stack([t.float() for t in teacher_probs]).sum(dim=0)  # (B, K)
        total = 0.0
        for i, s in enumerate(student_logits):
            log_p = F.log_softmax(s.float() / self.student_temp, dim=-1)  # (B, K)
            t = t_sum - teacher_probs[i].float() if ignore_diagonal and i < n_t else t_sum
            total = total - (t * log_p).sum(dim=-1).mean()
        return total / n_pairs
