"""The demo's generation half: latents of the embedded scenes -> a small class-conditional DiT -> judged samples.

Runs after the demo's pre-training and decoder fine-tuning, on CPU. Phases, in order: latent
extraction of embedded train scenes (and flips) with their statistics; the attribute judge (a
small CNN trained on real scenes, `attribute_probe`); a LightningDiT trained with flow matching
for a fixed number of steps; class-conditional samples as a grid (a row per shape, a group of
columns per colour) and as an ADM .npz; the figures. Every amount is fixed by the config
(`GenerationDemoConfig` and the `dit-demo` preset), so the figures do not depend on the machine's
speed. Every figure comes in three
rows so it can be read: generated images, reconstructions of real images (the tokenizer's
ceiling: a generator on its latents cannot do better) and the real images themselves (the
judge's own ceiling, and the sample-size floor of the Frechet distance).
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from openvtp.config.load import load_config
from openvtp.demo.scenes import COLOURS, SEEN_IDS, SHAPES
from openvtp.errors import OpenVTPError
from openvtp.demo.judge import (REFERENCE_SEED, cached_attribute_probe, generation_quality, render,
                                                reference_images)
from openvtp.generation.config import GenerationConfig, dit_kwargs, validate
from openvtp.demo.generation_config import GenerationDemoConfig, validate_demo
from openvtp.generation.latents import LatentDataset, extract_latents
from openvtp.generation.sample import sample, save_grid
from openvtp.generation.sources import open_source
from openvtp.generation.train import build_dit_for_data, train_dit
from openvtp.runtime.checkpoint import write_json_atomic
from openvtp.runtime.steps import time_limit_message

log = logging.getLogger("openvtp.demo.generation")
PRESET = "dit-demo"
REAL_SEED = REFERENCE_SEED + 1  # the real images whose figures the generated ones are read against
SIZE_KEYS = ("hidden_size", "depth", "num_heads", "patch_size")


def labelled_rows(images01: torch.Tensor, names: list[str], per_row: int, path: Path,
                   columns: list[str] | None = None) -> Path:
    """A PNG grid with one row per name, the name written at its left (and `columns` names above)."""
    save_grid(images01, path, per_row)
    grid = Image.open(path).convert("RGB")
    margin, top = 8 + 7 * max(len(n) for n in names), 14 if columns else 0
    canvas = Image.new("RGB", (grid.width + margin, grid.height + top), (255, 255, 255))
    canvas.paste(grid, (margin, top))
    draw = ImageDraw.Draw(canvas)
    row_h = (grid.height - 2) / len(names)
    for i, name in enumerate(names):
        draw.text((4, int(top + 2 + (i + 0.45) * row_h)), name, fill=(0, 0, 0))
    for j, name in enumerate(columns or []):
        draw.text((margin + 4 + int(j * (grid.width - 2) / len(columns)), 2), name, fill=(0, 0, 0))
    canvas.save(path)
    return path


def _grid_layout(condition: str, per_class: int) -> tuple[list[int | None], list[str], int, list[str] | None]:
    """Grid cells as class ids (None: an empty cell), row names, cells per row, column names.

    shape: one row per shape, per_class samples each. shape_colour: one row per shape, a group of
    cells per colour; pairs held out of training stay empty (their labels were never trained).
    """
    if condition == "shape":
        return [k for k in range(len(SHAPES)) for _ in range(per_class)], list(SHAPES), per_class, None
    seen = set(SEEN_IDS)
    cells = [s * len(COLOURS) + c if (s, c) in seen else None
             for s in range(len(SHAPES)) for c in range(len(COLOURS)) for _ in range(per_class)]
    return cells, list(SHAPES), len(COLOURS) * per_class, list(COLOURS)


def _classes(condition: str) -> tuple[list[int], list[str]]:
    """Class ids the demo samples and their names: the 7 shapes, or the (shape, colour) pairs seen in training."""
    if condition == "shape":
        return list(range(len(SHAPES))), list(SHAPES)
    return [s * len(COLOURS) + c for s, c in SEEN_IDS], [f"{COLOURS[c]} {SHAPES[s]}" for s, c in SEEN_IDS]


def prepare_generation(tokenizer: str | Path, out_dir: str | Path, num_classes: int, seed: int, progress: bool,
                       dit_overrides: Sequence[str], threads: int):
    """(out, DiT config, tokenizer) of a generation half: the config first, so that a bad override fails before
    any work; then `out` without an earlier run's latents, DiT and samples (maybe of another tokenizer)."""
    from openvtp.models.vtp import VTPModel

    out = Path(out_dir) / "generation"
    cfg = load_config(GenerationConfig, PRESET, [
        f"data.latents_dir={out / 'latents'}", f"data.tokenizer={tokenizer}", f"train.out_dir={out / 'dit'}",
        f"data.num_classes={num_classes}", f"train.seed={seed}", f"sample.seed={seed}", f"train.progress={progress}",
        *dit_overrides])
    validate(cfg)
    vtp = VTPModel.from_pretrained(tokenizer).eval()
    if not vtp.config.train_reconstruction:
        raise OpenVTPError(f"{tokenizer} has no pixel decoder: generation needs train_reconstruction=true")
    torch.set_num_threads(threads)
    for stale in ("latents", "dit", "samples"):
        shutil.rmtree(out / stale, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    return out, cfg, vtp


class Laps:
    """`t = lap("phase", t)`: logs and keeps the seconds since `t`, returns now (the next phase's start)."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}

    def __call__(self, name: str, since: float) -> float:
        self.phases[name] = round(time.perf_counter() - since, 1)
        log.info("generation demo: %s took %.0fs", name, self.phases[name])
        return time.perf_counter()


def rounded(figures: dict) -> dict:
    return {k: (None if v is None else round(float(v), 4)) for k, v in figures.items()}


def run_generation_demo(
    tokenizer: str | Path,
    out_dir: str | Path,
    demo: GenerationDemoConfig | None = None,
    *,
    seed: int = 0,
    dit_overrides: Sequence[str] = (),
    judge_cache: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Generation half of `openvtp demo`: writes `out_dir/generation/` and returns its summary.

    tokenizer: the exported VTP folder (e.g. runs/demo/decoder/tokenizer). demo: the amounts
    (latents, judge steps, judged samples; `GenerationDemoConfig`). seed: the latents' subset, the
    DiT's training and its samples. dit_overrides: dotted `dit-demo` preset overrides. The DiT trains
    for its preset's `train.steps`; its `train.time_limit_s` is only a safety net, and when it fires
    the summary says `"complete": false`. judge_cache: a folder where the judge is kept between calls
    (the same weights as training it again).
    """
    start = time.perf_counter()
    demo = demo or GenerationDemoConfig()
    validate_demo(demo)
    num_classes = len(SHAPES) * (len(COLOURS) if demo.condition == "shape_colour" else 1)
    out, cfg, vtp = prepare_generation(tokenizer, out_dir, num_classes, seed, progress, dit_overrides, demo.threads)
    size = vtp.config.image_size
    condition = demo.condition
    class_ids, class_names = _classes(condition)
    lap = Laps()

    # 1. latents of embedded train scenes and their flips, per-channel statistics
    t = time.perf_counter()
    dataset, _ = open_source("embedded", size, demo.num_images, seed, condition)
    extract_latents(vtp, dataset, out / "latents", image_size=size, batch_size=128, shard_size=demo.num_images,
                    seed=seed, device="cpu", progress=progress)
    t = lap("latents", t)

    # 2. the judge, trained on real scenes; the same judge for every tokenizer and seed
    probe = cached_attribute_probe(judge_cache, size, demo.judge_steps, demo.judge_seed, demo.threads,
                                   progress=progress)
    t = lap("judge", t)

    # 3. real images (reference and judged sets) and their reconstructions
    reference = reference_images(size, demo.reference_images)
    samples_per_class = -(-demo.eval_samples // len(class_ids))
    n_eval = samples_per_class * len(class_ids)
    real = render("train", size, n_eval, seed=REAL_SEED)
    real01 = real["images"].float() / 255
    with torch.inference_mode():
        recon01 = torch.cat([vtp.decode(vtp.encode(chunk)).clamp(0, 1) for chunk in real01.split(128)])
    t = lap("reference images", t)

    # 4. the DiT, for its preset's fixed number of steps
    cells, row_names, per_row, col_names = _grid_layout(condition, demo.grid_per_class or
                                                        (8 if condition == "shape" else 2))
    grid_labels = torch.tensor([c for c in cells if c is not None])
    latent_shape = LatentDataset(out / "latents").latent_shape
    params = sum(p.numel() for p in build_dit_for_data(cfg, latent_shape)[0].parameters())
    history = train_dit(cfg)
    complete = len(history) == cfg.train.steps
    t = lap("dit", t)

    # 5. samples: the grid's, then samples_per_class more per class for the figures
    eval_labels = torch.tensor(class_ids).repeat(samples_per_class)
    labels = torch.cat([grid_labels, eval_labels])
    s = cfg.sample
    npz = sample(out / "dit", out / "samples", replace(s, save_png=False, grid_images=0), tokenizer=vtp,
                 labels=labels, device="cpu", progress=progress)
    images01 = torch.from_numpy(np.load(npz)["arr_0"]).permute(0, 3, 1, 2).float() / 255
    filled = iter(images01[: len(grid_labels)])
    blank = torch.ones_like(images01[0])
    grid = labelled_rows(torch.stack([next(filled) if c is not None else blank for c in cells]), row_names, per_row,
                          out / "samples_grid.png", col_names)
    # the same cells filled with reconstructions of real images of that class, where the real set has one
    real_class = real["shape"] * len(COLOURS) + real["colour"] if condition == "shape_colour" else real["shape"]
    unused = {int(c): torch.nonzero(real_class == c)[:, 0].tolist()[::-1] for c in set(grid_labels.tolist())}
    recon_cells = [recon01[unused[c].pop()] if c is not None and unused[c] else blank for c in cells]
    labelled_rows(torch.stack(recon_cells), row_names, per_row, out / "reconstructions_grid.png", col_names)
    t = lap("sampling", t)

    # 6. figures: generated vs reconstructed vs real, all against the same reference images
    gen01, gen_labels = images01[len(grid_labels):], eval_labels
    by_colour = condition == "shape_colour"
    shape_of = gen_labels // len(COLOURS) if by_colour else gen_labels
    figures = {
        "generated": generation_quality(probe, gen01, shape_of, gen_labels % len(COLOURS) if by_colour else None,
                                        reference),
        "reconstructed": generation_quality(probe, recon01, real["shape"], real["colour"] if by_colour else None,
                                            reference),
        "real": generation_quality(probe, real01, real["shape"], real["colour"] if by_colour else None, reference),
    }
    lap("figures", t)
    figures = {k: rounded(v) for k, v in figures.items()}
    summary = {
        "complete": complete,
        "condition": condition,
        "classes": class_names,
        "tokenizer": str(tokenizer),
        "seed": seed,
        "latents": {"images": demo.num_images, "with_flips": True, "shape": list(latent_shape)},
        "judge": {"steps": demo.judge_steps, "seed": demo.judge_seed,
                  "heldout_shape_acc": round(probe.val_acc["shape"], 4),
                  "heldout_colour_acc": round(probe.val_acc["colour"], 4)},
        "dit": {"arch": cfg.model.arch, **{k: v for k, v in dit_kwargs(cfg.model).items() if k in SIZE_KEYS},
                "params": params, "steps": len(history), "steps_planned": cfg.train.steps,
                "batch": cfg.train.batch, "lr": cfg.optim.lr,
                "final_loss": round(float(np.mean(history[-20:])), 4) if history else None},
        "sampling": {"method": s.method, "num_steps": s.num_steps, "timestep_shift": s.timestep_shift,
                     "cfg_scale": s.cfg_scale, "samples": n_eval, "ema": s.use_ema},
        "figures": figures,
        # generated minus reconstructed: what the generator loses on top of the decoder
        "gap_to_reconstructed": {k: None if v is None else round(v - figures["reconstructed"][k], 4)
                                 for k, v in figures["generated"].items()},
        "chance": round(1 / len(SHAPES), 4),
        "reference_images": len(reference),
        "grid": str(grid),
        "timing": {"phases_s": lap.phases, "total_s": round(time.perf_counter() - start, 1)},
    }
    if not complete:
        summary["stopped"] = f"DiT: {time_limit_message(cfg.train.time_limit_s, len(history), cfg.train.steps)}"
    write_json_atomic(summary, out / "summary.json")
    rows = [figures[k] for k in ("generated", "reconstructed", "real")]
    for key, name in (("shape_acc", "shape accuracy"), ("colour_acc", "colour accuracy"),
                      ("frechet_probe", "Frechet distance (judge features)")):
        if rows[0][key] is not None:
            log.info("generation demo: %s generated %.3f / reconstructed %.3f / real %.3f", name,
                     *(r[key] for r in rows))
    return summary
