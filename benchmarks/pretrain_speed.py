"""Pre-training speed: steps/s of `openvtp pretrain`, achieved FLOP/s and its share of the measured matmul peak.

Each variant (a name and dotted overrides) runs the real loop in its own process for --steps steps; steps/s
is read off the run's metrics.jsonl between step --warmup (a logged step: a multiple of train.log_every) and
the last step, so start-up and the first steps do not count. Variants run interleaved --repeat times; the
first variant is the baseline of the ratios.

    python benchmarks/pretrain_speed.py --config demo --steps 110 --warmup 10 \\
        --variant "1 thread: train.threads=1" --variant "2 threads: train.threads=2"
    python benchmarks/pretrain_speed.py --config vtp-s --steps 3 --warmup 1 --repeat 1 --set train.log_every=1 \\
        data.source=embedded data.workers=1 train.batch=8 ssl.batch=4 recon.batch=4 ssl.n_local=2 \\
        ssl.prototypes=8192 recon.lpips_backbone=random --variant "vtp-s 256px: train.threads=2"
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from peak import CPU_ATTENTION, gemm_peak  # noqa: E402

from openvtp.config.load import load_config  # noqa: E402
from openvtp.config.schema import PretrainConfig  # noqa: E402
from openvtp.train.flops import pretrain_step_flops  # noqa: E402

RUN = ["train.image_every=0", "train.ckpt_every=1000000", "eval.images=50"]


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, overrides = text.partition(":")
    return name.strip(), overrides.split()


def steps_per_s(config: str, overrides: list[str], steps: int, warmup: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "openvtp", "pretrain", "--config", config, *overrides, *RUN,
               f"train.steps={steps}", f"train.out_dir={out}"]
        run = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if run.returncode:
            sys.exit(f"{' '.join(cmd[2:])} failed: {run.stderr.strip().splitlines()[-1]}")
        times = {r["step"]: r["time_s"] for r in map(json.loads, (Path(out) / "metrics.jsonl").read_text().splitlines())}
    if warmup not in times:
        sys.exit(f"--warmup {warmup} is not a logged step (train.log_every): logged {sorted(times)[:5]}...")
    return (steps - warmup) / (times[steps] - times[warmup])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="demo")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10, help="steps not timed")
    ap.add_argument("--repeat", type=int, default=2, help="interleaved runs of every variant")
    ap.add_argument("--set", nargs="*", default=[], help="overrides for every variant")
    ap.add_argument("--variant", action="append", default=[], help='"name: key=value ..." (default: the config as is)')
    args = ap.parse_args()
    if not 0 < args.warmup < args.steps:
        sys.exit("need 0 < --warmup < --steps")
    variants = [parse_variant(v) for v in args.variant] or [("as configured", [])]

    rates: dict[str, list[float]] = {name: [] for name, _ in variants}
    for _ in range(args.repeat):
        for name, overrides in variants:
            rates[name].append(steps_per_s(args.config, [*args.set, *overrides], args.steps, args.warmup))

    base = statistics.mean(rates[variants[0][0]])
    print(f"{args.config} {' '.join(args.set)}: {args.steps - args.warmup} timed steps x {args.repeat} runs each")
    print(f"{'variant':<24} {'steps/s':>16} {'ratio':>6} {'GFLOP/step':>11} {'GFLOP/s':>8} {'peak GFLOP/s':>13} {'of peak':>8}")
    for name, overrides in variants:
        cfg = load_config(PretrainConfig, args.config, [*args.set, *overrides])
        threads = cfg.train.threads or torch.get_num_threads()
        torch.set_num_threads(threads)
        flops = pretrain_step_flops(cfg, custom_mapping=CPU_ATTENTION)
        peak = gemm_peak("cpu", torch.float32)
        mean = statistics.mean(rates[name])
        spread = statistics.stdev(rates[name]) if len(rates[name]) > 1 else 0.0
        achieved = flops * mean
        print(f"{name:<24} {mean:>9.3f} +-{spread:.3f} {mean / base:>6.2f} {flops / 1e9:>11.2f} {achieved / 1e9:>8.1f} "
              f"{peak / 1e9:>13.1f} {achieved / peak:>8.1%}")


if __name__ == "__main__":
    main()
