"""`finetune_decoder(cfg)`: stage 2, the pixel decoder alone against L1 + LPIPS + a PatchGAN.

The encoder and bottleneck of the stage-1 tokenizer are frozen, so the latent space (and
everything a diffusion model learns on it) stays exactly as pre-trained; only the decoder
sharpens. The adversarial terms switch on at `gan.start_step`, scaled by VQGAN's adaptive
weight. The data pipeline is pre-training's reconstruction view, so sources, determinism and
resume behave the same.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from openvtp.config.load import config_to_dict, save_config
from openvtp.config.schema import FinetuneDecoderConfig, PretrainConfig, ReconConfig, validate_finetune
from openvtp.errors import OpenVTPError
from openvtp.losses import ReconstructionLoss
from openvtp.losses.gan import PatchDiscriminator, adaptive_weight, generator_adv_loss, hinge_d_loss
from openvtp.models import VTPModel

from . import dist
from .checkpoint import resolve_resume, restore_checkpoint, save_checkpoint
from .data import build_loader
from .logger import RunLogger, time_limit_message
from .loop import precision_context
from .optim import adamw, param_groups
from .run_folder import RunFolder
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


def finetune_decoder(cfg: FinetuneDecoderConfig) -> dict:
    """Run stage 2; returns the summary (also written to out_dir/summary.json). The run folder, interrupts and
    early failures behave as in pre-training (`RunFolder`)."""
    info = dist.init(cfg.train.device)
    validate_finetune(cfg, info.world_size)
    with RunFolder(cfg.train.out_dir, "train.out_dir", info.rank == 0, info.device, cfg.train.resume) as run:
        return _finetune_decoder(cfg, info, run)


def _finetune_decoder(cfg: FinetuneDecoderConfig, info: dist.DistInfo, run: RunFolder) -> dict:
    model = load_stage1(cfg.init)
    out = Path(cfg.train.out_dir)
    main = info.rank == 0
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    dist.barrier()

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    task = DecoderGAN(cfg, model).to(info.device)
    opt_g = adamw(param_groups(model.pixel_decoder, cfg.optim.weight_decay), cfg.optim)
    disc_lr = cfg.gan.disc_lr or cfg.optim.lr
    opt_d = torch.optim.Adam(task.disc.parameters(), lr=disc_lr, betas=tuple(cfg.gan.disc_betas))
    start = 0
    resume_from = resolve_resume(out, cfg.train.resume)
    if resume_from is not None:
        start = restore_checkpoint(resume_from, {"decoder": model.pixel_decoder, "discriminator": task.disc,
                                                  "opt_g": opt_g, "opt_d": opt_d})
        if main:
            log.info("resumed from %s at step %d", resume_from, start)

    ddp = info.world_size > 1
    ids = [info.device.index] if info.device.type == "cuda" else None
    decoder = DDP(model.pixel_decoder, device_ids=ids) if ddp else model.pixel_decoder
    disc = DDP(task.disc, device_ids=ids) if ddp else task.disc
    pcfg = reconstruction_data_config(cfg, model)
    loader = build_loader(pcfg, info.rank, info.world_size, start)
    logger = RunLogger(out, pcfg, start, enabled=main, desc="finetune-decoder")
    run.on_exit(logger.close)
    config_yaml = (out / "config.yaml").read_text() if main else ""
    heldout, before = None, {}
    if main and cfg.data.source == "embedded":
        from openvtp.data.scenes import CaptionedScenes
        from openvtp.eval.embedded import reconstruction_psnr, stack_scenes

        heldout = stack_scenes(CaptionedScenes("heldout", size=model.config.image_size, length=cfg.eval.images,
                                               seed=cfg.eval.seed), cfg.eval.images)["images"]
        model.eval()
        before = reconstruction_psnr(model, heldout)

    def checkpoint(at: int) -> None:
        if main:
            save_checkpoint(out, at, {"decoder": model.pixel_decoder.state_dict(), "discriminator": task.disc.state_dict(),
                                      "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "step": at,
                                      "config": config_to_dict(cfg)}, config_yaml, cfg.train.keep_last)
        dist.barrier()

    t_start, step, stopped = time.time(), start, None
    task.train()
    for batch in loader:
        step = int(batch["step"])
        t0 = time.time()
        lr = warmup_cosine(step, cfg.train.steps, cfg.optim.lr, cfg.optim.min_lr, cfg.optim.warmup_steps)
        for group in opt_g.param_groups:
            group["lr"] = lr
        images = batch["rec_images"].to(info.device, non_blocking=True)
        with precision_context(info.device, cfg.train.precision):
            g_terms, recon = task.generator_terms(images, step, decoder)
        if not torch.isfinite(g_terms["loss"]):
            raise OpenVTPError(f"non-finite decoder loss at step {step}; last checkpoint in {out / 'checkpoints'}")
        g_terms["loss"].backward()
        grad_norm = (torch.nn.utils.clip_grad_norm_(model.pixel_decoder.parameters(), cfg.optim.grad_clip)
                     if cfg.optim.grad_clip > 0 else torch.tensor(0.0))
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)
        scalars = {k: v.float() for k, v in g_terms.items()}
        if cfg.gan.weight > 0 and step >= cfg.gan.start_step:
            with precision_context(info.device, cfg.train.precision):
                d_terms = task.discriminator_terms(images, recon, disc)
            d_terms["d_loss"].backward()
            opt_d.step()
            opt_d.zero_grad(set_to_none=True)
            scalars.update({k: v.float() for k, v in d_terms.items()})
        scalars = {k: dist.all_reduce_mean(v.detach()).item() for k, v in scalars.items()}
        scalars.update(lr=lr, grad_norm=float(grad_norm), images_per_s=cfg.train.batch / max(time.time() - t0, 1e-9),
                       skipped_samples=float(dist.all_reduce_sum(batch["skipped"].float()).item()))
        done = step + 1
        logger.step(done, scalars, model, batch)
        # ranks agree, or one would stop while the others wait in the next collective
        out_of_time = cfg.train.time_limit_s > 0 and dist.any_rank(time.time() - t_start > cfg.train.time_limit_s,
                                                                   info.device)
        stop = run.step_done()
        if done % cfg.train.ckpt_every == 0 or done == cfg.train.steps or out_of_time or stop:
            checkpoint(done)
        if stop:
            raise run.interrupted(stop, done)
        if out_of_time:
            stopped = time_limit_message(cfg.train.time_limit_s, done, cfg.train.steps)
            logger.warn(f"{stopped}: the run is incomplete, its figures are not the config's result")
            break

    summary: dict = {}
    if main:
        model.eval()
        model.save_pretrained(out / "tokenizer")
        summary = logger.finish_basic(step + 1 if step >= start else start, stopped)
        summary["stage1"] = cfg.init
        if heldout is not None:
            from openvtp.eval.embedded import embedded_recon_examples
            from openvtp.eval.plots import image_grid

            after = reconstruction_psnr(model, heldout)
            summary["heldout"] = {"images": len(heldout), "psnr_stage1": before["psnr"], "psnr": after["psnr"],
                                  "psnr_patch_mean_baseline": after["psnr_patch_mean_baseline"]}
            image_grid(*embedded_recon_examples(model, 16, seed=cfg.eval.seed), out / "reconstructions.png", nrow=4)
            summary["reconstructions"] = str(out / "reconstructions.png")
        logger.write_summary(summary)
    dist.barrier()
    dist.cleanup()
    return summary
