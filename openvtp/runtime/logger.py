"""What a run shows: progress bar, TensorBoard scalars, metrics.jsonl, PNG grids, loss curves, summary."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from openvtp.config.schema import PretrainConfig

from .checkpoint import write_json_atomic

log = logging.getLogger("openvtp.train")


def time_limit_message(limit_s: float, done: int, total: int) -> str:
    """What a run stopped by its time-limit safety net says (in the log and in its summary)."""
    return f"the train.time_limit_s={limit_s:g} safety net fired at step {done} of {total}"


class RunLogger:
    """Rank 0 logs; on other ranks every method is a no-op."""

    def __init__(self, out: Path, cfg: PretrainConfig, start_step: int, enabled: bool = True, desc: str = "pretrain"):
        self.out, self.cfg, self.enabled = out, cfg, enabled
        self.history: list[dict] = []
        self.t0 = time.time()
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        self.metrics_path = out / "metrics.jsonl"
        if self.metrics_path.exists():  # keep what came before the resumed step, drop the rest
            lines = [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]
            self.history = [r for r in lines if r["step"] <= start_step]
            self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in self.history))
        self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        self.bar = tqdm(total=cfg.train.steps, initial=start_step, desc=desc, dynamic_ncols=True,
                        mininterval=2.0)
        self.skipped = 0.0

    def close(self) -> None:
        """Close the progress bar and TensorBoard of a run that stops early."""
        if self.enabled:
            self.bar.close()
            self.tb.close()

    def warn(self, message: str) -> None:
        if self.enabled:
            self.bar.write(f"warning: {message}")

    def grid_due(self, step: int, batch: dict) -> bool:
        """Whether `step` draws a reconstruction grid (the same answer on every rank)."""
        return bool(self.cfg.train.image_every) and step % self.cfg.train.image_every == 0 and "rec_images" in batch

    def log_due(self, step: int) -> bool:
        """Whether `step` writes scalars (the same answer on every rank)."""
        return step % self.cfg.train.log_every == 0 or step == self.cfg.train.steps

    def step(self, step: int, scalars: dict[str, float] | None, model, batch: dict) -> None:
        """Advance the bar; write `scalars`, which the loops pass at log steps (None at the others). Their
        skipped_samples are those since the last log step; the written ones are the run's total."""
        if not self.enabled:
            return
        self.bar.update(1)
        if scalars is not None:
            self.skipped += scalars.pop("skipped_samples", 0.0)
            scalars["skipped_samples"] = self.skipped
            for k, v in scalars.items():
                self.tb.add_scalar(f"train/{k}", v, step)
            record = {"step": step, "time_s": round(time.time() - self.t0, 2), **scalars}
            self.history.append(record)
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            shown = {k: v for k, v in scalars.items() if k.endswith("_loss") or k == "loss"}
            self.bar.set_postfix({**{k.replace("_loss", ""): f"{v:.3f}" for k, v in shown.items()},
                                  "img/s": f"{scalars['images_per_s']:.0f}"}, refresh=False)
        if self.grid_due(step, batch):
            self.recon_grid(model, batch["rec_images"][:8], self.out / "images" / f"recon_{step:07d}.png")

    @torch.no_grad()
    def recon_grid(self, model, images: torch.Tensor, path: Path) -> None:
        from openvtp.eval.plots import image_grid

        was = model.training
        model.eval()
        rec = model.get_latents_decoded_images(model.get_reconstruction_latents(images))
        model.train(was)
        image_grid(model.denormalize(images).clamp(0, 1).float().cpu(), model.denormalize(rec).clamp(0, 1).float().cpu(),
                   path, nrow=4)

    def quick_eval(self, step: int, model, cfg: PretrainConfig) -> dict:
        if not self.enabled or cfg.data.source != "embedded":
            return {}
        from openvtp.eval.embedded import embedded_eval

        res = embedded_eval(model, n_images=cfg.eval.images, seed=cfg.eval.seed, zero_shot=cfg.clip.weight > 0)
        for k, v in res.items():
            self.tb.add_scalar(f"eval/{k}", v, step)
        self.bar.write(f"eval @ {step}: " + ", ".join(f"{k} {v:.2f}" for k, v in res.items() if k != "images"))
        return res

    def plot_losses(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        keys = [k for k in (self.history[0] if self.history else {}) if k.endswith("_loss") or k == "loss"]
        if not keys:
            return
        fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
        steps = [r["step"] for r in self.history]
        for ax, key in zip(axes[0], keys):
            ax.plot(steps, [r.get(key, float("nan")) for r in self.history])
            ax.set_title(key)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)

    def finish_basic(self, steps_done: int, stopped: str | None = None) -> dict:
        """Close the bar, draw the loss curves; the summary's common part.

        `complete` says whether the run made all `train.steps`; a run stopped early by the time-limit
        safety net says why in `stopped`, and its figures are not the config's result.
        """
        self.bar.close()
        self.plot_losses(self.out / "loss_curves.png")
        summary: dict = {"complete": steps_done >= self.cfg.train.steps, "steps": steps_done,
                         "tokenizer": str(self.out / "tokenizer"),
                         "timing": {"train_s": round(time.time() - self.t0, 1)}}
        if stopped:
            summary["stopped"] = stopped
        if self.history:
            summary["final_losses"] = {k: v for k, v in self.history[-1].items() if k.endswith("_loss") or k == "loss"}
        return summary

    def write_summary(self, summary: dict) -> None:
        write_json_atomic(summary, self.out / "summary.json")
        self.tb.close()

    def finish(self, model, cfg: PretrainConfig, steps_done: int, stopped: str | None = None) -> dict:
        summary = self.finish_basic(steps_done, stopped)
        summary["objectives"] = {k: w for k, w in (("clip", cfg.clip.weight), ("ssl", cfg.ssl.weight),
                                                   ("rec", cfg.recon.weight)) if w > 0}
        if cfg.data.source == "embedded":
            from openvtp.eval.embedded import embedded_eval, embedded_recon_examples
            from openvtp.eval.plots import image_grid

            summary["heldout"] = embedded_eval(model, n_images=cfg.eval.images, seed=cfg.eval.seed,
                                               zero_shot=cfg.clip.weight > 0)
            orig, rec = embedded_recon_examples(model, 16, seed=cfg.eval.seed)
            image_grid(orig, rec, self.out / "reconstructions.png", nrow=4)
            summary["reconstructions"] = str(self.out / "reconstructions.png")
            for k, v in summary["heldout"].items():
                self.tb.add_scalar(f"eval/{k}", v, steps_done)
        self.write_summary(summary)
        return summary
