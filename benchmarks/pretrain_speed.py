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

A variant may run another checkout's code: "name: @DIR key=value ..." puts DIR first on the child's PYTHONPATH
and runs it from a temporary folder (a working directory holding openvtp/ would shadow it under `python -m`);
the script checks that the child imports openvtp from DIR. FLOPs are counted with this checkout's code.

    git worktree add /tmp/before bdb6deb
    python benchmarks/pretrain_speed.py --config demo --steps 110 --warmup 10 --repeat 4 \\
        --variant "bdb6deb: @/tmp/before" --variant "now:"
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from peak import CPU_ATTENTION, gemm_peak  # noqa: E402

from openvtp.config.load import load_config  # noqa: E402
from openvtp.config.schema import PretrainConfig  # noqa: E402
from openvtp.train.flops import pretrain_step_flops  # noqa: E402

RUN = ["train.image_every=0", "train.ckpt_every=1000000", "eval.images=50"]


@dataclass
class Variant:
    name: str
    overrides: list[str]
    code: Path | None = None  # another checkout whose openvtp the runs import


def parse_variant(text: str) -> Variant:
    """ "name: [@DIR] key=value ..." """
    name, _, rest = text.partition(":")
    words = rest.split()
    code = Path(words.pop(0)[1:]).resolve() if words and words[0].startswith("@") else None
    return Variant(name.strip(), words, code)


def child_env(code: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(code), *filter(None, [env.get("PYTHONPATH")])])
    return env


def check_code(variant: Variant) -> None:
    """Exit unless a child of `variant` imports openvtp from its checkout."""
    if variant.code is None:
        return
    with tempfile.TemporaryDirectory() as cwd:
        found = subprocess.run([sys.executable, "-c", "import openvtp; print(openvtp.__file__)"], cwd=cwd,
                               env=child_env(variant.code), capture_output=True, text=True).stdout.strip()
    if not Path(found).resolve().is_relative_to(variant.code):
        sys.exit(f"variant {variant.name!r}: openvtp comes from {found or '(import failed)'}, not from {variant.code}")


def steps_per_s(config: str, overrides: list[str], steps: int, warmup: int, code: Path | None = None) -> float:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "openvtp", "pretrain", "--config", config, *overrides, *RUN,
               f"train.steps={steps}", f"train.out_dir={out}"]
        run = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=out,
                             env=child_env(code))
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
    variants = [parse_variant(v) for v in args.variant] or [Variant("as configured", [])]
    for v in variants:
        check_code(v)

    rates: dict[str, list[float]] = {v.name: [] for v in variants}
    for _ in range(args.repeat):
        for v in variants:
            rates[v.name].append(steps_per_s(args.config, [*args.set, *v.overrides], args.steps, args.warmup, v.code))

    base = statistics.mean(rates[variants[0].name])
    print(f"{args.config} {' '.join(args.set)}: {args.steps - args.warmup} timed steps x {args.repeat} runs each")
    print(f"{'variant':<24} {'steps/s':>16} {'ratio':>6} {'GFLOP/step':>11} {'GFLOP/s':>8} {'peak GFLOP/s':>13} {'of peak':>8}")
    for v in variants:
        name = v.name
        cfg = load_config(PretrainConfig, args.config, [*args.set, *v.overrides])
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
