"""What the machine can do, measured: the matrix-multiply peak that achieved FLOP/s are compared with.

Imported by the other benchmarks; run alone it prints the peak:

    python benchmarks/peak.py --device cpu --dtype float32
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def seconds_per_call(fn: Callable[[], object], iters: int, warmup: int, device: torch.device | str) -> float:
    """Mean wall time of `fn` over `iters` calls after `warmup` calls (the device synchronised at both ends)."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / iters


def _cpu_attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                            **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# torch counts the CUDA attention kernels only; the CPU flash kernel does the same two matmuls per head.
CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
                 torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward}


def flops_by_op(fn: Callable[[], object]) -> dict[str, int]:
    """FLOPs of one call of `fn` per aten op ("aten::addmm": n, as the profiler names ops) as torch counts them
    (matmuls, convolutions, attention on CPU and CUDA; forward and backward)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        fn()
    return {str(op).replace(".", "::", 1): int(n) for op, n in counter.get_flop_counts()["Global"].items()}


def counted_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of `fn` as torch counts them (see `flops_by_op`)."""
    return sum(flops_by_op(fn).values())


def gemm_peak(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, n: int | None = None,
              iters: int = 0) -> float:
    """FLOP/s of a square n x n matmul on `device` at the current thread count: the best the machine does.

    The size is large enough that the library's blocking reaches its steady state (2048 on CPU, 8192 on GPU).
    """
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 2048)
    iters = iters or (20 if device.type == "cuda" else 5)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = seconds_per_call(lambda: torch.mm(a, b), iters, warmup=2, device=device)
    return 2 * n**3 / t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = gemm_peak(args.device, DTYPES[args.dtype])
    print(f"{args.device} {args.dtype} threads {torch.get_num_threads()}: matmul peak {peak / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
