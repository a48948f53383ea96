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
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from openvtp.config.load import config_to_dict
from openvtp.errors import OpenVTPError
from openvtp.generation import seeding
from openvtp.generation.config import GenerationConfig, dit_kwargs, validate
from openvtp.generation.latents import LatentDataset, load_latent_stats
from openvtp.losses.flow import FlowMatchingLoss, sample_timesteps
from openvtp.models.dit import LightningDiT
from openvtp.runtime import dist
from openvtp.runtime.precision import training_autocast
from openvtp.runtime.checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from openvtp.runtime.logger import time_limit_message
from openvtp.runtime.interrupt import quiet_worker
from openvtp.runtime.run_folder import RunFolder

log = logging.getLogger("openvtp.dit")


class StepBatches(Sampler):
    """Per step, this rank's slice of the global batch as (index, flip) pairs.

    The index stream is the concatenation of per-epoch permutations of the dataset (seeded by
    (seed, epoch)), so step s always reads positions [s*B, (s+1)*B) of it, whatever came before.
    """

    def __init__(self, n: int, global_batch: int, seed: int, start_step: int, steps: int, rank: int = 0,
                 world: int = 1):
        self.n, self.B, self.seed = n, global_batch, seed
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
        flip = torch.randint(0, 2, (self.B,), generator=seeding.generator(self.seed, seeding.FLIP, step))
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
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema = decay * ema + (1 - decay) * model, parameter by parameter (DiT's update)."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.mul_(decay).add_(pm.detach().float(), alpha=1 - decay)


def dit_loss(cfg: GenerationConfig, model: LightningDiT, train_model: torch.nn.Module, loss_fn: FlowMatchingLoss,
             x: torch.Tensor, y: torch.Tensor, step: int, device: torch.device, precision: str
             ) -> dict[str, torch.Tensor]:
    """The flow-matching terms of this rank's (x, y) at `step`. Timesteps, noise and label dropout are drawn for the
    whole global batch from (seed, step) and this rank takes its slice, so the run does not depend on the world size.
    `train_model` is `model` or its DDP wrapper."""
    world, rank = dist.world_size(), dist.rank()
    B = cfg.train.batch_size
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
             device: torch.device, precision: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One optimiser step: `dit_loss`, backward, clipping (or only measuring the norm), AdamW, EMA.
    Returns the terms and the grad norm, on the device."""
    terms = dit_loss(cfg, model, train_model, loss_fn, x, y, step, device, precision)
    terms["loss"].backward()
    max_norm = cfg.train.grad_clip if cfg.train.grad_clip > 0 else float("inf")  # inf: measure only
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)
    update_ema(ema, model, cfg.train.ema_decay)
    return terms, grad_norm


def _broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's flag on every rank, so that all ranks stop at the same step."""
    if not dist.is_dist():
        return flag
    t = torch.tensor([float(flag)], device=device)
    torch.distributed.broadcast(t, src=0)
    return bool(t.item())


def _config_yaml(cfg: GenerationConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def build_dit_for_data(cfg: GenerationConfig, latent_shape: tuple[int, int, int]) -> tuple[LightningDiT, dict]:
    """The model for latents of shape (C, h, w), and the kwargs that rebuild it from a checkpoint."""
    c, h, w = latent_shape
    if h != w:
        raise OpenVTPError(f"LightningDiT needs square latents, got {h}x{w}")
    kwargs = dict(input_size=h, in_channels=c, num_classes=cfg.data.num_classes, **dit_kwargs(cfg.model))
    if h % kwargs["patch_size"]:
        raise OpenVTPError(f"latent side {h} is not divisible by model patch size {kwargs['patch_size']}")
    return LightningDiT(**kwargs), kwargs


def train_dit(cfg: GenerationConfig, callback: Callable[[int, dict], None] | None = None) -> list[float]:
    """Train (or resume) a DiT as `cfg` says; returns the loss of every step this call ran.

    callback(step, terms) runs on every rank after each optimiser step (step counts completed steps).
    With train.time_limit_s > 0 the run stops after that long with a checkpoint; every rank
    stops at the same step (rank 0's clock decides). The run folder, interrupts and early failures
    behave as in pre-training (`RunFolder`).
    """
    info = dist.info(cfg.train.device)
    validate(cfg, dist.world_size())
    with RunFolder(cfg.train.run_dir, "train.run_dir", dist.is_main(), info.device, cfg.train.resume) as run:
        return _train_dit(cfg, info, run, callback)


def _train_dit(cfg: GenerationConfig, info: dist.DistInfo, run: RunFolder,
               callback: Callable[[int, dict], None] | None) -> list[float]:
    world, rank = dist.world_size(), dist.rank()
    tc, device = cfg.train, info.device
    run_dir = Path(tc.run_dir)
    if not cfg.data.latents_dir:
        raise OpenVTPError("config 'data.latents_dir' is empty: point it at the output of extract-latents")
    if not Path(cfg.data.latents_dir).is_dir():
        raise OpenVTPError(f"config 'data.latents_dir': {cfg.data.latents_dir} does not exist "
                           "(write it with openvtp extract-latents)")

    # data: latents normalised by the per-channel statistics
    stats = load_latent_stats(cfg.data.stats or cfg.data.latents_dir)
    data = LatentDataset(cfg.data.latents_dir, stats, cfg.data.latent_multiplier)
    top = int(data.labels().max())
    if top >= cfg.data.num_classes:
        raise OpenVTPError(f"latents have label {top} but data.num_classes={cfg.data.num_classes}")

    # model, EMA, optimiser
    torch.manual_seed(tc.seed)
    model, kwargs = build_dit_for_data(cfg, data.latent_shape)
    model.to(device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay,
                            fused=True)
    step = 0
    resume = resolve_resume(run_dir, tc.resume)
    if resume is not None:
        state = load_checkpoint(resume)
        if state.get("dit_kwargs") != kwargs:
            raise OpenVTPError(f"{resume} was trained with model {state.get('dit_kwargs')}, "
                               f"this config builds {kwargs}")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        step = int(state["step"])
        log.info("resumed from %s at step %d", resume, step)
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(_config_yaml(cfg))
    train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    model.train()

    loss_fn = FlowMatchingLoss(cfg.flow.timestep_sampling, cfg.flow.lognorm_mu, cfg.flow.lognorm_sigma,
                               cfg.flow.cos_weight)
    B = tc.batch_size
    sampler = StepBatches(len(data), B, tc.seed, step, tc.steps, rank, world)
    loader = DataLoader(data, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                        pin_memory=device.type == "cuda", worker_init_fn=quiet_worker)
    writer = None
    if tc.tensorboard and dist.is_main():
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"))

    def save(at: int) -> None:
        if dist.is_main():
            state = {
                "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                "step": at, "samples_seen": at * B, "rng": {"torch": torch.get_rng_state()},
                "config": config_to_dict(cfg), "dit_kwargs": kwargs, "latent_stats": stats,
            }
            path = save_checkpoint(run_dir, at, state, _config_yaml(cfg), tc.keep_last)
            log.info("saved %s", path)
        dist.barrier()

    history: list[float] = []
    t_start = time.perf_counter()
    bar = tqdm(total=tc.steps, initial=step, desc="train dit", unit="step",
               disable=not (tc.progress and dist.is_main()))
    run.on_exit(bar.close)
    if writer is not None:
        run.on_exit(writer.close)
    t_last, step_last = time.perf_counter(), step
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        terms, grad_norm = dit_step(cfg, model, train_model, ema, opt, loss_fn, x, y, step, device, tc.precision)
        step += 1
        # logging: terms averaged over ranks
        values = dist.all_reduce_mean(torch.stack([v.detach().float() for v in terms.values()])).tolist()
        terms = dict(zip(terms.keys(), values))
        terms["grad_norm"] = float(grad_norm)
        history.append(terms["loss"])
        bar.update(1)
        bar.set_postfix(loss=f"{terms['loss']:.4f}")
        if step % tc.log_every == 0 or step == tc.steps:
            now = time.perf_counter()
            rate = (step - step_last) / max(now - t_last, 1e-9)
            t_last, step_last = now, step
            terms_s = " ".join(f"{k} {v:.4f}" for k, v in terms.items())
            log.info("step %d/%d lr %.2e %s %.2f it/s %.1f img/s", step, tc.steps, tc.lr, terms_s, rate, rate * B)
            if writer is not None:
                for k, v in terms.items():
                    writer.add_scalar(f"train/{k}", v, step)
                writer.add_scalar("train/lr", tc.lr, step)
                writer.add_scalar("train/steps_per_s", rate, step)
        if callback is not None:
            callback(step, terms)
        out_of_time = tc.time_limit_s > 0 and _broadcast_flag(time.perf_counter() - t_start > tc.time_limit_s, device)
        stop = run.step_done()
        if (tc.ckpt_every and step % tc.ckpt_every == 0) or step == tc.steps or out_of_time or stop:
            save(step)
        if stop:
            raise run.interrupted(stop, step)
        if out_of_time and step < tc.steps:
            log.warning("warning: %s: the run is incomplete", time_limit_message(tc.time_limit_s, step, tc.steps))
            break
    bar.close()
    if writer is not None:
        writer.close()
    return history
