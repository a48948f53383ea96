"""The training skeleton: the step loop that pre-training, stage 2 and the DiT trainer share.

A trainer brings its step (`step_fn`), its checkpoint and what it shows after a step; the skeleton brings the rest.
Steps that do not log never wait for the host: skipped steps, skipped samples and (when kept) each step's loss are
summed or stacked on the device, and read with the logged terms in one collective and one host sync per
`train.log_every` steps. A step whose loss or gradient is not finite is skipped by the trainer on the device
(fused optimisers' `found_inf`); the skeleton counts such steps and stops the run after `train.max_bad_steps` in a
row. Under torchrun the ranks agree on stop signals and the time limit at log steps.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import torch

from openvtp.errors import OpenVTPError

from . import dist
from .run_folder import RunFolder


class TrainOptions(Protocol):
    """The `train.*` options the skeleton reads (each trainer's train config has them)."""
    steps: int
    log_every: int
    ckpt_every: int  # 0: only at the end
    max_bad_steps: int
    time_limit_s: float


@dataclass
class Step:
    """What one optimiser step leaves: on the device, except `host`."""
    skip: torch.Tensor  # 1.0 where the step was skipped (non-finite loss or gradient), 0.0 where it was taken
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # what a log step writes (needed only there)
    host: dict[str, float] = field(default_factory=dict)  # values the host knows (schedules), written as they are
    skipped_samples: torch.Tensor | None = None  # samples the data pipeline could not read for this step
    loss: torch.Tensor | None = None  # kept for every step when the skeleton is asked to (`losses`)


@dataclass
class Interval:
    """The steps since the last log step, as the host reads them at this one."""
    scalars: dict[str, float]  # the terms averaged over ranks, skipped_samples (all ranks), images_per_s
    steps: int
    skipped_steps: int  # optimiser steps skipped (non-finite); the same on every rank
    streak: int  # consecutive skipped steps up to now
    losses: list[float] = field(default_factory=list)  # each step's loss (averaged over ranks), when kept


class StepCounters:
    def __init__(self, device: torch.device, start_step: int, batch: int):
        """`batch`: images per step (all ranks), for images_per_s."""
        zero = torch.zeros((), device=device)
        self.device, self.batch = device, batch
        self.skipped_samples = zero.clone()
        self.skipped_steps = zero.clone()
        self.streak = zero.clone()
        self.losses: list[torch.Tensor] = []
        self.t_log, self.done_log = time.time(), start_step

    def add(self, skip: torch.Tensor, skipped_samples: torch.Tensor | None = None,
            loss: torch.Tensor | None = None) -> None:
        """Count one step: `skip` is 1.0 where the step was skipped, 0.0 where it was taken."""
        if skipped_samples is not None:
            self.skipped_samples += skipped_samples.float().sum()
        self.skipped_steps += skip
        self.streak = (self.streak + 1) * skip
        if loss is not None:
            self.losses.append(loss.detach().float().reshape(()))

    @property
    def pending(self) -> bool:
        """Whether kept losses wait to be read."""
        return bool(self.losses)

    def read(self, terms: dict[str, torch.Tensor], done: int) -> Interval:
        """The interval that ends with step `done`: `terms` and kept losses averaged over ranks, and the counts since
        the last read; the sums restart from zero."""
        n, k = len(terms), len(self.losses)
        packed = torch.stack([v.float().reshape(()).to(self.device) for v in terms.values()] + self.losses
                             + [self.skipped_samples])
        packed = dist.all_reduce_sum(packed)
        if dist.is_dist():
            packed = torch.cat([packed[:n + k] / dist.world_size(), packed[n + k:]])
        host = torch.cat([packed, torch.stack([self.skipped_steps, self.streak])]).tolist()
        self.skipped_samples.zero_()
        self.skipped_steps.zero_()
        self.losses = []
        now, steps = time.time(), done - self.done_log
        scalars = dict(zip(terms, host[:n]), skipped_samples=host[n + k],
                       images_per_s=self.batch * steps / max(now - self.t_log, 1e-9))
        self.t_log, self.done_log = now, done
        return Interval(scalars, steps, int(host[n + k + 1]), int(host[n + k + 2]), host[n:n + k])


def check_skipped_steps(interval: Interval, done: int, max_bad_steps: int, warn: Callable[[str], None],
                        checkpoint: Callable[[int], None], out: Path, hint: str = "optim.lr") -> None:
    """At a log step: warn of the interval's skipped steps; after `max_bad_steps` in a row, save the last good state
    (skipped steps leave the weights as they were after step `done - streak`) and stop the run."""
    skipped, streak = interval.skipped_steps, interval.streak
    if skipped:
        warn(f"step {done}: {skipped} of the last {interval.steps} steps skipped (non-finite loss or gradient), "
             f"the last {streak} in a row")
    if streak >= max_bad_steps:
        checkpoint(done - streak)
        raise OpenVTPError(f"{streak} consecutive non-finite steps up to step {done}; last good state saved in "
                           f"{out / 'checkpoints'} as step {done - streak} (lower {hint}?)")


def time_limit_message(limit_s: float, done: int, total: int) -> str:
    """What a run stopped by its time-limit safety net says (in the log and in its summary)."""
    return f"the train.time_limit_s={limit_s:g} safety net fired at step {done} of {total}"


def end_step(run: RunFolder, train: TrainOptions, done: int, log_due: bool, t_start: float, device: torch.device,
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
    due = bool(train.ckpt_every) and done % train.ckpt_every == 0
    if due or done == train.steps or out_of_time or stop:
        checkpoint(done)
    if stop:
        raise run.interrupted(stop, done)
    return time_limit_message(train.time_limit_s, done, train.steps) if out_of_time else None


@dataclass
class Outcome:
    """How the step loop ended."""
    done: int  # steps completed, counting those before a resume
    stopped: str | None  # the time-limit message when the safety net fired
    losses: list[float]  # each step's loss this call ran, when kept


def run_steps(run: RunFolder, train: TrainOptions, batches: Iterable[tuple[int, Any]],
              step_fn: Callable[[int, Any, bool], Step], checkpoint: Callable[[int], None], *, start: int,
              batch: int, device: torch.device, out: Path, warn: Callable[[str], None],
              after_step: Callable[[int, dict | None, Any], None] | None = None, keep_losses: bool = False,
              hint: str = "optim.lr") -> Outcome:
    """The step loop. `batches` yields (0-based step, batch); `step_fn(step, batch, log_due)` runs one optimiser step;
    `after_step(done, scalars, batch)` runs on every rank after each step, with the logged scalars at log steps and
    None at the others (a trainer's metrics, pictures, evaluations). A step logs when `done` is a multiple of
    `train.log_every` or the last step."""
    counters = StepCounters(device, start, batch)
    t_start, done, stopped, losses = time.time(), start, None, []
    for step, item in batches:
        done = step + 1
        log_due = done % train.log_every == 0 or done == train.steps
        result = step_fn(step, item, log_due)
        counters.add(result.skip, result.skipped_samples, result.loss if keep_losses else None)
        scalars = None
        if log_due:
            interval = counters.read(result.terms, done)
            losses += interval.losses
            scalars = dict(interval.scalars, **result.host)
            check_skipped_steps(interval, done, train.max_bad_steps, warn, checkpoint, out, hint)
        if after_step is not None:
            after_step(done, scalars, item)
        stopped = end_step(run, train, done, log_due, t_start, device, checkpoint)
        if stopped:
            warn(f"{stopped}: the run is incomplete, its figures are not the config's result")
            break
    if counters.pending:  # a time limit in one process stops at any step
        losses += counters.read({}, done).losses
    return Outcome(done, stopped, losses)
