"""AdamW for pre-training as DINOv2's code runs it: parameter groups, per-step schedules, gradient clipping.

Each trainable parameter carries an lr multiplier (layer-wise decay over the vision trunk, times
`optim.patch_embed_lr_mult` on the patch embedding), a weight-decay multiplier (0 for norms,
biases, tokens, embeddings and the logit scale) and a flag for the SSL heads' last layer, whose lr
is 0 while it is frozen. Parameters with equal settings share a group, as DINOv2 fuses them.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from openvtp.config.schema import OptimConfig
from openvtp.models.vtp import TEXT_PREFIXES

NO_DECAY_NAMES = ("cls_token", "mask_token", "positional_embedding", "token_embedding", "logit_scale", "logit_bias")
TRUNK = "model.trunk."


def decays(name: str, p: torch.Tensor) -> bool:
    """Weight decay applies to matrices, not to norms, biases, tokens, embeddings or the logit scale."""
    return p.ndim >= 2 and not any(k in name for k in NO_DECAY_NAMES)


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups, with and without weight decay (stage 2's decoder)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (decay if decays(name, p) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(groups: list[dict], oc: OptimConfig) -> torch.optim.AdamW:
    """AdamW from `optim.*` with the fused kernel (6x faster than the per-tensor loop on CPU:
    benchmarks/optimizer_step.py)."""
    return torch.optim.AdamW(groups, lr=oc.lr, betas=(oc.beta1, oc.beta2), eps=oc.eps, fused=True)


def trunk_layer(name: str, depth: int) -> int:
    """DINOv2's layer index of a trunk parameter (name relative to the trunk): 0 for the patch
    embedding and the tokens, i + 1 for block i, depth + 1 for what follows the blocks."""
    if name.startswith(("patch_embed.", "cls_token", "mask_token", "register_tokens")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def is_last_layer(name: str) -> bool:
    """The SSL heads' prototypes and their gain (DINOv2 freezes `last_layer` for its first epoch)."""
    return name.startswith("ssl.") and ".last_layer" in name


def pretrain_param_groups(task: nn.Module, oc: OptimConfig) -> list[dict]:
    """AdamW groups of the pre-training task's trainable parameters, keyed by (lr_mult, wd_mult, last_layer)."""
    depth = len(task.model.trunk.blocks)
    groups: dict[tuple, dict] = {}
    for name, p in task.named_parameters():
        if not p.requires_grad:
            continue
        lr_mult = 1.0
        if name.startswith(TRUNK):
            rel = name[len(TRUNK):]
            lr_mult = oc.layer_decay ** (depth + 1 - trunk_layer(rel, depth))
            if rel.startswith("patch_embed."):
                lr_mult *= oc.patch_embed_lr_mult
        key = (lr_mult, 1.0 if decays(name, p) else 0.0, is_last_layer(name))
        group = groups.setdefault(key, {"params": [], "lr_mult": key[0], "wd_mult": key[1], "last_layer": key[2]})
        group["params"].append(p)
    return list(groups.values())


def set_schedule(opt: torch.optim.Optimizer, lr: float, weight_decay: float, last_layer_frozen: bool) -> None:
    """This step's lr and weight decay on every group (DINOv2's apply_optim_scheduler)."""
    for group in opt.param_groups:
        group["lr"] = 0.0 if group["last_layer"] and last_layer_frozen else lr * group["lr_mult"]
        group["weight_decay"] = weight_decay * group["wd_mult"]


def clip_module(name: str) -> str:
    """The part a task parameter belongs to for per-module clipping (DINOv2: backbone and each head)."""
    if name.startswith("model."):
        rel = name[len("model."):]
        if rel.startswith(TEXT_PREFIXES):
            return "text"
        if rel.startswith(("visual_proj.", "logit_scale", "logit_bias")):
            return "clip_head"
        return rel.split(".")[0]  # trunk, pixel_decoder
    return "_".join(name.split(".")[:2])  # ssl_head, ssl_ibot_head


def clip_gradients(task: nn.Module, oc: OptimConfig) -> dict[str, torch.Tensor]:
    """Clip at `optim.grad_clip` per module or over all parameters; returns each part's norm before clipping.

    Under FSDP the norms are DTensors: every rank calls this, in the same order.
    """
    parts: dict[str, list[torch.Tensor]] = {}
    for name, p in task.named_parameters():
        if p.requires_grad:
            parts.setdefault(clip_module(name) if oc.clip_mode == "module" else "all", []).append(p)
    if oc.grad_clip <= 0:
        return {}
    norms = {}
    for part, params in parts.items():
        norm = torch.nn.utils.clip_grad_norm_(params, oc.grad_clip)
        norms[part] = norm.full_tensor() if isinstance(norm, DTensor) else norm
    return norms


def total_norm(norms: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """The norm of all gradients from the norms of disjoint parts (0 when nothing was clipped)."""
    if not norms:
        return torch.zeros((), device=device)
    return torch.stack([n.float() for n in norms.values()]).square().sum().sqrt()

