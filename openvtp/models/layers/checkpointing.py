"""Activation checkpointing of one transformer block (timm's `grad_checkpointing` convention)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def run_block(block: nn.Module, enabled: bool, *args: Any) -> torch.Tensor:
    """`block(*args)`, or the same call with its activations recomputed in the backward pass.

    Non-reentrant, with the RNG state saved and restored, so a recomputed block draws the same
    stochastic-depth samples. Without autograd (eval, the EMA teacher) nothing needs recomputing.
    """
    if enabled and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)
