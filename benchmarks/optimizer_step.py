"""Time of one AdamW step over a pre-training task's parameters: per-tensor loop, foreach and fused.

    python benchmarks/optimizer_step.py --config demo --threads 1

The demo's text tower holds a 49408 x 128 token table (6.3M of its 7.6M parameters), so on CPU the
optimizer is a visible share of a step; `openvtp pretrain` uses the fused kernel.
"""
from __future__ import annotations

import argparse
import time

import torch

from openvtp.config.load import load_config
from openvtp.config.schema import PretrainConfig
from openvtp.models import VTPModel
from openvtp.train.optim import param_groups
from openvtp.train.task import PretrainTask


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="demo")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(PretrainConfig, args.config, [])
    task = PretrainTask(cfg, VTPModel(cfg.model)).to(args.device)
    params = [p for p in task.parameters() if p.requires_grad]
    print(f"{args.config}: {sum(p.numel() for p in params) / 1e6:.1f}M trainable parameters, "
          f"{args.device}, {args.threads} thread(s)")
    for name, kw in (("per-tensor", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        opt = torch.optim.AdamW(param_groups(task, 0.05), lr=1e-4, **kw)
        for p in params:
            p.grad = torch.randn_like(p)
        for _ in range(3):
            opt.step()
        if args.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.iters):
            opt.step()
        if args.device == "cuda":
            torch.cuda.synchronize()
        print(f"  {name:10s} {(time.perf_counter() - t0) / args.iters * 1e3:7.1f} ms / step")


if __name__ == "__main__":
    main()
