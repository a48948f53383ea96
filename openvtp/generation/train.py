"""Training a LightningDiT on extracted latents with flow matching (LightningDiT's recipe as VTP sets it).

AdamW (lr 2e-4, betas (0.9, 0.95), no weight decay, constant lr), EMA of the weights, bf16
autocast on GPU and fp32 on CPU, DDP under torchrun, atomic checkpoints with exact resume.

Every random draw of a step (which latents, which flip, t, noise, label drops) is a function of
(seed, step) for the whole global batch, and each rank takes its slice: a resumed run continues
with the losses an uninterrupted run would have had, and the number of processes sharing the
batch does not change them (up to reduction order).
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from openvtp.config.load import config_to_dict
from openvtp.errors import OpenVTPError
from openvtp.generation import seeding
from openvtp.generation.config import GenerationConfig, dit_kwargs, validate
from openvtp.generation.latents import LatentDataset, load_latent_stats
from openvtp.losses.flow import FlowMatchingLoss, sample_timesteps
from openvtp.models.dit import LightningDiT
from openvtp.runtime import dist
from openvtp.runtime.checkpoint import checkpointer, load_checkpoint, open_run_dir, resolve_resume
from openvtp.runtime.interrupt import quiet_worker
from openvtp.runtime.logger import RunLogger
from openvtp.runtime.precision import training_autocast
from openvtp.runtime.run_folder import RunFolder
from openvtp.runtime.steps import Step, run_steps

log = logging.getLogger("openvtp.dit")


class StepBatches(Sampler):
    """Per step, this rank's slice of the global batch as (index, flip) pairs.

    The index stream is the concatenation of per-epoch permutations of the dataset (seeded by
    (seed, epoch)), so step s always reads positions [s*B, (s+1)*B) of it, whatever came before.
    """

    def __init__(self, n: int, global_batch: int, seed: int, start_step: int, steps: int, rank: int = 0,
                 world: int = 1, flip: bool = True):
        self.n, self.B, self.seed, self.flip = n, global_batch, seed, flip
        self.start, self.steps = start_step, steps
        self.rank, self.local = rank, global_batch // world
        self._perm: dict[int, torch.Tensor] = {}

    def _epoch(self, e: int) -> torch.Tensor:
        if e not in self._perm:
            self._perm = {k: v for k, v in self._perm.items() if k >= e - 1}
            self._perm[e] = torch.randperm(self.n, generator=seeding.generator(self.seed, seeding.DATA, e))
        return self._perm[e]

    def batch(self, step: int) -> list[tuple[int, bool]]:
        pos = torch.arange(step * self.B, (step + 1) * self.B)
        idx = self._indices(pos)
        flip = torch.randint(0, 2, (self.B,), generator=seeding.generator(self.seed, seeding.FLIP, step)) * self.flip
        sl = slice(self.rank * self.local, (self.rank + 1) * self.local)
        return list(zip(idx[sl].tolist(), flip[sl].bool().tolist()))

    def _indices(self, pos: torch.Tensor) -> torch.Tensor:
        epochs = pos // self.n
        out = torch.empty_like(pos)
        for e in epochs.unique().tolist():
            m = epochs == e
            out[m] = self._epoch(e)[pos[m] % self.n]
        return out

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        for step in range(self.start, self.steps):
            yield self.batch(step)

    def __len__(self) -> int:
        return max(0, self.steps - self.start)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float, skip: torch.Tensor | None = None) -> None:
    """ema = decay * ema + (1 - decay) * model, parameter by parameter (DiT's update); where `skip` (a 0-dim tensor)
    is 1, the EMA stays as it is, decided on the device."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        new = torch.add(pe * decay, pm.detach().float(), alpha=1 - decay)
        pe.copy_(new if skip is None else torch.where(skip > 0, pe, new))


def dit_loss(cfg: GenerationConfig, model: LightningDiT, train_model: torch.nn.Module, loss_fn: FlowMatchingLoss,
             x: torch.Tensor, y: torch.Tensor, step: int, device: torch.device, precision: str
             ) -> dict[str, torch.Tensor]:
    """The flow-matching terms of this rank's (x, y) at `step`. Timesteps, noise and label dropout are drawn for the
    whole global batch from (seed, step) and this rank takes its slice, so the run does not depend on the world size.
    `train_model` is `model` or its DDP wrapper."""
    world, rank = dist.world_size(), dist.rank()
    B = cfg.train.batch
    b = B // world
    g = seeding.generator(cfg.train.seed, seeding.NOISE, step, device)
    t_all = sample_timesteps(B, cfg.flow.timestep_sampling, cfg.flow.lognorm_mu, cfg.flow.lognorm_sigma, g)
    noise_all = torch.randn((B, *x.shape[1:]), generator=g, device=device)
    drop_all = torch.rand(B, generator=g, device=device) < model.class_dropout_prob
    sl = slice(rank * b, (rank + 1) * b)
    y = torch.where(drop_all[sl], torch.full_like(y, model.null_class), y)
    with training_autocast(device, precision):
        return loss_fn(train_model, x, y, t=t_all[sl], noise=noise_all[sl])


def dit_step(cfg: GenerationConfig, model: LightningDiT, train_model: torch.nn.Module, ema: torch.nn.Module,
             opt: torch.optim.Optimizer, loss_fn: FlowMatchingLoss, x: torch.Tensor, y: torch.Tensor, step: int,
             device: torch.device, precision: str) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """One optimiser step: `dit_loss`, backward, clipping (or only measuring the norm), AdamW, EMA.

    Returns the terms, the grad norm and `skip`, on the device: a step whose loss (on any rank) or gradient is not
    finite leaves weights, moments and EMA as they were on every rank (the fused AdamW's `found_inf`), without a
    host read."""
    terms = dit_loss(cfg, model, train_model, loss_fn, x, y, step, device, precision)
    bad = (~torch.isfinite(terms["loss"].detach())).float()
    terms["loss"].backward()
    max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")  # inf: measure only
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    skip = ((dist.all_reduce_sum(bad) > 0) | ~torch.isfinite(grad_norm)).float()
    opt.found_inf = skip
    opt.step()
    opt.zero_grad(set_to_none=True)
    update_ema(ema, model, cfg.train.ema_decay, skip)
    return terms, grad_norm, skip


def build_dit_for_data(cfg: GenerationConfig, latent_shape: tuple[int, int, int]) -> tuple[LightningDiT, dict]:
    """The model for latents of shape (C, h, w), and the kwargs that rebuild it from a checkpoint."""
    c, h, w = latent_shape
    if h != w:
        raise OpenVTPError(f"LightningDiT needs square latents, got {h}x{w}")
    kwargs = dict(input_size=h, in_channels=c, num_classes=cfg.data.num_classes, **dit_kwargs(cfg.model))
    if h % kwargs["patch_size"]:
        raise OpenVTPError(f"latent side {h} is not divisible by model patch size {kwargs['patch_size']}")
    return LightningDiT(**kwargs), kwargs


def train_dit(cfg: GenerationConfig, callback: Callable[[int, dict | None], None] | None = None) -> list[float]:
    """Train (or resume) a DiT as `cfg` says; returns the loss of every step this call ran (averaged over ranks,
    read from the device once per `train.log_every` steps).

    callback(step, scalars) runs on every rank after each optimiser step (step counts completed steps; scalars are
    the logged ones at log steps, None at the others). Checkpoints, signals, the time limit and non-finite steps
    behave as in pre-training (`openvtp.runtime.steps`, `RunFolder`).
    """
    info = dist.info(cfg.train.device)
    validate(cfg, dist.world_size())
    with RunFolder(cfg.train.out_dir, "train.out_dir", dist.is_main(), info.device, cfg.train.resume) as run:
        return _train_dit(cfg, info, run, callback)


def _train_dit(cfg: GenerationConfig, info: dist.DistInfo, run: RunFolder,
               callback: Callable[[int, dict | None], None] | None) -> list[float]:
    tc, device, main = cfg.train, info.device, info.rank == 0
    out = Path(tc.out_dir)
    data, stats = latent_data(cfg)
    torch.manual_seed(tc.seed)
    model, kwargs = build_dit_for_data(cfg, data.latent_shape)
    model.to(device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                            weight_decay=cfg.optim.weight_decay,
                            fused=True)
    start = resume_dit(cfg, out, kwargs, model, ema, opt)
    config_yaml = open_run_dir(out, cfg, main)
    train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if info.world_size > 1 else model
    model.train()
    loss_fn = FlowMatchingLoss(cfg.flow.timestep_sampling, cfg.flow.lognorm_mu, cfg.flow.lognorm_sigma,
                               cfg.flow.cos_weight)
    sampler = StepBatches(len(data), tc.batch, tc.seed, start, tc.steps, info.rank, info.world_size, cfg.data.flip)
    loader = DataLoader(data, batch_sampler=sampler, num_workers=cfg.data.workers,
                        pin_memory=device.type == "cuda", worker_init_fn=quiet_worker)
    logger = RunLogger(out, tc.steps, start, enabled=main, desc="train dit", tensorboard=tc.tensorboard,
                       progress=tc.progress)
    run.on_exit(logger.close)

    def state(at: int) -> dict:
        return {"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(), "step": at,
                "samples_seen": at * tc.batch, "rng": {"torch": torch.get_rng_state()},
                "config": config_to_dict(cfg), "dit_kwargs": kwargs, "latent_stats": stats}

    def step_fn(step: int, batch, log_due: bool) -> Step:
        x, y = (t.to(device, non_blocking=True) for t in batch)
        terms, grad_norm, skip = dit_step(cfg, model, train_model, ema, opt, loss_fn, x, y, step, device,
                                          tc.precision)
        terms = {k: v.detach() for k, v in terms.items()}
        return Step(skip, dict(terms, grad_norm=grad_norm) if log_due else {}, {"lr": cfg.optim.lr}, loss=terms["loss"])

    def after_step(done: int, scalars: dict | None, batch) -> None:
        logger.step(done, scalars)
        if callback is not None:
            callback(done, scalars)

    ended = run_steps(run, tc, enumerate(loader, start), step_fn,
                      checkpointer(out, main, config_yaml, tc.keep_last, state), start=start,
                      batch=tc.batch, device=device, out=out, warn=logger.warn, after_step=after_step,
                      keep_losses=True, hint="optim.lr")
    logger.close()
    return ended.losses


def latent_data(cfg: GenerationConfig) -> tuple[LatentDataset, dict]:
    """The latents, normalised by their per-channel statistics, and those statistics; checked against the config."""
    if not cfg.data.latents_dir:
        raise OpenVTPError("config 'data.latents_dir' is empty: point it at the output of extract-latents")
    if not Path(cfg.data.latents_dir).is_dir():
        raise OpenVTPError(f"config 'data.latents_dir': {cfg.data.latents_dir} does not exist "
                           "(write it with openvtp extract-latents)")
    stats = load_latent_stats(cfg.data.stats or cfg.data.latents_dir)
    data = LatentDataset(cfg.data.latents_dir, stats, cfg.data.latent_multiplier)
    top = int(data.labels().max())
    if top >= cfg.data.num_classes:
        raise OpenVTPError(f"latents have label {top} but data.num_classes={cfg.data.num_classes}")
    return data, stats


def resume_dit(cfg: GenerationConfig, out: Path, kwargs: dict, model: LightningDiT, ema: torch.nn.Module,
               opt: torch.optim.Optimizer) -> int:
    """Load the checkpoint `train.resume` names into model, EMA, optimiser and the torch RNG; the step it was at
    (0 for a fresh run)."""
    resume = resolve_resume(out, cfg.train.resume)
    if resume is None:
        return 0
    state = load_checkpoint(resume)
    if state.get("dit_kwargs") != kwargs:
        raise OpenVTPError(f"{resume} was trained with model {state.get('dit_kwargs')}, this config builds {kwargs}")
    model.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    log.info("resumed from %s at step %d", resume, int(state["step"]))
    return int(state["step"])
