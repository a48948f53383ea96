"""SSL health: whether DINO is learning or collapsed, from tensors the SSL step already holds.

A loss near ln K says little (a uniform student under uniform targets sits there, and so does a
learning one early on); these figures tell the cases apart. Everything stays on the device: the
loop reads the figures at log steps, with the other scalars, in one host sync.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from openvtp.runtime import dist


@torch.no_grad()
def ssl_health(teacher_probs: torch.Tensor, student_logits: list[torch.Tensor], student_temp: float,
               dino: torch.Tensor, student_cls: torch.Tensor, n_global: int) -> dict[str, torch.Tensor]:
    """Health figures of one SSL forward.

    Args:
        teacher_probs: (G*B, K) teacher targets of the global crops' CLS, crop-major.
        student_logits: the student's (B, K) CLS logits of every crop.
        dino: the DINO loss (mean cross-entropy over student/teacher crop pairs).
        student_cls: (G*B, D) student CLS features of the global crops, before the head.

    Returns (ln K is the entropy of a uniform distribution over K prototypes):
        ssl_teacher_entropy: mean entropy of the teacher targets, nats.
        ssl_student_entropy: mean entropy of the student distributions (all crops), nats.
        ssl_dino_kl: DINO loss minus the teacher entropy, the mean KL(teacher || student) over pairs.
        ssl_same_prototype: share of images whose first two global crops have the same teacher argmax.
        ssl_prototypes_used: prototypes that are the teacher argmax of some global crop, over all ranks.
        ssl_cls_cosine: mean cosine between the student CLS features of different images.
    """
    t = teacher_probs.float()
    n_protos = t.shape[1]
    log_s = F.log_softmax(torch.cat(student_logits).float() / student_temp, dim=-1)
    teacher_entropy = torch.special.entr(t).sum(dim=-1).mean()
    out = {"ssl_teacher_entropy": teacher_entropy,
           "ssl_student_entropy": -(log_s.exp() * log_s).sum(dim=-1).mean(),
           "ssl_dino_kl": dino.detach().float() - teacher_entropy}
    top = t.argmax(dim=-1).view(n_global, -1)  # (G, B)
    if n_global >= 2:
        out["ssl_same_prototype"] = (top[0] == top[1]).float().mean()
    counts = dist.all_reduce_sum(torch.bincount(top.flatten(), minlength=n_protos).float())
    out["ssl_prototypes_used"] = (counts > 0).sum().float()
    x = F.normalize(student_cls.detach().float(), dim=-1).view(n_global, -1, student_cls.shape[-1])  # (G, B, D)
    n = x.shape[1]
    if n >= 2:  # sum over pairs i != j of x_i . x_j = |sum x|^2 - n for unit rows
        out["ssl_cls_cosine"] = ((x.sum(dim=1).square().sum(dim=-1) - n) / (n * (n - 1))).mean()
    return out
