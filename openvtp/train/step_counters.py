"""What the training loops count between log steps, kept on the device.

Steps that do not log never wait for the host: skipped steps and samples are summed on the device and
read, with the logged terms, in one collective and one host sync per `train.log_every` steps.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from openvtp.errors import OpenVTPError

from . import dist


class StepCounters:
    def __init__(self, device: torch.device):
        zero = torch.zeros((), device=device)
        self.device = device
        self.skipped_samples = zero.clone()  # samples this rank's data pipeline could not read
        self.skipped_steps = zero.clone()  # optimiser steps skipped (non-finite); the same on every rank
        self.streak = zero.clone()  # consecutive skipped steps up to now

    def add(self, skip: torch.Tensor, skipped_samples: torch.Tensor) -> None:
        """Count one step: `skip` is 1.0 where the step was skipped, 0.0 where it was taken."""
        self.skipped_samples += skipped_samples.float().sum()
        self.skipped_steps += skip
        self.streak = (self.streak + 1) * skip

    def read(self, terms: dict[str, torch.Tensor]) -> tuple[dict[str, float], tuple[float, int, int]]:
        """`terms` averaged over ranks, and (samples skipped by all ranks, steps skipped, consecutive skipped
        steps) since the last read; the sums restart from zero."""
        n = len(terms)
        packed = torch.stack([v.float().reshape(()).to(self.device) for v in terms.values()]
                             + [self.skipped_samples])
        packed = dist.all_reduce_sum(packed)
        if dist.is_dist():
            packed = torch.cat([packed[:n] / dist.world_size(), packed[n:]])
        host = torch.cat([packed, torch.stack([self.skipped_steps, self.streak])]).tolist()
        self.skipped_samples.zero_()
        self.skipped_steps.zero_()
        return dict(zip(terms, host[:n])), (host[n], int(host[n + 1]), int(host[n + 2]))


def check_skipped_steps(skipped_steps: int, streak: int, done: int, interval: int, max_bad_steps: int,
                        warn: Callable[[str], None], checkpoint: Callable[[int], None], out: Path) -> None:
    """At a log step: warn of the interval's skipped steps; after `max_bad_steps` in a row, save the last good state
    (skipped steps leave the weights as they were after step `done - streak`) and stop the run."""
    if skipped_steps:
        warn(f"step {done}: {skipped_steps} of the last {interval} steps skipped (non-finite loss or gradient), "
             f"the last {streak} in a row")
    if streak >= max_bad_steps:
        checkpoint(done - streak)
        raise OpenVTPError(f"{streak} consecutive non-finite steps up to step {done}; last good state saved in "
                           f"{out / 'checkpoints'} as step {done - streak} (lower optim.lr?)")
