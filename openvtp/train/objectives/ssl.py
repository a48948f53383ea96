"""Self-supervised objective (DINOv2): DINO on CLS tokens, iBOT on masked patches, KoLeo; EMA teacher.

The student is the shared trunk plus a DINO head; the teacher is an EMA copy of both that
sees unmasked global crops without stochastic depth. One head serves DINO and iBOT.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from openvtp.config.schema import SSLConfig
from openvtp.losses import DINOLoss, IBOTPatchLoss, KoLeoLoss
from openvtp.models import VTPModel
from openvtp.models.heads import DinoHead
from openvtp.train import dist
from openvtp.train.schedules import linear_warmup


def _gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    if not dist.is_dist():
        return x
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x), dim=0)


def _local(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """This rank's shards of FSDP parameters (DTensors); plain tensors as they are."""
    return [p.to_local() if isinstance(p, DTensor) else p for p in params]


class SSLObjective(nn.Module):
    def __init__(self, cfg: SSLConfig, model: VTPModel):
        super().__init__()
        self.cfg = cfg
        dim = model.config.vision_embed_dim
        self.head = DinoHead(dim, cfg.prototypes, cfg.head_hidden, cfg.head_bottleneck)
        # frozen (requires_grad False): checkpointed with the task, never optimised, ignored by DDP, sharded by FSDP
        teacher = nn.ModuleDict({"trunk": copy.deepcopy(model.trunk), "head": copy.deepcopy(self.head)})
        teacher.requires_grad_(False)
        self.teacher = teacher
        self.dino = DINOLoss(cfg.prototypes, cfg.student_temp)
        self.ibot = IBOTPatchLoss(cfg.prototypes, cfg.student_temp)
        self.koleo = KoLeoLoss()

    def teacher_temp(self, step: int) -> float:
        lo, hi = self.cfg.teacher_temp
        return linear_warmup(step, self.cfg.teacher_temp_warmup_steps, lo, hi)

    @torch.no_grad()
    def _teacher_targets(self, globals_: torch.Tensor, masks: torch.Tensor, step: int):
        """Teacher probabilities for the CLS of each global crop and the masked patches."""
        self.teacher.eval()
        tokens = self.teacher["trunk"](globals_)  # (G*B, 1+N, D)
        cls_logits = self.teacher["head"](tokens[:, 0])
        patch_logits = self.teacher["head"](tokens[:, 1:][masks])  # (M, K)
        temp = self.teacher_temp(step)
        if self.cfg.centering == "sinkhorn":
            cls_p = self.dino.sinkhorn_knopp_teacher(cls_logits, temp)
            patch_p = self.ibot.sinkhorn_knopp_teacher(patch_logits, temp)
        else:
            cls_p = self.dino.softmax_center_teacher(cls_logits, temp)
            patch_p = self.ibot.softmax_center_teacher(patch_logits, temp)
            self.dino.update_center(cls_logits)
            self.ibot.update_center(patch_logits)
        return cls_p, patch_p

    def forward(self, model: VTPModel, batch: dict, step: int) -> dict[str, torch.Tensor]:
        g = batch["ssl_globals"]  # (G, B, 3, S, S)
        n_g, B = g.shape[:2]
        globals_ = g.flatten(0, 1)
        masks = batch["ssl_masks"]  # (G*B, N) bool, crop-major like globals_
        cls_p, patch_p = self._teacher_targets(globals_, masks, step)

        s_tokens = model.trunk(globals_, masks=masks, drop_path=self.cfg.drop_path)  # (G*B, 1+N, D)
        s_cls = s_tokens[:, 0]
        s_logits = list(self.head(s_cls).chunk(n_g))
        if "ssl_locals" in batch:
            loc = batch["ssl_locals"]
            l_tokens = model.trunk(loc.flatten(0, 1), drop_path=self.cfg.drop_path)
            s_logits += list(self.head(l_tokens[:, 0]).chunk(loc.shape[0]))
        dino = self.dino(s_logits, list(cls_p.chunk(n_g)))
        weights = IBOTPatchLoss.mask_weights(masks)
        ibot = self.ibot(self.head(s_tokens[:, 1:][masks]), patch_p, weights)
        # KoLeo per global crop over the global batch, so the value does not depend on the world size
        koleo = sum(self.koleo(_gather_with_grad(c)) for c in s_cls.chunk(n_g)) / n_g
        loss = self.cfg.dino_weight * dino + self.cfg.ibot_weight * ibot + self.cfg.koleo_weight * koleo
        return {"ssl_loss": loss, "ssl_dino": dino.detach(), "ssl_ibot": ibot.detach(), "ssl_koleo": koleo.detach(),
                "teacher_temp": torch.tensor(self.teacher_temp(step))}

    @torch.no_grad()
    def update_teacher(self, model: VTPModel, momentum: float) -> None:
        """teacher <- m * teacher + (1 - m) * student, for trunk and head.

        Under FSDP teacher and student are sharded alike, so the update is a lerp of local shards.
        """
        student = list(model.trunk.parameters()) + list(self.head.parameters())
        teacher = list(self.teacher["trunk"].parameters()) + list(self.teacher["head"].parameters())
        torch._foreach_lerp_(_local(teacher), _local([p.detach() for p in student]), 1.0 - momentum)
