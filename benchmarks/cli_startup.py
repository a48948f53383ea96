"""Time `openvtp --help`, every sub-command's `--help`, and mistakes that need no model (issue 18: under a second).

Each command runs as a fresh process (the console script of this interpreter's environment), best of --repeat runs,
so the figure is the start-up a user waits for: Python, the CLI's imports, argparse, the check. Prints one line
per command and whether torch was imported (it should not be).

    python benchmarks/cli_startup.py [--repeat 3]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MISTAKES = [  # (what, argv): errors that need no model
    ("unknown config key", ["pretrain", "--config", "demo", "train.stepz=1"]),
    ("impossible config value", ["pretrain", "--config", "demo", "optim.lr=-1"]),
    ("invalid YAML", ["pretrain", "--config", "{bad_yaml}"]),
    ("train.out_dir is a file", ["pretrain", "--config", "demo", "train.out_dir={a_file}"]),
    ("negative --size", ["reconstruct", "MODEL", "x.png", "--out", "d", "--size", "-16"]),
    ("missing --data", ["extract-latents", "MODEL", "--data", "/nonexistent", "--out", "d"]),
    ("unknown DiT config key", ["train-dit", "--config", "dit-demo", "train.stepz=1"]),
    ("fid of missing folders", ["fid", "/nonexistent/a", "/nonexistent/b"]),
    ("sample from a missing run", ["sample", "/nonexistent/run", "--out", "d"]),
    ("eval, unknown --tasks", ["eval", "MODEL", "--data", "embedded", "--tasks", "foo"]),
    ("eval of a missing model", ["eval", "/nonexistent/model", "--data", "embedded"]),
    ("eval on missing --data", ["eval", "{tmp}", "--data", "/nonexistent/images"]),
]


def commands() -> list[str]:
    from openvtp.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


def timed(argv: list[str], repeat: int) -> tuple[float, int, bool]:
    """Best wall time of `repeat` runs, the exit code, and whether the command imported torch."""
    script = ("import sys, runpy; sys.argv = ['openvtp', *sys.argv[1:]]\n"
              "try:\n    runpy.run_module('openvtp', run_name='__main__')\n"
              "finally:\n    print('torch imported' if 'torch' in sys.modules else '', file=sys.stderr)\n")
    best, rc, torch_imported = float("inf"), 0, False
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True)
        best = min(best, time.perf_counter() - t0)
        rc, torch_imported = proc.returncode, "torch imported" in proc.stderr
    return best, rc, torch_imported


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per command; the best is reported")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bad_yaml, a_file = Path(tmp) / "bad.yaml", Path(tmp) / "file"
        bad_yaml.write_text("train:\n  steps: [1\n")
        a_file.write_text("")
        rows = [("openvtp --help", ["--help"])] + [(f"openvtp {c} --help", [c, "--help"]) for c in commands()]
        rows += [(what, [a.format(bad_yaml=bad_yaml, a_file=a_file, tmp=tmp) for a in argv]) for what, argv in MISTAKES]
        worst = 0.0
        for name, argv in rows:
            seconds, rc, torch_imported = timed(argv, args.repeat)
            worst = max(worst, seconds)
            print(f"{seconds:6.3f} s  rc {rc}  {'torch imported' if torch_imported else 'no torch':<14}  {name}")
        print(f"slowest: {worst:.3f} s")


if __name__ == "__main__":
    main()
