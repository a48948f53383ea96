"""What pre-training and stage 2 draw and evaluate: reconstruction grids, loss curves, held-out figures."""
from __future__ import annotations

from pathlib import Path

import torch

from openvtp.config.schema import PretrainConfig, TrainConfig
from openvtp.data.registry import provider
from openvtp.runtime.logger import RunLogger


def grid_due(train: TrainConfig, step: int, batch: dict) -> bool:
    """Whether `step` draws a reconstruction grid (the same answer on every rank)."""
    return bool(train.image_every) and step % train.image_every == 0 and "rec_images" in batch


@torch.no_grad()
def recon_grid(model, images: torch.Tensor, path: Path) -> None:
    from openvtp.eval.plots import image_grid

    was = model.training
    model.eval()
    rec = model.get_latents_decoded_images(model.get_reconstruction_latents(images))
    model.train(was)
    image_grid(model.denormalize(images).clamp(0, 1).float().cpu(), model.denormalize(rec).clamp(0, 1).float().cpu(),
               path, nrow=4)


def loss_curves(history: list[dict], path: Path) -> None:
    """One panel per loss (`*_loss`, `loss`) of the logged rows, against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in (history[0] if history else {}) if k.endswith("_loss") or k == "loss"]
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    steps = [r["step"] for r in history]
    for ax, key in zip(axes[0], keys):
        ax.plot(steps, [r.get(key, float("nan")) for r in history])
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def heldout_eval(model, cfg: PretrainConfig, logger: RunLogger, step: int, final: bool = False) -> dict:
    """The held-out figures of the embedded data (zero-shot, probes, PSNR), in TensorBoard; with `final` also the
    reconstruction picture, and what the summary records. Other data sources: nothing (`openvtp eval` measures)."""
    if cfg.data.source != "embedded":
        return {}
    from openvtp.eval.plots import image_grid

    embedded = provider("embedded")
    res = embedded.embedded_eval(model, n_images=cfg.eval.images, seed=cfg.eval.seed, zero_shot=cfg.clip.weight > 0)
    logger.scalars("eval", res, step)
    if not final:
        logger.bar.write(f"eval @ {step}: " + ", ".join(f"{k} {v:.2f}" for k, v in res.items() if k != "images"))
        return res
    orig, rec = embedded.embedded_recon_examples(model, 16, seed=cfg.eval.seed)
    image_grid(orig, rec, logger.out / "reconstructions.png", nrow=4)
    return {"heldout": res, "reconstructions": str(logger.out / "reconstructions.png")}
