"""Pre-training speed and peak memory with and without `train.compile` or `train.activation_checkpointing`.

    python benchmarks/train_options.py --option compile --steps 60 --config demo train.threads=1
    python benchmarks/train_options.py --option activation_checkpointing --steps 4 --config vtp-s \\
        data.source=embedded data.workers=0 train.batch=8 ssl.batch=8 recon.batch=8 recon.lpips_backbone=random train.threads=1

Each variant runs the real `pretrain` loop in a process of its own (peak RSS is per process), every step
logged; the held-out evaluation after the last step is skipped (it is not part of a step). A step's time is
the loop's own (batch / images_per_s); the speed is the median over the steps after `--warmup` (the first
steps compile). Peak RSS is the process's high-water mark: model, optimizer and the step's activations.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(out: Path, config: str, overrides: list[str]) -> None:
    from openvtp.config.load import load_config
    from openvtp.config.schema import PretrainConfig
    from openvtp.train import loop

    loop._finish = lambda *args, **kwargs: {}  # the export and held-out figures: not what is timed
    cfg = load_config(PretrainConfig, config, [*overrides, f"train.out_dir={out}", "train.log_every=1",
                                               "train.image_every=0", "train.ckpt_every=1000000", "eval.every=0"])
    t0 = time.perf_counter()
    loop.pretrain(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    print(json.dumps({"wall_s": time.perf_counter() - t0,
                      "step_s": [cfg.train.batch / r["images_per_s"] for r in rows],
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--option", choices=["compile", "activation_checkpointing"], required=True)
    ap.add_argument("--config", default="demo")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10, help="steps left out of the median (compilation)")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args, overrides = ap.parse_known_args()
    if args.child:
        return child(args.child, args.config, overrides)
    warmup = min(args.warmup, args.steps - 1)
    print(f"{args.config}, {args.steps} steps, {' '.join(overrides)}")
    for on in ("false", "true"):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, __file__, "--option", args.option, "--config", args.config, "--child", tmp,
                   *overrides, f"train.steps={args.steps}", f"train.{args.option}={on}"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{' '.join(cmd)}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
            res = json.loads(proc.stdout.splitlines()[-1])
        median = statistics.median(res["step_s"][warmup:])
        print(f"  train.{args.option}={on:5s}  {1 / median:6.2f} steps/s, {median:6.1f} s/step (median of steps "
              f"{warmup + 1}-{args.steps}), "
              f"first step {res['step_s'][0]:7.1f} s, run {res['wall_s']:7.1f} s, peak RSS {res['peak_rss_mb']:7.0f} MB")


if __name__ == "__main__":
    main()
