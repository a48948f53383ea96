"""What the pre-training loop counts between log steps, kept on the device.

Steps that do not log never wait for the host: skipped steps and samples are summed on the device and
read, with the logged terms, in one collective and one host sync per `train.log_every` steps.
"""
from __future__ import annotations

import torch

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
