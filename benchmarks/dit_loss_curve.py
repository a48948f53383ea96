"""Where does the demo's DiT stop learning? Its flow-matching loss over a long run, in windows.

For each tokenizer: encodes the demo's training scenes exactly as `openvtp demo` does (4000 scenes and
their flips, conditioned on the seen (shape, colour) pairs), trains the `dit-demo` DiT for --steps, and
prints the mean loss of each window of steps with its drop from the previous window; then draws every
curve in one PNG. `dit-demo`'s `train.steps` (used by `openvtp demo` and every `openvtp study` cell)
was read off this curve: the first window whose drop is under 1% of its loss.

    .venv/bin/python benchmarks/dit_loss_curve.py runs/demo/decoder/tokenizer runs/ae/decoder/tokenizer \\
        --names vtp,ae --out runs/dit-curve --steps 12000

A tokenizer's curve is kept in OUT/NAME/curve.json and reused by a rerun with the same steps and window.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from openvtp.config.load import load_config
from openvtp.demo.scenes import COLOURS, SHAPES
from openvtp.generation.config import GenerationConfig, validate
from openvtp.generation.latents import extract_latents
from openvtp.generation.sources import open_source
from openvtp.generation.train import train_dit
from openvtp.models import VTPModel


def loss_curve(tokenizer: str, out: Path, steps: int, window: int, num_images: int, seed: int,
               overrides: list[str]) -> dict:
    """Window means and standard errors of the DiT loss on `tokenizer`'s latents (cached in out/curve.json)."""
    cached = out / "curve.json"
    if cached.is_file():
        curve = json.loads(cached.read_text())
        if (curve["steps"], curve["window"], curve["overrides"]) == (steps, window, overrides):
            return curve
    vtp = VTPModel.from_pretrained(tokenizer).eval()
    if not (out / "latents" / "latents_stats.pt").is_file():
        dataset, _ = open_source("embedded", vtp.config.image_size, num_images, seed, "shape_colour")
        extract_latents(vtp, dataset, out / "latents", image_size=vtp.config.image_size, batch_size=128,
                        shard_size=num_images, seed=seed, device="cpu")
    cfg = load_config(GenerationConfig, "dit-demo", [
        f"data.latents_dir={out / 'latents'}", f"train.out_dir={out / 'dit'}", f"train.steps={steps}",
        f"train.ckpt_every={steps}", "train.time_limit_s=0", f"train.seed={seed}",
        f"data.num_classes={len(SHAPES) * len(COLOURS)}", *overrides])
    validate(cfg)
    losses = np.array(train_dit(cfg))
    windows = losses[: len(losses) // window * window].reshape(-1, window)
    curve = {"tokenizer": tokenizer, "steps": steps, "window": window, "overrides": overrides,
             "means": windows.mean(1).tolist(), "sems": (windows.std(1, ddof=1) / np.sqrt(window)).tolist()}
    cached.write_text(json.dumps(curve, indent=1))
    return curve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tokenizers", nargs="+")
    p.add_argument("--names", default="", help="comma-separated, one per tokenizer (default: 0,1,...)")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=12000)
    p.add_argument("--window", type=int, default=500)
    p.add_argument("--num-images", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dit", nargs="*", default=[], help="dit-demo overrides, e.g. --dit optim.lr=5e-4")
    args = p.parse_args()
    torch.set_num_threads(1)
    names = args.names.split(",") if args.names else [str(i) for i in range(len(args.tokenizers))]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name, tokenizer in zip(names, args.tokenizers):
        curve = loss_curve(tokenizer, Path(args.out) / name, args.steps, args.window, args.num_images, args.seed,
                           args.dit)
        means = curve["means"]
        print(f"\n{name}: {tokenizer}\n{'steps':>13} {'mean loss':>10} {'+-sem':>7} {'drop':>8} {'drop/loss':>9}")
        for i, (m, s) in enumerate(zip(means, curve["sems"])):
            drop = "" if i == 0 else f"{means[i - 1] - m:8.4f} {100 * (means[i - 1] - m) / m:8.2f}%"
            print(f"{i * args.window + 1:>6}-{(i + 1) * args.window:<6} {m:10.4f} {s:7.4f} {drop}")
        centres = (np.arange(len(means)) + 0.5) * args.window
        ax.errorbar(centres, means, yerr=curve["sems"], marker="o", markersize=3, capsize=2, label=name)
    ax.set_xlabel("DiT step")
    ax.set_ylabel(f"flow-matching loss, mean of {args.window} steps")
    ax.set_ylim(top=0.8)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(Path(args.out) / "curve.png", dpi=100)
    print(f"\n-> {Path(args.out) / 'curve.png'}")


if __name__ == "__main__":
    main()
