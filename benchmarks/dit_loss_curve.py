"""Where does the demo's DiT stop learning? Its flow-matching loss over a long run, in windows.

Encodes the demo's training scenes with a tokenizer exactly as `openvtp demo` does (4000 scenes and
their flips, conditioned on the seen (shape, colour) pairs), trains the `dit-demo` DiT for --steps,
and prints the mean loss of each window of steps with its drop from the previous window, then writes
the curve as a PNG. The study (`openvtp study`) takes its DiT steps from this curve: where the drop per
window has become small against the step-to-step noise.

    .venv/bin/python benchmarks/dit_loss_curve.py runs/demo/decoder/tokenizer --out runs/dit-curve --steps 12000
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from openvtp.config.load import load_config
from openvtp.data.scenes import COLOURS, SHAPES
from openvtp.generation.config import GenerationConfig, validate
from openvtp.generation.latents import extract_latents
from openvtp.generation.sources import open_source
from openvtp.generation.train import train_dit
from openvtp.models import VTPModel


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tokenizer")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=12000)
    p.add_argument("--window", type=int, default=500)
    p.add_argument("--num-images", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="dit-demo overrides")
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    vtp = VTPModel.from_pretrained(args.tokenizer).eval()
    if not (out / "latents" / "latents_stats.pt").is_file():
        dataset, _ = open_source("embedded", vtp.config.image_size, args.num_images, args.seed, "shape_colour")
        extract_latents(vtp, dataset, out / "latents", image_size=vtp.config.image_size, batch_size=128,
                        shard_size=args.num_images, seed=args.seed, device="cpu")
    cfg = load_config(GenerationConfig, "dit-demo", [
        f"data.latents_dir={out / 'latents'}", f"train.run_dir={out / 'dit'}", f"train.steps={args.steps}",
        f"train.ckpt_every={args.steps}", "train.time_limit_s=0", f"train.seed={args.seed}",
        f"data.num_classes={len(SHAPES) * len(COLOURS)}", *args.overrides])
    validate(cfg)
    losses = np.array(train_dit(cfg))
    windows = losses[: len(losses) // args.window * args.window].reshape(-1, args.window)
    means, sems = windows.mean(1), windows.std(1, ddof=1) / np.sqrt(args.window)
    print(f"{'steps':>13} {'mean loss':>10} {'+-sem':>7} {'drop':>8}")
    for i, (m, s) in enumerate(zip(means, sems)):
        drop = "" if i == 0 else f"{means[i - 1] - m:8.4f}"
        print(f"{i * args.window + 1:>6}-{(i + 1) * args.window:<6} {m:10.4f} {s:7.4f} {drop}")
    (out / "curve.json").write_text(json.dumps({"window": args.window, "means": means.tolist(),
                                                "sems": sems.tolist(), "tokenizer": args.tokenizer}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    centres = (np.arange(len(means)) + 0.5) * args.window
    ax.errorbar(centres, means, yerr=sems, marker="o", capsize=2)
    ax.set_xlabel("DiT step")
    ax.set_ylabel(f"flow-matching loss (mean of {args.window} steps)")
    ax.set_title(f"dit-demo on {Path(args.tokenizer).parent.parent.name or args.tokenizer}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "curve.png", dpi=100)
    print(f"-> {out / 'curve.png'}")


if __name__ == "__main__":
    main()
