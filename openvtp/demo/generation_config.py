"""Settings of the demo's generation half (`openvtp demo`'s `generation.` keys).

Kept apart from `generation.config` so that `openvtp demo --help` can list them without importing torch.
"""
from __future__ import annotations

from dataclasses import dataclass

from openvtp.config.schema import require


@dataclass
class GenerationDemoConfig:
    """The demo's generation half (`openvtp demo`'s `generation.` keys): every amount is fixed, so its
    figures are a function of the tokenizer, these settings and the seed, never of the machine's speed.
    The DiT itself is the `dit-demo` preset (`dit.` keys)."""

    enabled: bool = True  # false: `openvtp demo` stops after stage 2
    condition: str = "shape_colour"  # the 39 seen (shape, colour) pairs; shape: the 7 shapes; class: with --data
    num_images: int = 4000  # embedded train scenes encoded (each also flipped) for the DiT
    judge_steps: int = 600  # training steps of the attribute classifier that judges the images
    judge_seed: int = 0  # the judge does not depend on the run's seed: every run is judged alike
    eval_samples: int = 350  # generated images judged (rounded up to whole classes), and as many real ones
    reference_images: int = 1000  # real images the Frechet distances are measured against
    grid_per_class: int = 0  # samples per class in samples_grid.png; 0: 8 per shape, 2 per pair
    threads: int = 1  # torch CPU threads; the judge's convolutions round differently with another count


DEMO_CONDITIONS = ("shape_colour", "shape")


def validate_demo(cfg: GenerationDemoConfig, labelled: bool = False) -> None:
    """The `generation.` keys of `openvtp demo`, before any work; `labelled`: with `--data`, whose DiT conditions on
    the data's classes."""
    conditions = ("class",) if labelled else DEMO_CONDITIONS
    require(cfg.condition in conditions, "generation.condition", f"choose from {', '.join(conditions)}")
    for key in ("num_images", "eval_samples", "reference_images", "threads"):
        require(getattr(cfg, key) > 0, f"generation.{key}", "must be > 0")
    require(cfg.judge_steps >= 20, "generation.judge_steps", "must be >= 20 (its one-cycle schedule warms up for 10%)")
    require(cfg.grid_per_class >= 0, "generation.grid_per_class", "must be >= 0 (0: the default layout)")
