"""What the training loops (pre-training, stage 2) do between and at log steps.

Steps that do not log never wait for the host: skipped steps and samples are summed on the device and
read, with the logged terms, in one collective and one host sync per `train.log_every` steps. Under
torchrun the ranks also agree on stop signals and the time limit only then.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from openvtp.config.schema import TrainConfig
from openvtp.errors import OpenVTPError

from . import dist
from .logger import time_limit_message
from .run_folder import RunFolder


@dataclass
class Interval:
    """The steps since the last log step, as the host reads them at this one."""
    scalars: dict[str, float]  # the terms averaged over ranks, skipped_samples (all ranks), images_per_s
    steps: int
    skipped_steps: int  # optimiser steps skipped (non-finite); the same on every rank
    streak: int  # consecutive skipped steps up to now


class StepCounters:
    def __init__(self, device: torch.device, start_step: int, batch: int):
        """`batch`: images per step (all ranks), for images_per_s."""
        zero = torch.zeros((), device=device)
        self.device, self.batch = device, batch
        self.skipped_samples = zero.clone()  # samples this rank's data pipeline could not read
        self.skipped_steps = zero.clone()
        self.streak = zero.clone()
        self.t_log, self.done_log = time.time(), start_step

    def add(self, skip: torch.Tensor, skipped_samples: torch.Tensor) -> None:
        """Count one step: `skip` is 1.0 where the step was skipped, 0.0 where it was taken."""
        self.skipped_samples += skipped_samples.float().sum()
        self.skipped_steps += skip
        self.streak = (self.streak + 1) * skip

    def read(self, terms: dict[str, torch.Tensor], done: int) -> Interval:
        """The interval that ends with step `done`: `terms` averaged over ranks and the counts since the last read;
        the sums restart from zero."""
        n = len(terms)
        packed = torch.stack([v.float().reshape(()).to(self.device) for v in terms.values()]
                             + [self.skipped_samples])
        packed = dist.all_reduce_sum(packed)
        if dist.is_dist():
            packed = torch.cat([packed[:n] / dist.world_size(), packed[n:]])
        host = torch.cat([packed, torch.stack([self.skipped_steps, self.streak])]).tolist()
        self.skipped_samples.zero_()
        self.skipped_steps.zero_()
        now, steps = time.time(), done - self.done_log
        scalars = dict(zip(terms, host[:n]), skipped_samples=host[n],
                       images_per_s=self.batch * steps / max(now - self.t_log, 1e-9))
        self.t_log, self.done_log = now, done
        return Interval(scalars, steps, int(host[n + 1]), int(host[n + 2]))


def check_skipped_steps(interval: Interval, done: int, max_bad_steps: int, warn: Callable[[str], None],
                        checkpoint: Callable[[int], None], out: Path) -> None:
    """At a log step: warn of the interval's skipped steps; after `max_bad_steps` in a row, save the last good state
    (skipped steps leave the weights as they were after step `done - streak`) and stop the run."""
    skipped, streak = interval.skipped_steps, interval.streak
    if skipped:
        warn(f"step {done}: {skipped} of the last {interval.steps} steps skipped (non-finite loss or gradient), "
             f"the last {streak} in a row")
    if streak >= max_bad_steps:
        checkpoint(done - streak)
        raise OpenVTPError(f"{streak} consecutive non-finite steps up to step {done}; last good state saved in "
                           f"{out / 'checkpoints'} as step {done - streak} (lower optim.lr?)")


def end_step(run: RunFolder, train: TrainConfig, done: int, log_due: bool, t_start: float, device: torch.device,
             checkpoint: Callable[[int], None]) -> str | None:
    """After step `done`: checkpoint when due or stopping, raise `Interrupted` on SIGINT/SIGTERM, and return the
    time-limit message when the safety net fired (the loop stops there), else None.

    One process checks every step; under torchrun the ranks agree (a collective read on the host) at log steps,
    and a signal waits for the next one.
    """
    agree = log_due or not dist.is_dist()
    out_of_time = (train.time_limit_s > 0 and agree
                   and dist.any_rank(time.time() - t_start > train.time_limit_s, device))
    stop = run.step_done(ask=agree)
    if done % train.ckpt_every == 0 or done == train.steps or out_of_time or stop:
        checkpoint(done)
    if stop:
        raise run.interrupted(stop, done)
    return time_limit_message(train.time_limit_s, done, train.steps) if out_of_time else None
