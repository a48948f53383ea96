"""`finetune_decoder(cfg)`: stage 2, the pixel decoder alone against L1 + LPIPS + a PatchGAN.

The encoder and bottleneck of the stage-1 tokenizer are frozen, so the latent space (and
everything a diffusion model learns on it) stays exactly as pre-trained; only the decoder
sharpens. The adversarial terms switch on at `gan.start_step`, scaled by VQGAN's adaptive
weight. The data pipeline is pre-training's reconstruction view, so sources, determinism and
resume behave the same.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from openvtp.config.load import config_to_dict
from openvtp.config.schema import FinetuneDecoderConfig, PretrainConfig, ReconConfig, validate_finetune
from openvtp.data.registry import provider
from openvtp.errors import OpenVTPError
from openvtp.losses import ReconstructionLoss
from openvtp.losses.gan import PatchDiscriminator, adaptive_weight, generator_adv_loss, hinge_d_loss
from openvtp.models import VTPModel

from openvtp.runtime import dist
from openvtp.runtime.checkpoint import checkpointer, open_run_dir, resolve_resume, restore_checkpoint
from openvtp.runtime.logger import RunLogger
from openvtp.runtime.precision import training_autocast
from openvtp.runtime.run_folder import RunFolder
from openvtp.runtime.steps import Step, run_steps

from .data import build_loader, finish_views
from .figures import grid_due, loss_curves, recon_grid
from .optim import adamw, param_groups
from .schedules import warmup_cosine

log = logging.getLogger("openvtp.train")


def load_stage1(init: str) -> VTPModel:
    """The tokenizer to fine-tune: a pretrain run folder (its `tokenizer/`), a model folder or a hub id."""
    path = Path(init)
    if (path / "tokenizer" / "config.json").is_file():
        path = path / "tokenizer"
    model = VTPModel.from_pretrained(str(path))
    if model.pixel_decoder is None:
        raise OpenVTPError(f"{init} has no pixel decoder (train_reconstruction=false): nothing to fine-tune")
    return model


def reconstruction_data_config(cfg: FinetuneDecoderConfig, model: VTPModel) -> PretrainConfig:
    """Pre-training's config with only the reconstruction branch on: its loader yields `rec_images`."""
    pcfg = PretrainConfig(model=model.config, data=cfg.data, optim=cfg.optim, eval=cfg.eval, train=cfg.train,
                          recon=ReconConfig(weight=1.0, batch=cfg.train.batch))
    pcfg.clip.weight = 0.0
    pcfg.ssl.weight = 0.0
    return pcfg


class DecoderGAN(nn.Module):
    """Frozen encoder, trainable decoder, discriminator; the generator and discriminator losses."""

    def __init__(self, cfg: FinetuneDecoderConfig, model: VTPModel):
        super().__init__()
        self.cfg, self.model = cfg, model
        model.requires_grad_(False)
        model.pixel_decoder.requires_grad_(True)
        self.rec_loss = ReconstructionLoss(cfg.loss.l1_weight, cfg.loss.lpips_weight,
                                           lpips_backbone=cfg.loss.lpips_backbone)
        self.disc = PatchDiscriminator(3, cfg.gan.disc_channels, cfg.gan.disc_layers)

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.trunk.eval()  # frozen: no drop path, whatever the mode
        return self

    def to_disc(self, x: torch.Tensor) -> torch.Tensor:
        return self.rec_loss.to_lpips_range(x)  # normalised -> [-1, 1], the usual GAN input range

    def generator_terms(self, images: torch.Tensor, step: int, decoder: nn.Module | None = None
                        ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """`decoder`: the pixel decoder, or its DDP wrapper (so gradients are synchronised)."""
        with torch.no_grad():
            latents = self.model.get_reconstruction_latents(images)
        recon = (decoder or self.model.pixel_decoder)(latents)
        terms = self.rec_loss(recon, images)
        loss = terms["loss"]
        out = {"rec_loss": terms["loss"].detach(), "rec_l1": terms["l1"].detach(), "rec_lpips": terms["lpips"].detach()}
        g = self.cfg.gan
        if g.weight > 0 and step >= g.start_step:
            self.disc.requires_grad_(False)
            g_loss = generator_adv_loss(self.disc(self.to_disc(recon)))
            self.disc.requires_grad_(True)
            if g.adaptive:
                w = adaptive_weight(terms["loss"], g_loss, self.model.pixel_decoder.proj_out.weight,
                                    max_weight=g.max_adaptive_weight)
            else:
                w = torch.ones((), device=images.device)
            loss = loss + g.weight * w * g_loss
            out.update(g_loss=g_loss.detach(), adaptive_weight=w)
        out["loss"] = loss
        return out, recon.detach()

    def discriminator_terms(self, images: torch.Tensor, recon: torch.Tensor, disc: nn.Module | None = None
                            ) -> dict[str, torch.Tensor]:
        disc = disc or self.disc
        real, fake = disc(self.to_disc(images)), disc(self.to_disc(recon))
        return {"d_loss": hinge_d_loss(real, fake), "logits_real": real.detach().mean(),
                "logits_fake": fake.detach().mean()}


def finetune_step(cfg: FinetuneDecoderConfig, task: DecoderGAN, decoder: nn.Module, disc: nn.Module,
                  opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, images: torch.Tensor, step: int,
                  device: torch.device, log: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One step of stage 2: the decoder, then (once the GAN is on) the discriminator. `decoder` and `disc` are
    the modules or their DDP wrappers.

    Nothing here reads a device value on the host: an update whose loss (on any rank) or gradient is not finite is
    skipped on every rank by the fused optimisers' `found_inf`. Returns `skip` (1.0 where the decoder's or the
    discriminator's update was skipped) and, with `log`, the terms and the decoder's grad norm.
    """
    with training_autocast(device, cfg.train.precision):
        g_terms, recon = task.generator_terms(images, step, decoder)
    bad = (~torch.isfinite(g_terms["loss"].detach())).float()
    g_terms["loss"].backward()
    params = list(task.model.pixel_decoder.parameters())
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if cfg.optim.grad_clip > 0:
        torch.nn.utils.clip_grads_with_norm_(params, cfg.optim.grad_clip, grad_norm)
    skip = ((dist.all_reduce_sum(bad) > 0) | ~torch.isfinite(grad_norm)).float()
    opt_g.found_inf = skip
    opt_g.step()
    opt_g.zero_grad(set_to_none=True)
    terms = {k: v.detach().float() for k, v in g_terms.items()} if log else {}
    if cfg.gan.weight > 0 and step >= cfg.gan.start_step:
        with training_autocast(device, cfg.train.precision):
            d_terms = task.discriminator_terms(images, recon, disc)
        bad_d = (~torch.isfinite(d_terms["d_loss"].detach())).float()
        d_terms["d_loss"].backward()
        skip_d = (dist.all_reduce_sum(bad_d) > 0).float()
        opt_d.found_inf = skip_d
        opt_d.step()
        opt_d.zero_grad(set_to_none=True)
        skip = torch.maximum(skip, skip_d)
        if log:
            terms.update({k: v.detach().float() for k, v in d_terms.items()})
    if log:
        terms["grad_norm"] = grad_norm
    return skip, terms


def finetune_decoder(cfg: FinetuneDecoderConfig) -> dict:
    """Run stage 2; returns the summary (also written to out_dir/summary.json). The run folder, interrupts and
    early failures behave as in pre-training (`RunFolder`)."""
    info = dist.info(cfg.train.device)
    validate_finetune(cfg, info.world_size)
    with RunFolder(cfg.train.out_dir, "train.out_dir", info.rank == 0, info.device, cfg.train.resume) as run:
        return _finetune_decoder(cfg, info, run)


def _finetune_decoder(cfg: FinetuneDecoderConfig, info: dist.DistInfo, run: RunFolder) -> dict:
    model = load_stage1(cfg.init)
    out, main = Path(cfg.train.out_dir), info.rank == 0
    config_yaml = open_run_dir(out, cfg, main)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    task = DecoderGAN(cfg, model).to(info.device)
    opt_g = adamw(param_groups(model.pixel_decoder, cfg.optim.weight_decay), cfg.optim)
    # fused: its `found_inf` skips a non-finite update without a host read
    opt_d = torch.optim.Adam(task.disc.parameters(), lr=cfg.gan.disc_lr or cfg.optim.lr,
                             betas=tuple(cfg.gan.disc_betas), fused=True)
    parts = {"decoder": model.pixel_decoder, "discriminator": task.disc, "opt_g": opt_g, "opt_d": opt_d}
    start = 0
    resume_from = resolve_resume(out, cfg.train.resume)
    if resume_from is not None:
        start = restore_checkpoint(resume_from, parts)
        if main:
            log.info("resumed from %s at step %d", resume_from, start)
    ids = [info.device.index] if info.device.type == "cuda" else None
    decoder, disc = ((DDP(m, device_ids=ids) if info.world_size > 1 else m) for m in (model.pixel_decoder, task.disc))
    pcfg = reconstruction_data_config(cfg, model)
    loader = build_loader(pcfg, info.rank, info.world_size, start)
    logger = RunLogger(out, cfg.train.steps, start, enabled=main, desc="finetune-decoder")
    run.on_exit(logger.close)
    heldout, before = heldout_images(cfg, model) if main else (None, {})

    def state(at: int) -> dict:
        return {**{k: m.state_dict() for k, m in parts.items()}, "step": at, "config": config_to_dict(cfg)}

    def step_fn(step: int, batch: dict, log_due: bool) -> Step:
        lr = warmup_cosine(step, cfg.train.steps, cfg.optim.lr, cfg.optim.min_lr, cfg.optim.warmup_steps)
        for group in opt_g.param_groups:
            group["lr"] = lr
        images = batch["rec_images"]
        skip, terms = finetune_step(cfg, task, decoder, disc, opt_g, opt_d, images, step, info.device, log=log_due)
        return Step(skip, terms, {"lr": lr}, batch["skipped"].to(info.device))

    def after_step(done: int, scalars: dict | None, batch: dict) -> None:
        logger.step(done, scalars)
        if main and grid_due(cfg.train, done, batch):
            recon_grid(model, batch["rec_images"][:8], out / "images" / f"recon_{done:07d}.png")

    task.train()
    ended = run_steps(run, cfg.train, ((int(b["step"]), finish_views(b, info.device)) for b in loader), step_fn,
                      checkpointer(out, main, config_yaml, cfg.train.keep_last, state), start=start,
                      batch=cfg.train.batch, device=info.device, out=out, warn=logger.warn, after_step=after_step)
    summary: dict = {}
    if main:
        model.eval()
        model.save_pretrained(out / "tokenizer")
        loss_curves(logger.history, out / "loss_curves.png")
        summary = logger.finish(ended.done, ended.stopped, {"tokenizer": str(out / "tokenizer")})
        summary["stage1"] = cfg.init
        if heldout is not None:
            summary.update(heldout_after(model, heldout, before, cfg.eval.seed, out))
        logger.write_summary(summary)
    dist.barrier()
    return summary


def heldout_images(cfg: FinetuneDecoderConfig, model: VTPModel) -> tuple[torch.Tensor | None, dict]:
    """The embedded data's held-out images and stage 1's PSNR on them (other sources: none)."""
    if cfg.data.source != "embedded":
        return None, {}
    embedded = provider("embedded")
    heldout = embedded.heldout_images(model.config.image_size, cfg.eval.images, cfg.eval.seed)
    model.eval()
    return heldout, embedded.reconstruction_psnr(model, heldout)


def heldout_after(model: VTPModel, heldout: torch.Tensor, before: dict, seed: int, out: Path) -> dict:
    """What the summary records of the held-out images after stage 2, and their reconstruction picture."""
    from openvtp.eval.plots import image_grid

    embedded = provider("embedded")
    after = embedded.reconstruction_psnr(model, heldout)
    image_grid(*embedded.embedded_recon_examples(model, 16, seed=seed), out / "reconstructions.png", nrow=4)
    return {"heldout": {"images": len(heldout), "psnr_stage1": before["psnr"], "psnr": after["psnr"],
                        "psnr_patch_mean_baseline": after["psnr_patch_mean_baseline"]},
            "reconstructions": str(out / "reconstructions.png")}
