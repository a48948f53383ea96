"""The generation half of `openvtp demo --data`: latents of a labelled set's train images -> a class-conditional DiT
-> samples judged against real held-out images.

The embedded demo's recipe (`openvtp.demo.generation`) with the data's own pieces: the DiT conditions on the
set's classes; the judge is a classifier trained on its train split (`labelled_judge`); the real images are its
held-out split, in two fixed halves, so that no figure is measured on an image the judge or the DiT trained on:
the first half is judged (and reconstructed, and the DiT samples its labels, class for class), the second is the
reference every Frechet distance is measured against. Every figure comes in three rows: generated images,
reconstructions of real ones (the decoder's ceiling) and the real ones (the judge's ceiling and the sample-size
floor of the distance). With the standard FID Inception weights (`--fid-weights`) the Inception FID of each row
comes beside the judge's figures.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from openvtp.eval.fid import InceptionFeatures, feature_statistics, frechet_distance
from openvtp.generation.config import dit_kwargs
from openvtp.generation.latents import LatentDataset, extract_latents
from openvtp.generation.sample import sample
from openvtp.generation.train import build_dit_for_data, train_dit
from openvtp.runtime.checkpoint import write_json_atomic
from openvtp.runtime.steps import time_limit_message

from .generation import SIZE_KEYS, Laps, labelled_rows, prepare_generation, rounded
from .generation_config import GenerationDemoConfig
from .labelled import LabelledSet
from .labelled_judge import cached_judge, judged, predict

GRID_CLASSES = 20  # rows of the sample grid: the first classes, one row each
NO_INCEPTION = "skipped: no --fid-weights (the standard FID Inception weights file)"


class _Images(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": int(self.labels[i])}


def heldout_halves(data: LabelledSet, eval_samples: int, reference_images: int) -> tuple[slice, slice]:
    """(judged, reference) slices of the held-out split: up to `eval_samples` judged, the rest (up to
    `reference_images`) the reference; half each when the split is too small for both."""
    n = len(data.heldout_labels)
    judged_n = min(eval_samples, n // 2)
    return slice(0, judged_n), slice(judged_n, judged_n + min(reference_images, n - judged_n))


def inception_fids(weights: str, rows: dict[str, torch.Tensor], reference01: torch.Tensor) -> dict[str, float]:
    """FID of each row of images against the reference, in the standard FID Inception's pool features."""
    inception = InceptionFeatures(weights, "cpu", progress=False)
    ref = feature_statistics(inception.extract([reference01]).numpy())
    return {name: frechet_distance(*feature_statistics(inception.extract([x]).numpy()), *ref)
            for name, x in rows.items()}


def run_labelled_generation(tokenizer: str | Path, out_dir: str | Path, demo: GenerationDemoConfig,
                            data: LabelledSet, *, seed: int = 0, dit_overrides: Sequence[str] = (), mirror: bool = True,
                            fid_weights: str = "", judge_cache: str | Path | None = None,
                            progress: bool = True) -> dict:
    """Writes `out_dir/generation/` and returns its summary; the arguments are `run_generation_demo`'s, with the
    labelled set, whether its mirror images keep their class, and the FID Inception weights ('' skips that FID)."""
    start = time.perf_counter()
    out, cfg, vtp = prepare_generation(tokenizer, out_dir, data.num_classes, seed, progress, dit_overrides,
                                       demo.threads)
    size = vtp.config.image_size
    lap = Laps()

    # 1. latents of the first train images (the split is in a random order); flips are kept, the DiT may use them
    t = time.perf_counter()
    n = min(demo.num_images, len(data.train_labels))
    extract_latents(vtp, _Images(data.train_images[:n], data.train_labels[:n]), out / "latents", image_size=size,
                    batch_size=128, shard_size=n, seed=seed, device="cpu", progress=progress)
    t = lap("latents", t)

    # 2. the judge, trained on the train split; the same for every tokenizer and seed
    judge = cached_judge(judge_cache, data, demo.judge_steps, demo.judge_seed, demo.threads, mirror, progress)
    t = lap("judge", t)

    # 3. the held-out halves, and reconstructions of the judged one
    judged_part, reference_part = heldout_halves(data, demo.eval_samples, demo.reference_images)
    real01 = data.heldout_images[judged_part].float() / 255
    real_labels = data.heldout_labels[judged_part]
    reference01 = data.heldout_images[reference_part].float() / 255
    with torch.inference_mode():
        recon01 = torch.cat([vtp.decode(vtp.encode(chunk)).clamp(0, 1) for chunk in real01.split(128)])
    t = lap("reference images", t)

    # 4. the DiT, for its fixed number of steps
    shown = list(range(min(data.num_classes, GRID_CLASSES)))
    per_class = demo.grid_per_class or 8
    grid_labels = torch.tensor(shown).repeat_interleave(per_class)
    latent_shape = LatentDataset(out / "latents").latent_shape
    params = sum(p.numel() for p in build_dit_for_data(cfg, latent_shape)[0].parameters())
    history = train_dit(cfg)
    complete = len(history) == cfg.train.steps
    t = lap("dit", t)

    # 5. samples: the grid's, then one per judged real image, with its label
    s = cfg.sample
    npz = sample(out / "dit", out / "samples", replace(s, save_png=False, grid_images=0), tokenizer=vtp,
                 labels=torch.cat([grid_labels, real_labels]), device="cpu", progress=progress)
    images01 = torch.from_numpy(np.load(npz)["arr_0"]).permute(0, 3, 1, 2).float() / 255
    names = [data.classnames[c] for c in shown]
    grid = labelled_rows(images01[:len(grid_labels)], names, per_class, out / "samples_grid.png")
    gen01 = images01[len(grid_labels):]
    pools = {c: torch.nonzero(real_labels == c)[:, 0].tolist() for c in shown}
    blank = torch.ones_like(images01[0])
    recon_cells = [recon01[pools[c][k]] if k < len(pools[c]) else blank for c in shown for k in range(per_class)]
    labelled_rows(torch.stack(recon_cells), names, per_class, out / "reconstructions_grid.png")
    t = lap("sampling", t)

    # 6. figures: generated vs reconstructed vs real, all against the same reference half
    reference_feats, _ = predict(judge, reference01)
    rows = {"generated": gen01, "reconstructed": recon01, "real": real01}
    figures = {k: judged(judge, x, real_labels, reference_feats) for k, x in rows.items()}
    if fid_weights:
        for k, fid in inception_fids(fid_weights, rows, reference01).items():
            figures[k]["fid_inception"] = fid
    lap("figures", t)
    figures = {k: rounded(v) for k, v in figures.items()}
    summary = {
        "complete": complete,
        "condition": "class",
        "classes": data.classnames,
        "tokenizer": str(tokenizer),
        "seed": seed,
        "latents": {"images": n, "with_flips": True, "flips_used": cfg.data.flip, "shape": list(latent_shape)},
        "judge": {"steps": demo.judge_steps, "seed": demo.judge_seed, "features": judge.dim,
                  "heldout_acc": round(judge.heldout_acc, 4), "heldout_images": len(data.heldout_labels)},
        "dit": {"arch": cfg.model.arch, **{k: v for k, v in dit_kwargs(cfg.model).items() if k in SIZE_KEYS},
                "params": params, "steps": len(history), "steps_planned": cfg.train.steps,
                "batch": cfg.train.batch, "lr": cfg.optim.lr,
                "final_loss": round(float(np.mean(history[-20:])), 4) if history else None},
        "sampling": {"method": s.method, "num_steps": s.num_steps, "timestep_shift": s.timestep_shift,
                     "cfg_scale": s.cfg_scale, "samples": len(real_labels), "ema": s.use_ema},
        "figures": figures,
        "gap_to_reconstructed": {k: None if v is None else round(v - figures["reconstructed"][k], 4)
                                 for k, v in figures["generated"].items()},
        "chance": round(1 / data.num_classes, 4),
        "judged_images": len(real_labels),
        "reference_images": len(reference01),
        "inception": "FID Inception pool features (--fid-weights)" if fid_weights else NO_INCEPTION,
        "grid": str(grid),
        "timing": {"phases_s": lap.phases, "total_s": round(time.perf_counter() - start, 1)},
    }
    if not complete:
        summary["stopped"] = f"DiT: {time_limit_message(cfg.train.time_limit_s, len(history), cfg.train.steps)}"
    write_json_atomic(summary, out / "summary.json")
    return summary
