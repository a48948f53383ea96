"""Encode / decode throughput of a VTP preset (random weights): images per second.

    python benchmarks/encode_decode.py --preset vtp-s --size 256 --batch 8 --device cpu --dtype float32
"""
from __future__ import annotations

import argparse
import time

import torch

from openvtp import VTPConfig, VTPModel


def bench(fn, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="vtp-s")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()

    model = VTPModel(VTPConfig.preset(args.preset, train_clip=False)).to(args.device).eval()
    x = torch.rand(args.batch, 3, args.size, args.size, device=args.device)
    autocast = torch.autocast(args.device if args.device != "cpu" else "cpu", dtype=torch.bfloat16,
                              enabled=args.dtype == "bfloat16")
    with torch.inference_mode(), autocast:
        z = model.encode(x)
        t_enc = bench(lambda: model.encode(x), args.iters, args.warmup)
        t_dec = bench(lambda: model.decode(z), args.iters, args.warmup)
    print(f"{args.preset} {args.size}px batch {args.batch} {args.device} {args.dtype} "
          f"threads {torch.get_num_threads()}: encode {args.batch / t_enc:.1f} img/s, decode {args.batch / t_dec:.1f} img/s")


if __name__ == "__main__":
    main()
