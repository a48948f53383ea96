"""Does every rank of a finished 2-process run exit 0? Launch an openvtp command under torchrun N times.

    python benchmarks/dist_exit_stress.py --entry pretrain-fsdp,pretrain-ddp --runs 30 --burner
    python benchmarks/dist_exit_stress.py --entry train-dit,eval --runs 10 --burner

Each entry is a tiny run (the sizes of the test suite's 2-process runs: tests/test_fsdp.py's pre-training,
the tiny DiT and tokenizer of tests/test_cli_generate.py, the conformance model for eval). What an entry
needs (a stage-1 tokenizer, latents) is made once, in one process, before the runs. --burner keeps a
CPU-burning process beside the runs, as a loaded machine or CI would. Prints, per entry, how many runs
exited 0 and, for the others, the exit code and the first line of the failure; exits 1 if any failed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFORMANCE = REPO.parent / "shared" / "conformance" / "tiny-swiglu-rms"
TINY_VTP = ["model.image_size=32", "model.vision_patch_size=8", "model.vision_embed_dim=32", "model.vision_depth=2",
            "model.vision_num_heads=2", "model.vision_feature_bottleneck=8", "model.decoder_embed_dim=32",
            "model.decoder_depth=1", "model.decoder_num_heads=2", "model.text_embed_dim=32", "model.text_depth=1",
            "model.text_num_heads=2", "ssl.prototypes=64", "ssl.head_hidden=32", "ssl.head_bottleneck=16",
            "ssl.global_size=32", "ssl.local_size=16", "ssl.n_local=2", "ssl.batch=4", "recon.batch=4",
            "train.batch=8", "data.workers=0", "data.photo_fraction=0.25", "train.log_every=1", "eval.images=8",
            "optim.warmup_steps=2"]
PRETRAIN = ["pretrain", "--config", "demo", *TINY_VTP, "train.steps=4", "train.ckpt_every=2", "train.image_every=2",
            "eval.every=2", "ssl.drop_path=0", "ssl.koleo_batch=global", "ssl.ibot_normalize=all"]
TINY_DIT = ["model.arch=dit-tiny-1", "data.num_classes=7", "train.batch=8", "train.ema_decay=0.9",
            "train.log_every=2", "train.tensorboard=false", "train.progress=false", "train.steps=4"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "openvtp", *args]


def prepare(work: Path) -> dict[str, Path]:
    """A stage-1 tokenizer (tiny pre-training), and latents of 24 embedded scenes from a random vtp-tiny."""
    import torch

    from openvtp.models import VTPConfig, VTPModel

    made = {"stage1": work / "stage1", "tok": work / "tok", "latents": work / "latents"}
    subprocess.run(_cli(*PRETRAIN, "train.steps=2", "eval.every=0", f"train.out_dir={made['stage1']}"),
                   check=True, capture_output=True, env=_env())
    torch.manual_seed(0)
    VTPModel(VTPConfig.preset("vtp-tiny")).eval().save_pretrained(made["tok"])
    subprocess.run(_cli("extract-latents", str(made["tok"]), "--data", "embedded", "--num", "24", "--out",
                        str(made["latents"]), "--shard-size", "10", "--batch-size", "8"),
                   check=True, capture_output=True, env=_env())
    return made


def entry_args(entry: str, made: dict[str, Path], out: Path) -> list[str]:
    if entry in ("pretrain-fsdp", "pretrain-ddp"):
        return [*PRETRAIN, f"train.parallel={entry.split('-')[1]}", f"train.out_dir={out}"]
    if entry == "finetune-decoder":
        return ["finetune-decoder", str(made["stage1"] / "tokenizer"), "train.steps=3", "gan.start_step=1",
                "train.batch=4", "data.workers=0", "train.log_every=1", "train.image_every=0", "eval.images=8",
                "optim.warmup_steps=1", "gan.disc_channels=8", "gan.disc_layers=2", f"train.out_dir={out}"]
    if entry == "train-dit":
        return ["train-dit", "--config", "dit-demo", *TINY_DIT, f"data.latents_dir={made['latents']}",
                f"train.out_dir={out}"]
    if entry == "extract-latents":
        return ["extract-latents", str(made["tok"]), "--data", "embedded", "--num-images", "16", "--out", str(out),
                "--shard-size", "8", "--batch-size", "4"]
    if entry == "eval":
        return ["eval", str(CONFORMANCE), "--data", "embedded", "--limit", "8", "--train-limit", "8", "--chunk-size",
                "4", "--batch-size", "4", "--tasks", "knn,recon", "--device", "cpu", "--fid-weights", "none",
                "--lpips", "none", "--no-progress", "--out", str(out)]
    raise SystemExit(f"dist_exit_stress.py: unknown entry {entry!r} (choose from {', '.join(ENTRIES)})")


ENTRIES = ("pretrain-fsdp", "pretrain-ddp", "finetune-decoder", "train-dit", "extract-latents", "eval")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def first_failure_line(stderr: str) -> str:
    """The line that says what went wrong: a C++ terminate, a signal, a Python error, else the last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for marker in ("terminate called", "Fatal Python error", "Signal", "Error", "error:"):
        hit = next((line for line in lines if marker in line), None)
        if hit:
            return hit[:200]
    return lines[-1][:200] if lines else "(no output)"


def launch(args: list[str], timeout: float) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "openvtp", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(),
                              cwd=tempfile.gettempdir())  # not the repository: `-m` would import its openvtp
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout:.0f} s"
    return proc.returncode, "" if proc.returncode == 0 else first_failure_line(proc.stderr)


def burner() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: sum(i * i for i in range(10000))"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entry", default="pretrain-fsdp,pretrain-ddp,train-dit,eval",
                    help=f"comma-separated, from: {', '.join(ENTRIES)}")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--burner", action="store_true", help="a CPU-burning process beside the runs")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds one run may take")
    args = ap.parse_args()
    entries = [e.strip() for e in args.entry.split(",") if e.strip()]
    for e in entries:
        if e not in ENTRIES:
            ap.error(f"unknown entry {e!r} (choose from {', '.join(ENTRIES)})")
    work = Path(tempfile.mkdtemp(prefix="dist_exit_stress_"))
    burn = burner() if args.burner else None
    failed = 0
    try:
        made = prepare(work)
        for entry in entries:
            failures, start = [], time.perf_counter()
            for i in range(args.runs):
                out = work / f"{entry}-{i}"
                rc, why = launch(entry_args(entry, made, out), args.timeout)
                if rc != 0:
                    failures.append(f"  run {i + 1}: exit {rc}: {why}")
                shutil.rmtree(out, ignore_errors=True)
            took = time.perf_counter() - start
            print(f"{entry}: {args.runs - len(failures)} of {args.runs} runs exited 0"
                  f"{' (beside a CPU burner)' if burn else ''}, {took / args.runs:.1f} s a run", flush=True)
            for line in failures:
                print(line, flush=True)
            failed += len(failures)
    finally:
        if burn is not None:
            burn.kill()
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
