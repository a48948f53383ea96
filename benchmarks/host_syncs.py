"""How often training makes the host wait for the GPU: synchronising calls per `train.log_every` steps.

Runs pre-training (`--config`, default demo) and stage 2 (`decoder-demo`, from a stage-1 tokenizer with the
pre-training config's random weights) twice each under `torch.cuda.set_sync_debug_mode("warn")`, for 2 and for
3 log intervals; the difference in warnings is what one more interval of steps costs (set-up, checkpoint and
the final evaluation are the same in both runs). The loops' target is one sync per interval. Needs CUDA;
`tests/test_host_reads.py` counts the same calls on the CPU.

    python benchmarks/host_syncs.py --config demo --log-every 10
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from openvtp.config.load import load_config
from openvtp.config.schema import FinetuneDecoderConfig, PretrainConfig
from openvtp.models import VTPModel
from openvtp.train.decoder_finetune import finetune_decoder
from openvtp.train.loop import pretrain

RUN = ["train.image_every=0", "train.ckpt_every=1000000", "eval.images=50", "data.workers=1", "train.device=cuda"]


def syncs(run) -> int:
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def pretrain_syncs(config: str, overrides: list[str], steps: int) -> int:
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(PretrainConfig, config, [*overrides, *RUN, "recon.lpips_backbone=random",
                                                   f"train.steps={steps}", f"train.out_dir={out}"])
        return syncs(lambda: pretrain(cfg))


def finetune_syncs(stage1: Path, overrides: list[str], steps: int) -> int:
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(FinetuneDecoderConfig, "decoder-demo", [
            f"init={stage1}", *overrides, *RUN, "loss.lpips_backbone=random", "gan.start_step=0",
            f"train.steps={steps}", f"train.out_dir={out}"])
        return syncs(lambda: finetune_decoder(cfg))


def per_interval(count, log_every: int) -> int:
    """Synchronising calls that one more `log_every` steps add to a run; `count(overrides, steps)`."""
    overrides = [f"train.log_every={log_every}"]
    return count(overrides, 3 * log_every) - count(overrides, 2 * log_every)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="demo", help="the pre-training preset (its model is stage 2's too)")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("overrides", nargs="*", help="pre-training overrides")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("host_syncs.py needs a CUDA device")
    n = per_interval(lambda o, steps: pretrain_syncs(args.config, [*args.overrides, *o], steps), args.log_every)
    print(f"pretrain {args.config}: {n} synchronising calls per {args.log_every} steps (target: 1)")
    with tempfile.TemporaryDirectory() as tmp:
        stage1 = Path(tmp) / "tokenizer"
        VTPModel(load_config(PretrainConfig, args.config, args.overrides).model).save_pretrained(stage1)
        n = per_interval(lambda o, steps: finetune_syncs(stage1, o, steps), args.log_every)
    print(f"finetune-decoder decoder-demo: {n} synchronising calls per {args.log_every} steps (target: 1)")


if __name__ == "__main__":
    main()
