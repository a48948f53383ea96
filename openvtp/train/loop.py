"""`pretrain(cfg)`: the VTP pre-training loop, from a single CPU process to torchrun DDP or FSDP.

Order of work: validate config -> data -> model + objectives -> optimizer -> (resume) ->
steps -> checkpoints -> exported tokenizer, pictures and summary in `train.out_dir`.
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from openvtp.config.load import config_to_dict, save_config
from openvtp.config.schema import PretrainConfig, validate
from openvtp.errors import OpenVTPError
from openvtp.models import VTPModel

from . import dist, parallel
from .checkpoint import resolve_resume, save_checkpoint
from .data import build_loader
from .logger import RunLogger, time_limit_message
from .optim import adamw, clip_gradients, pretrain_param_groups, set_schedule, total_norm
from .run_folder import RunFolder
from .schedules import cosine, warmup_cosine
from .task import PretrainTask

log = logging.getLogger("openvtp.train")

def split_batch(batch: dict, n: int) -> list[dict]:
    """Micro-batches for gradient accumulation (crops are stacked crop-major on dim 1)."""
    if n == 1:
        return [batch]
    parts: list[dict] = [{} for _ in range(n)]
    for key, value in batch.items():
        if value.ndim == 0:
            chunks = [value] * n
        elif key in ("ssl_globals", "ssl_locals"):
            chunks = value.chunk(n, dim=1)
        elif key == "ssl_masks":
            g = batch["ssl_globals"].shape[0]
            chunks = [c.flatten(0, 1) for c in value.view(g, -1, value.shape[-1]).chunk(n, dim=1)]
        else:
            chunks = value.chunk(n, dim=0)
        for part, chunk in zip(parts, chunks):
            part[key] = chunk
    return parts


def precision_context(device: torch.device, precision: str):
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 9_176 + rank * 7_919) % (2**63 - 1)


def pretrain(cfg: PretrainConfig) -> dict:
    """Run pre-training; returns the final summary (also written to out_dir/summary.json).

    The run folder is locked for the run; SIGINT / SIGTERM stop it at a step boundary with a checkpoint
    (`Interrupted`), and a run that fails before its first step leaves the folder as it found it.
    """
    info = dist.init(cfg.train.device)
    validate(cfg, info.world_size)
    with RunFolder(cfg.train.out_dir, "train.out_dir", info.rank == 0, info.device, cfg.train.resume) as run:
        return _pretrain(cfg, info, run)


def _pretrain(cfg: PretrainConfig, info: dist.DistInfo, run: RunFolder) -> dict:
    out = Path(cfg.train.out_dir)
    main = info.rank == 0
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    dist.barrier()

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    model = VTPModel(cfg.model)
    task = PretrainTask(cfg, model).to(info.device)
    wrapped = parallel.prepare(task, cfg.train, info.device)
    sharded = parallel.is_sharded(wrapped)
    opt = adamw(pretrain_param_groups(task, cfg.optim), cfg.optim)
    start = 0
    resume_from = resolve_resume(out, cfg.train.resume)
    if resume_from is not None:
        start = parallel.restore(resume_from, task, opt)
        if main:
            log.info("resumed from %s at step %d", resume_from, start)
    loader = build_loader(cfg, info.rank, info.world_size, start)
    logger = RunLogger(out, cfg, start, enabled=main)
    run.on_exit(logger.close)

    total, bad_streak, step = cfg.train.steps, 0, start
    stopped = None
    t_start = time.time()
    config_yaml = (out / "config.yaml").read_text() if main else ""
    task.train()

    def checkpoint(at: int) -> None:
        task_state, opt_state = parallel.full_state_dicts(task, opt)
        if main:
            save_checkpoint(out, at, {"task": task_state, "optimizer": opt_state, "step": at,
                                      "config": config_to_dict(cfg)}, config_yaml, cfg.train.keep_last)
        dist.barrier()

    def rank0_model() -> VTPModel | None:
        """The model rank 0 draws, evaluates and exports; under FSDP a gathered copy (call on every rank)."""
        return parallel.full_model(task, cfg.model, info.device) if sharded else model

    for batch in loader:
        step = int(batch["step"])
        t0 = time.time()
        # schedules are pure functions of the step: resume is exact
        lr = warmup_cosine(step, total, cfg.optim.lr, cfg.optim.min_lr, cfg.optim.warmup_steps)
        wd = cosine(step, total, cfg.optim.weight_decay, cfg.optim.weight_decay_end)
        set_schedule(opt, lr, wd, last_layer_frozen=step < cfg.ssl.freeze_last_layer_steps)
        log_due = logger.log_due(step + 1)
        if task.ssl is not None:
            task.ssl.track_health = log_due
        torch.manual_seed(_step_seed(cfg.train.seed, step, info.rank))
        batch = {k: v.to(info.device, non_blocking=True) for k, v in batch.items()}
        # forward + backward per micro-batch; gradients sync on the last one
        micro = split_batch(batch, cfg.optim.accum_steps)
        terms_sum: dict[str, torch.Tensor] = {}
        finite = True
        for i, mb in enumerate(micro):
            with parallel.grad_sync(wrapped, i == len(micro) - 1), precision_context(info.device, cfg.train.precision):
                terms = wrapped(mb, step)
            ok = torch.isfinite(terms["loss"].detach()).float()
            if dist.all_reduce_sum(ok).item() < info.world_size:  # every rank must agree to skip
                finite = False
                break
            (terms["loss"] / len(micro)).backward()
            for k, v in terms.items():
                terms_sum[k] = terms_sum.get(k, 0) + v.detach().float() / len(micro)
        if not finite:
            opt.zero_grad(set_to_none=True)
            bad_streak += 1
            logger.warn(f"step {step}: non-finite loss, step skipped ({bad_streak} in a row)")
            if bad_streak >= cfg.train.max_bad_steps:
                checkpoint(step)
                raise OpenVTPError(f"{bad_streak} consecutive non-finite losses at step {step}; "
                                   f"last good state saved in {out / 'checkpoints'} (lower optim.lr?)")
            continue
        bad_streak = 0
        norms = clip_gradients(task, cfg.optim)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if task.clip is not None:
            with torch.no_grad():  # OpenCLIP: keep the learnable temperature in [0, log(max)]
                model.logit_scale.clamp_(0, math.log(cfg.clip.max_logit_scale))
        momentum = 0.0
        if task.ssl is not None:
            momentum = cosine(step, total, *cfg.ssl.momentum)
            task.ssl.update_teacher(model, momentum)

        # one collective and one host sync for every tensor scalar (FSDP holds the logit scale as a
        # 1-element vector); per-module norms only when logged
        terms_sum["grad_norm"] = total_norm(norms, info.device)
        if log_due and cfg.optim.clip_mode == "module":
            terms_sum.update({f"grad_norm_{part}": n for part, n in norms.items()})
        values = dist.all_reduce_mean(torch.stack([v.float().reshape(()).to(info.device)
                                                   for v in terms_sum.values()])).tolist()
        scalars = dict(zip(terms_sum, values))
        scalars.update(lr=lr, weight_decay=wd, images_per_s=cfg.train.batch / max(time.time() - t0, 1e-9),
                       skipped_samples=float(dist.all_reduce_sum(batch["skipped"].float()).item()))
        if task.ssl is not None:
            scalars["teacher_momentum"] = momentum
        done = step + 1
        eval_due = bool(cfg.eval.every) and done % cfg.eval.every == 0
        shown = rank0_model() if logger.grid_due(done, batch) or eval_due else model
        logger.step(done, scalars, shown, batch)
        if eval_due and main:
            logger.quick_eval(done, shown, cfg)
        del shown  # under FSDP a full copy of the model: not kept through the next step
        # ranks agree, or one would stop while the others wait in the next collective
        out_of_time = cfg.train.time_limit_s > 0 and dist.any_rank(time.time() - t_start > cfg.train.time_limit_s,
                                                                   info.device)
        stop = run.step_done()
        if done % cfg.train.ckpt_every == 0 or done == total or out_of_time or stop:
            checkpoint(done)
        if stop:
            raise run.interrupted(stop, done)
        if out_of_time:
            stopped = time_limit_message(cfg.train.time_limit_s, done, cfg.train.steps)
            logger.warn(f"{stopped}: the run is incomplete, its figures are not the config's result")
            break

    summary = {}
    final = rank0_model()
    if main:
        final.eval()
        final.save_pretrained(out / "tokenizer")
        summary = logger.finish(final, cfg, step + 1 if step >= start else start, stopped)
    dist.barrier()
    dist.cleanup()
    return summary
