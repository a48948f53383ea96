"""How often pre-training makes the host wait for the GPU: synchronising calls per `train.log_every` steps.

Runs `openvtp pretrain` twice under `torch.cuda.set_sync_debug_mode("warn")`, for 2 and for 3 log intervals;
the difference in warnings is what one more interval of steps costs (set-up, checkpoint and the final
evaluation are the same in both runs). The loop's target is one sync per interval. Needs CUDA.

    python benchmarks/host_syncs.py --config demo --log-every 10
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import warnings

import torch

from openvtp.config.load import load_config
from openvtp.config.schema import PretrainConfig
from openvtp.train.loop import pretrain

RUN = ["train.image_every=0", "train.ckpt_every=1000000", "eval.images=50", "data.workers=1",
       "recon.lpips_backbone=random", "train.device=cuda"]


def syncs(config: str, overrides: list[str], steps: int) -> int:
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(PretrainConfig, config, [*overrides, *RUN, f"train.steps={steps}", f"train.out_dir={out}"])
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                pretrain(cfg)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def per_interval(config: str, overrides: list[str], log_every: int) -> int:
    """Synchronising calls that one more `log_every` steps add to a run."""
    overrides = [*overrides, f"train.log_every={log_every}"]
    return syncs(config, overrides, 3 * log_every) - syncs(config, overrides, 2 * log_every)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="demo")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("host_syncs.py needs a CUDA device")
    n = per_interval(args.config, args.overrides, args.log_every)
    print(f"{args.config}: {n} synchronising calls per {args.log_every} steps (target: 1)")


if __name__ == "__main__":
    main()
