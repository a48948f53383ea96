"""The demo's generation half: latents of the embedded scenes -> a small class-conditional DiT -> judged samples.

Runs after the demo's pre-training, within a fixed time budget on CPU. Phases, in order:
latent extraction of embedded train scenes (and flips) with their statistics; the attribute
judge (a small CNN trained on real scenes, `attribute_probe`); a LightningDiT trained with
flow matching for whatever time is left after reserving the sampling; class-conditional samples
as a grid (a row per shape, a group of columns per colour) and as an ADM .npz; the figures. Every figure comes in three
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

import numpy as np
import torch
from PIL import Image, ImageDraw

from openvtp.config.load import load_config
from openvtp.data.scenes import COLOURS, SEEN_IDS, SHAPES
from openvtp.errors import OpenVTPError
from openvtp.generation.attribute_probe import (REFERENCE_SEED, AttributeProbe, generation_quality, render,
                                                reference_images, train_attribute_probe)
from openvtp.generation.config import GenerationConfig, dit_kwargs, validate
from openvtp.generation.latents import LatentDataset, extract_latents
from openvtp.generation.sample import sample, save_grid
from openvtp.generation.sources import open_source
from openvtp.generation.train import build_dit_for_data, train_dit
from openvtp.train.checkpoint import write_json_atomic

log = logging.getLogger("openvtp.demo.generation")
PRESET = "dit-demo"
REAL_SEED = REFERENCE_SEED + 1  # the real images whose figures the generated ones are read against
PROBE_SHARE = 0.12  # of the budget: the judge's training (capped at PROBE_STEPS steps)
PROBE_STEPS = 600
SAMPLING_SAFETY = 1.6  # the sampling reserve is this many times the timed estimate
SIZE_KEYS = ("hidden_size", "depth", "num_heads", "patch_size")


def _labelled_rows(images01: torch.Tensor, names: list[str], per_row: int, path: Path,
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


def _round(figures: dict) -> dict:
    return {k: (None if v is None else round(float(v), 4)) for k, v in figures.items()}


@torch.inference_mode()
def _time_forward(model: torch.nn.Module, latent_shape: tuple[int, int, int], batch: int) -> float:
    """Seconds of one DiT forward pass on `batch` latents (best of two)."""
    x = torch.randn(batch, *latent_shape)
    t, y = torch.rand(batch), torch.zeros(batch, dtype=torch.long)
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        model(x, t, y)
        best = min(best, time.perf_counter() - start)
    return best


def _time_probe_step(size: int, batch: int = 64) -> float:
    """Seconds of one forward + backward pass of the judge (after a warm-up pass)."""
    probe, x = AttributeProbe(), torch.rand(batch, 3, size, size)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        sum(h.sum() for h in probe(x)).backward()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def run_generation_demo(
    tokenizer: str | Path,
    out_dir: str | Path,
    *,
    time_budget_s: float = 720.0,
    seed: int = 0,
    condition: str = "shape_colour",
    num_images: int = 4000,
    eval_samples: int = 350,
    grid_per_class: int | None = None,
    overrides: tuple[str, ...] = (),
    progress: bool = True,
) -> dict:
    """Generation half of `openvtp demo`: writes `out_dir/generation/` and returns its summary.

    tokenizer: the exported VTP folder (e.g. runs/demo/decoder/tokenizer). condition: "shape_colour" (the
    39 (shape, colour) pairs of the train split, labels shape * 7 + colour) or "shape" (7 classes).
    num_images: embedded train scenes encoded (each also flipped). eval_samples: generated images
    judged (class-balanced, rounded up to a multiple of the classes), and as many real ones.
    grid_per_class: samples per class in the grid (default 8 per shape, 2 per pair).
    overrides: dotted `dit-demo` preset overrides.
    The DiT trains for the time left after the other phases, so the whole call takes about
    `time_budget_s` on any machine (and less if the preset's step count is reached first).
    """
    start = time.perf_counter()
    if condition not in ("shape", "shape_colour"):
        raise OpenVTPError(f"condition must be 'shape' or 'shape_colour', got {condition!r}")
    from openvtp.models.vtp import VTPModel

    vtp = VTPModel.from_pretrained(tokenizer).eval()
    if not vtp.config.train_reconstruction:
        raise OpenVTPError(f"{tokenizer} has no pixel decoder: generation needs train_reconstruction=true")
    size = vtp.config.image_size
    out = Path(out_dir) / "generation"
    for stale in ("latents", "dit", "samples"):  # from an earlier run, maybe with another tokenizer
        shutil.rmtree(out / stale, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    class_ids, class_names = _classes(condition)
    phases: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        phases[name] = round(time.perf_counter() - since, 1)
        log.info("generation demo: %s took %.0fs (%.0fs of %.0fs used)", name, phases[name],
                 time.perf_counter() - start, time_budget_s)
        return time.perf_counter()

    # the DiT config first: a bad override fails before any work
    cfg = load_config(GenerationConfig, PRESET, [
        f"data.latents_dir={out / 'latents'}", f"data.tokenizer={tokenizer}", f"train.run_dir={out / 'dit'}",
        f"data.num_classes={len(SHAPES) * (len(COLOURS) if condition == 'shape_colour' else 1)}",
        f"train.seed={seed}", f"train.progress={progress}", *overrides])
    validate(cfg)

    # 1. latents of embedded train scenes and their flips, per-channel statistics
    t = time.perf_counter()
    dataset, _ = open_source("embedded", size, num_images, seed, condition)
    extract_latents(vtp, dataset, out / "latents", image_size=size, batch_size=128, shard_size=num_images,
                    seed=seed, device="cpu", progress=progress)
    t = lap("latents", t)

    # 2. the judge, trained on real scenes for its share of the budget
    per_step = _time_probe_step(size)
    probe_steps = int(max(20, min(PROBE_STEPS, PROBE_SHARE * time_budget_s / (1.15 * per_step))))
    probe = train_attribute_probe(size, steps=probe_steps, seed=seed, progress=progress)
    t = lap("judge", t)

    # 3. real images (reference and judged sets) and their reconstructions
    reference = reference_images(size, 1000)
    samples_per_class = -(-eval_samples // len(class_ids))
    n_eval = samples_per_class * len(class_ids)
    real = render("train", size, n_eval, seed=REAL_SEED)
    real01 = real["images"].float() / 255
    with torch.inference_mode():
        recon01 = torch.cat([vtp.decode(vtp.encode(chunk)).clamp(0, 1) for chunk in real01.split(128)])
    t = lap("reference images", t)

    # 4. the DiT, for the time left after reserving the sampling
    cells, row_names, per_row, col_names = _grid_layout(condition, grid_per_class or
                                                        (8 if condition == "shape" else 2))
    grid_labels = torch.tensor([c for c in cells if c is not None])
    latent_shape = LatentDataset(out / "latents").latent_shape
    dit, _ = build_dit_for_data(cfg, latent_shape)
    s = cfg.sample
    passes = (s.num_steps - 1) * (2 if s.cfg_scale != 1.0 else 1)  # Euler; dopri5 is not budgeted
    per_batch = _time_forward(dit.eval(), latent_shape, s.batch_size)
    n_all = n_eval + len(grid_labels)
    decode_s = phases["reference images"] * n_all / max(1, n_eval + 1000)
    reserve = SAMPLING_SAFETY * (per_batch * passes * n_all / s.batch_size + decode_s)
    reserve += min(10.0, 0.05 * time_budget_s)  # loading, the judge's passes
    params = sum(p.numel() for p in dit.parameters())
    del dit
    left = time_budget_s - (time.perf_counter() - start) - reserve
    if left < 0.05 * time_budget_s:
        raise OpenVTPError(f"generation demo: {left + reserve:.0f}s of the {time_budget_s:.0f}s budget left, "
                           f"too little to train the DiT (raise time_budget_s or lower num_images)")
    cfg.train.time_limit_s = left
    log.info("generation demo: training the DiT for up to %.0fs (%.0fs kept for sampling)", left, reserve)
    history = train_dit(cfg)
    t = lap("dit", t)

    # 5. samples: the grid's, then samples_per_class more per class for the figures
    eval_labels = torch.tensor(class_ids).repeat(samples_per_class)
    labels = torch.cat([grid_labels, eval_labels])
    npz = sample(out / "dit", out / "samples", replace(s, save_png=False, grid_images=0), tokenizer=vtp,
                 labels=labels, device="cpu", progress=progress)
    images01 = torch.from_numpy(np.load(npz)["arr_0"]).permute(0, 3, 1, 2).float() / 255
    filled = iter(images01[: len(grid_labels)])
    blank = torch.ones_like(images01[0])
    grid = _labelled_rows(torch.stack([next(filled) if c is not None else blank for c in cells]), row_names, per_row,
                          out / "samples_grid.png", col_names)
    # the same cells filled with reconstructions of real images of that class, where the real set has one
    real_class = real["shape"] * len(COLOURS) + real["colour"] if condition == "shape_colour" else real["shape"]
    unused = {int(c): torch.nonzero(real_class == c)[:, 0].tolist()[::-1] for c in set(grid_labels.tolist())}
    recon_cells = [recon01[unused[c].pop()] if c is not None and unused[c] else blank for c in cells]
    _labelled_rows(torch.stack(recon_cells), row_names, per_row, out / "reconstructions_grid.png", col_names)
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
    summary = {
        "condition": condition,
        "classes": class_names,
        "tokenizer": str(tokenizer),
        "latents": {"images": num_images, "with_flips": True, "shape": list(latent_shape)},
        "judge": {"steps": probe_steps, "heldout_shape_acc": round(probe.val_acc["shape"], 4),
                  "heldout_colour_acc": round(probe.val_acc["colour"], 4)},
        "dit": {"arch": cfg.model.arch, **{k: v for k, v in dit_kwargs(cfg.model).items() if k in SIZE_KEYS},
                "params": params, "steps": len(history),
                "batch_size": cfg.train.batch_size, "lr": cfg.train.lr,
                "final_loss": round(float(np.mean(history[-20:])), 4) if history else None},
        "sampling": {"method": s.method, "num_steps": s.num_steps, "timestep_shift": s.timestep_shift,
                     "cfg_scale": s.cfg_scale, "samples": n_eval, "ema": s.use_ema},
        "figures": {k: _round(v) for k, v in figures.items()},
        "chance": round(1 / len(SHAPES), 4),
        "reference_images": len(reference),
        "grid": str(grid),
        "phases_s": phases,
        "time_s": round(time.perf_counter() - start, 1),
        "time_budget_s": time_budget_s,
    }
    write_json_atomic(summary, out / "summary.json")
    rows = [figures[k] for k in ("generated", "reconstructed", "real")]
    for key, name in (("shape_acc", "shape accuracy"), ("colour_acc", "colour accuracy"),
                      ("frechet_probe", "Frechet distance (judge features)")):
        if rows[0][key] is not None:
            log.info("generation demo: %s generated %.3f / reconstructed %.3f / real %.3f", name,
                     *(r[key] for r in rows))
    return summary
