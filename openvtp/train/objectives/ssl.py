"""Self-supervised objective (DINOv2): DINO on CLS tokens, iBOT on masked patches, KoLeo; EMA teacher.

The student is the shared trunk plus a DINO head (and an iBOT head with `ssl.ibot_separate_head`);
the teacher is an EMA copy of them that sees unmasked global crops without stochastic depth. Loss
scales follow DINOv2's code by default (`ssl.ibot_normalize`, `ssl.koleo_crops`, `ssl.koleo_batch`).
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from openvtp.config.schema import SSLConfig
from openvtp.losses import DINOLoss, IBOTPatchLoss, KoLeoLoss
from openvtp.losses.ibot import mask_index
from openvtp.models import VTPModel
from openvtp.models.heads import DinoHead
from openvtp.runtime import dist
from openvtp.train.health import ssl_health
from openvtp.train.schedules import linear_warmup


def masked_rows(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, 1+N, D) tokens -> (M, D) patch tokens at flat positions `index` into (B, N), image-major:
    the rows of tokens[:, 1:][masks], found without a host sync."""
    return tokens[:, 1:].reshape(-1, tokens.shape[-1]).index_select(0, index)


def _local(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """This rank's shards of FSDP parameters (DTensors); plain tensors as they are."""
    return [p.to_local() if isinstance(p, DTensor) else p for p in params]


class SSLHead(DinoHead):
    """DinoHead whose weight-norm gain g can be learnt, as DINOv2's `last_layer.weight_g`: logit_k = g_k cos(x, v_k).

    The gain has weight_g's shape (K, 1), so it takes weight decay as in DINOv2; without it g is 1.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int, train_gain: bool):
        super().__init__(in_dim, out_dim, hidden_dim, bottleneck_dim)
        self.last_layer_gain = nn.Parameter(torch.ones(out_dim, 1)) if train_gain else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        return logits if self.last_layer_gain is None else logits * self.last_layer_gain.t()


class SSLObjective(nn.Module):
    def __init__(self, cfg: SSLConfig, model: VTPModel):
        super().__init__()
        self.cfg = cfg
        dim = model.config.vision_embed_dim
        self.head = SSLHead(dim, cfg.prototypes, cfg.head_hidden, cfg.head_bottleneck, cfg.train_gain)
        self.ibot_head = (SSLHead(dim, cfg.prototypes, cfg.head_hidden, cfg.head_bottleneck, cfg.train_gain)
                          if cfg.ibot_separate_head else None)
        # frozen (requires_grad False): checkpointed with the task, never optimised, ignored by DDP, sharded by FSDP
        teacher = nn.ModuleDict({"trunk": copy.deepcopy(model.trunk), "head": copy.deepcopy(self.head)})
        if self.ibot_head is not None:
            teacher["ibot_head"] = copy.deepcopy(self.ibot_head)
        teacher.requires_grad_(False)
        self.teacher = teacher
        self.dino = DINOLoss(cfg.prototypes, cfg.student_temp)
        self.ibot = IBOTPatchLoss(cfg.prototypes, cfg.student_temp)
        self.koleo = KoLeoLoss()
        self.track_health = False  # set by the loop on log steps: forward then adds the health figures

    def teacher_temp(self, step: int) -> float:
        lo, hi = self.cfg.teacher_temp
        return linear_warmup(step, self.cfg.teacher_temp_warmup_steps, lo, hi)

    @torch.no_grad()
    def _teacher_targets(self, globals_: torch.Tensor, mask_index: torch.Tensor, step: int):
        """Teacher probabilities for the CLS of each global crop and the masked patches."""
        self.teacher.eval()
        tokens = self.teacher["trunk"](globals_)  # (G*B, 1+N, D)
        cls_logits = self.teacher["head"](tokens[:, 0])
        ibot_head = self.teacher["ibot_head" if self.ibot_head is not None else "head"]
        patch_logits = ibot_head(masked_rows(tokens, mask_index))  # (M, K)
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
        index = batch.get("ssl_mask_index")  # the loop makes it on the host; a GPU would wait for it here
        index = mask_index(masks) if index is None else index
        cls_p, patch_p = self._teacher_targets(globals_, index, step)

        s_tokens = model.trunk(globals_, masks=masks, drop_path=self.cfg.drop_path)  # (G*B, 1+N, D)
        s_cls = s_tokens[:, 0]
        s_logits = list(self.head(s_cls).chunk(n_g))
        if "ssl_locals" in batch:
            loc = batch["ssl_locals"]
            l_tokens = model.trunk(loc.flatten(0, 1), drop_path=self.cfg.drop_path)
            s_logits += list(self.head(l_tokens[:, 0]).chunk(loc.shape[0]))
        dino = self.dino(s_logits, list(cls_p.chunk(n_g)))
        ibot_head = self.ibot_head if self.ibot_head is not None else self.head
        ibot = self.ibot(ibot_head(masked_rows(s_tokens, index)), patch_p, IBOTPatchLoss.mask_weights(masks, index),
                         n_images=masks.shape[0] if self.cfg.ibot_normalize == "all" else None)
        koleo = self._koleo(s_cls, n_g)
        loss = self.cfg.dino_weight * dino + self.cfg.ibot_weight * ibot + self.cfg.koleo_weight * koleo
        terms = {"ssl_loss": loss, "ssl_dino": dino.detach(), "ssl_ibot": ibot.detach(), "ssl_koleo": koleo.detach(),
                 "teacher_temp": torch.tensor(self.teacher_temp(step))}
        if self.track_health:
            terms.update(ssl_health(cls_p, s_logits, self.cfg.student_temp, dino, s_cls, n_g))
        return terms

    def _koleo(self, s_cls: torch.Tensor, n_global: int) -> torch.Tensor:
        """KoLeo of each global crop's student CLS over this rank's batch (DINOv2) or the batch of all ranks,
        summed over the crops (DINOv2) or averaged."""
        total = sum(self.koleo(c if self.cfg.koleo_batch == "rank" else dist.all_gather(c))
                    for c in s_cls.chunk(n_global))
        return total if self.cfg.koleo_crops == "sum" else total / n_global

    def heads(self) -> list[nn.Module]:
        return [self.head] + ([self.ibot_head] if self.ibot_head is not None else [])

    @torch.no_grad()
    def update_teacher(self, model: VTPModel, momentum: float, keep: torch.Tensor | None = None) -> None:
        """teacher <- m * teacher + (1 - m) * student, for trunk and heads; `keep` (a 0-dim tensor, 0 or 1) at 0
        leaves the teacher as it is without the host reading it (a skipped step).

        Under FSDP teacher and student are sharded alike, so the update is a lerp of local shards.
        """
        student = [p for m in [model.trunk, *self.heads()] for p in m.parameters()]
        teacher = [p for m in self.teacher.values() for p in m.parameters()]  # trunk, head, ibot_head: the same order
        # per tensor: foreach_lerp takes a number, and would read a tensor weight on the host at every step
        weight = 1.0 - momentum if keep is None else (1.0 - momentum) * keep
        for t, s in zip(_local(teacher), _local([p.detach() for p in student])):
            t.lerp_(s, weight)
