"""Training compute counted by torch: FLOPs of one pre-training step, as the paper's x-axis.

`torch.utils.flop_counter.FlopCounterMode` counts the matrix multiplications, convolutions and
attention of the forward and backward passes (the EMA teacher's forward included, the optimiser
and the data pipeline not), on a real batch of the config. A step's FLOPs do not depend on the
step or the seed, so steps x FLOPs per step is a run's compute.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch.utils.flop_counter import FlopCounterMode

from openvtp.config.schema import PretrainConfig
from openvtp.models import VTPModel

from .data import build_loader, finish_views
from .task import PretrainTask


def pretrain_step_flops(cfg: PretrainConfig, device: torch.device | str = "cpu",
                        custom_mapping: dict | None = None) -> int:
    """FLOPs of one optimiser step of `cfg` (the whole global batch, forward and backward, one process),
    counted on `device` (a GPU-sized config counts in seconds there, in minutes on a CPU). custom_mapping:
    FLOP formulas for ops torch does not count (benchmarks/peak.py's CPU attention); the study's figures
    are counted without it."""
    cfg = replace(cfg, data=replace(cfg.data, workers=0))
    torch.manual_seed(cfg.train.seed)
    task = PretrainTask(cfg, VTPModel(cfg.model)).to(device).train()
    batch = finish_views(next(iter(build_loader(cfg, 0, 1, 0))), torch.device(device))
    with FlopCounterMode(display=False, custom_mapping=custom_mapping) as counter:
        task(batch, 0)["loss"].backward()
    return int(counter.get_total_flops())
