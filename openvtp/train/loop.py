"""`pretrain(cfg)`: the VTP pre-training loop, from a single CPU process to torchrun DDP or FSDP.

Order of work: validate config -> data -> model + objectives -> optimizer -> (resume) ->
steps -> checkpoints -> exported tokenizer, pictures and summary in `train.out_dir`.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from openvtp.config.load import config_to_dict
from openvtp.config.schema import PretrainConfig, validate
from openvtp.losses.ibot import mask_index
from openvtp.models import VTPModel
from openvtp.runtime import dist
from openvtp.runtime.checkpoint import checkpointer, open_run_dir, resolve_resume
from openvtp.runtime.logger import RunLogger
from openvtp.runtime.precision import training_autocast
from openvtp.runtime.run_folder import RunFolder
from openvtp.runtime.steps import Outcome, Step, run_steps

from . import parallel
from .data import build_loader, finish_views
from .figures import grid_due, heldout_eval, loss_curves, recon_grid
from .optim import adamw, clip_gradients, pretrain_param_groups, set_schedule, total_norm
from .schedules import cosine, warmup_cosine
from .task import PretrainTask

log = logging.getLogger("openvtp.train")

def split_batch(batch: dict, n: int) -> list[dict]:
    """Micro-batches for gradient accumulation (crops are stacked crop-major on dim 1), on the host, each with
    the flat positions of its masked patches (`ssl_mask_index`) so that no device waits to learn their number."""
    parts = [batch] if n == 1 else _split(batch, n)
    for part in parts:
        if "ssl_masks" in part:
            part["ssl_mask_index"] = mask_index(part["ssl_masks"])
    return parts


def _split(batch: dict, n: int) -> list[dict]:
    parts: list[dict] = [{} for _ in range(n)]
    for key, value in batch.items():
        if value.ndim == 0:
            chunks = [value] * n
        elif key.startswith(("ssl_globals", "ssl_locals")):  # the crops, raw or finished, and their plans
            chunks = value.chunk(n, dim=1)
        elif key == "ssl_masks":
            g = batch.get("ssl_globals", batch.get("ssl_globals_raw")).shape[0]
            chunks = [c.flatten(0, 1) for c in value.view(g, -1, value.shape[-1]).chunk(n, dim=1)]
        else:
            chunks = value.chunk(n, dim=0)
        for part, chunk in zip(parts, chunks):
            part[key] = chunk
    return parts


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 9_176 + rank * 7_919) % (2**63 - 1)


@dataclass
class StepOutput:
    """What one optimiser step leaves on the host (schedules) and on the device (everything else)."""
    lr: float
    weight_decay: float
    momentum: float
    loss: torch.Tensor  # mean over the micro-batches
    skip: torch.Tensor  # 1.0 where the step was skipped (non-finite), 0.0 where it was taken
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # with `log`: every term and grad norm


def train_step(cfg: PretrainConfig, task: PretrainTask, wrapped: nn.Module, opt: torch.optim.Optimizer,
               micro: list[dict], step: int, info: dist.DistInfo, log: bool = False) -> StepOutput:
    """One optimiser step over `micro` (this rank's micro-batches, on the device): schedules, forward and
    backward (gradients sync on the last micro-batch), clipping, AdamW, logit-scale clamp, EMA teacher.

    Nothing here reads a device value on the host. `log` also collects the terms, grad norms and SSL health.
    """
    total = cfg.train.steps
    # schedules are pure functions of the step: resume is exact
    lr = warmup_cosine(step, total, cfg.optim.lr, cfg.optim.min_lr, cfg.optim.warmup_steps)
    wd = cosine(step, total, cfg.optim.weight_decay, cfg.optim.weight_decay_end)
    set_schedule(opt, lr, wd, last_layer_frozen=step < cfg.ssl.freeze_last_layer_steps)
    if task.ssl is not None:
        task.ssl.track_health = log
    torch.manual_seed(step_seed(cfg.train.seed, step, info.rank))
    terms_sum: dict[str, torch.Tensor] = {}
    loss = torch.zeros((), device=info.device)
    nonfinite = torch.zeros((), device=info.device)
    for i, mb in enumerate(micro):
        with parallel.grad_sync(wrapped, i == len(micro) - 1), training_autocast(info.device, cfg.train.precision):
            terms = wrapped(mb, step)
        nonfinite = nonfinite + (~torch.isfinite(terms["loss"].detach())).float()
        loss = loss + terms["loss"].detach().float() / len(micro)
        (terms["loss"] / len(micro)).backward()
        if log:
            for k, v in terms.items():
                terms_sum[k] = terms_sum.get(k, 0) + v.detach().float() / len(micro)
    norms = clip_gradients(task, cfg.optim)
    grad_norm = total_norm(norms, info.device)
    # A step whose loss (on any rank) or gradient is not finite is skipped on every rank, decided on the device:
    # the fused AdamW kernel leaves parameters, moments and step count alone where `found_inf` is 1.
    skip = ((dist.all_reduce_sum(nonfinite) > 0) | ~torch.isfinite(grad_norm)).float()
    opt.found_inf = skip
    opt.step()
    opt.zero_grad(set_to_none=True)
    if task.clip is not None:
        with torch.no_grad():  # OpenCLIP: keep the learnable temperature in [0, log(max)]
            task.model.logit_scale.clamp_(0, math.log(cfg.clip.max_logit_scale))
    momentum = 0.0
    if task.ssl is not None:
        momentum = cosine(step, total, *cfg.ssl.momentum)
        task.ssl.update_teacher(task.model, momentum, keep=1.0 - skip)
    if log:
        terms_sum["grad_norm"] = grad_norm
        if cfg.optim.clip_mode == "module":
            terms_sum.update({f"grad_norm_{part}": n for part, n in norms.items()})
    return StepOutput(lr, wd, momentum, loss, skip, terms_sum)


def pretrain(cfg: PretrainConfig) -> dict:
    """Run pre-training; returns the final summary (also written to out_dir/summary.json).

    The run folder is locked for the run; SIGINT / SIGTERM stop it at a step boundary with a checkpoint
    (`Interrupted`), and a run that fails before its first step leaves the folder as it found it.
    """
    info = dist.info(cfg.train.device)
    validate(cfg, info.world_size)
    with RunFolder(cfg.train.out_dir, "train.out_dir", info.rank == 0, info.device, cfg.train.resume) as run:
        return _pretrain(cfg, info, run)


def _pretrain(cfg: PretrainConfig, info: dist.DistInfo, run: RunFolder) -> dict:
    out, main = Path(cfg.train.out_dir), info.rank == 0
    config_yaml = open_run_dir(out, cfg, main)
    task, wrapped, opt, start = _build(cfg, info, out)
    model, sharded = task.model, parallel.is_sharded(wrapped)
    loader = build_loader(cfg, info.rank, info.world_size, start, pin_memory=info.device.type == "cuda")
    logger = RunLogger(out, cfg.train.steps, start, enabled=main)
    run.on_exit(logger.close)

    def state(at: int) -> dict:
        task_state, opt_state = parallel.full_state_dicts(task, opt)
        return {"task": task_state, "optimizer": opt_state, "step": at, "config": config_to_dict(cfg)}

    def rank0_model() -> VTPModel:
        """The model rank 0 draws, evaluates and exports; under FSDP a gathered copy (call on every rank)."""
        return parallel.full_model(task, cfg.model, info.device) if sharded else model

    def batches():
        for batch in loader:
            micro = [finish_views(mb, info.device) for mb in split_batch(batch, cfg.optim.accum_steps)]
            yield int(batch["step"]), (micro, batch["skipped"])

    def step_fn(step: int, item, log_due: bool) -> Step:
        micro, skipped = item
        result = train_step(cfg, task, wrapped, opt, micro, step, info, log=log_due)
        host = dict(lr=result.lr, weight_decay=result.weight_decay)
        if task.ssl is not None:
            host["teacher_momentum"] = result.momentum
        return Step(result.skip, result.terms, host, skipped.to(info.device))

    def after_step(done: int, scalars: dict | None, item) -> None:
        micro = item[0]
        eval_due = bool(cfg.eval.every) and done % cfg.eval.every == 0
        shown = rank0_model() if grid_due(cfg.train, done, micro[0]) or eval_due else model
        logger.step(done, scalars)
        if main and grid_due(cfg.train, done, micro[0]):
            recon_grid(shown, micro[0]["rec_images"][:8], out / "images" / f"recon_{done:07d}.png")
        if eval_due and main:
            heldout_eval(shown, cfg, logger, done)

    task.train()
    ended = run_steps(run, cfg.train, batches(), step_fn, checkpointer(out, main, config_yaml, cfg.train.keep_last,
                                                                       state),
                      start=start, batch=cfg.train.batch, device=info.device, out=out, warn=logger.warn,
                      after_step=after_step)
    final = rank0_model()
    summary = _finish(cfg, final, logger, ended, out) if main else {}
    dist.barrier()
    return summary


def _build(cfg: PretrainConfig, info: dist.DistInfo, out: Path
           ) -> tuple[PretrainTask, nn.Module, torch.optim.Optimizer, int]:
    """The task (model and objectives) on the device, wrapped for DDP / FSDP, its optimiser, and the step to start
    from (a resumed checkpoint's)."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    task = PretrainTask(cfg, VTPModel(cfg.model)).to(info.device)
    wrapped = parallel.prepare(task, cfg.train, info.device)
    opt = adamw(pretrain_param_groups(task, cfg.optim), cfg.optim)
    start = 0
    resume_from = resolve_resume(out, cfg.train.resume)
    if resume_from is not None:
        start = parallel.restore(resume_from, task, opt)
        if info.rank == 0:
            log.info("resumed from %s at step %d", resume_from, start)
    return task, wrapped, opt, start


def _finish(cfg: PretrainConfig, final: VTPModel, logger: RunLogger, ended: Outcome, out: Path) -> dict:
    """Rank 0 after the last step: the tokenizer exported, loss curves, held-out figures, summary.json."""
    final.eval()
    final.save_pretrained(out / "tokenizer")
    loss_curves(logger.history, out / "loss_curves.png")
    summary = logger.finish(ended.done, ended.stopped, {"tokenizer": str(out / "tokenizer")})
    summary["objectives"] = {k: w for k, w in (("clip", cfg.clip.weight), ("ssl", cfg.ssl.weight),
                                               ("rec", cfg.recon.weight)) if w > 0}
    summary.update(heldout_eval(final, cfg, logger, ended.done, final=True))
    logger.write_summary(summary)
    return summary
