"""Inference throughput of VTP presets with random weights: `encode`, `decode` and CLIP image features
(`get_clip_image_feature`) over a grid of presets, resolutions, batch sizes, dtypes (float32, bfloat16 autocast),
thread counts and eager vs `torch.compile`, measured in one run.

Per (preset, size, batch) the compiled functions are compiled first (one first call per dtype and thread count,
reported as compile time less one steady call), then `--rounds` rounds each time every variant (op, dtype, eager or
compiled, threads) for `--iters` calls and the matmul peak of every (dtype, threads) in turn, so that load from
elsewhere falls on all of them alike; each figure is the best round. The table gives images/s, the ratio to the
float32 eager variant of the same op and cell, the ratio to the same variant on one thread, and the achieved FLOP/s
(counted by torch, attention included) as a share of the matmul peak of that dtype and thread count. Inductor keeps
compiled kernels in its on-disk cache: a repeated run reports shorter compile times.

    python benchmarks/inference.py   # vtp-s 256 px batch 8, encode + decode; threads 1,2; fp32, bf16; eager, compiled
    python benchmarks/inference.py --presets vtp-s,vtp-b --sizes 256 --batches 1,8 --threads 2 --modes eager
    python benchmarks/inference.py --profile --ops encode --dtypes float32 --threads 1   # where the time goes
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler's start/stop chatter on stderr
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peak import DTYPES, flops_by_op, gemm_peak, seconds_per_call, sync  # noqa: E402

from openvtp import VTPConfig, VTPModel  # noqa: E402
from openvtp.models.config import PRESETS  # noqa: E402

OPS = ("encode", "decode", "clip")
MODES = ("eager", "compiled")
# The kernel the profiler times for an op the FLOP counter sees under another name.
KERNEL_OF = {"aten::convolution": ("aten::mkldnn_convolution", "aten::cudnn_convolution", "aten::_slow_conv2d_forward")}


@dataclass
class Result:
    preset: str
    size: int
    batch: int
    threads: int
    op: str
    dtype: str
    mode: str
    seconds: float  # per call, best round
    images_per_s: float
    flops: int  # per call, counted in eager float32
    achieved_flops: float
    peak_flops: float  # matmul peak of this dtype and thread count, best of the run
    compile_s: float | None = None
    rounds: list[float] = field(default_factory=list)  # seconds per call in each round
    vs_fp32_eager: float | None = None
    vs_one_thread: float | None = None


def runner(model: VTPModel, op: str, x: torch.Tensor, z: torch.Tensor, dtype: str):
    """The call to time: `op` on its input under bf16 autocast when `dtype` is bfloat16 (inside, so that
    torch.compile traces the autocast too)."""
    device = x.device.type
    bf16 = dtype == "bfloat16"

    def call(inp):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            if op == "encode":
                return model.encode(inp)
            if op == "decode":
                return model.decode(inp)
            return model.get_clip_image_feature(inp)

    return call, (z if op == "decode" else x)


def csv(kind):
    return lambda text: [kind(v) for v in text.split(",") if v]


def build(preset: str, device: torch.device) -> VTPModel:
    torch.manual_seed(0)
    return VTPModel(VTPConfig.preset(preset)).to(device).eval().requires_grad_(False)


def inputs(size: int, batch: int, model: VTPModel, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images in [0, 1] and their float32 latents (the decoder's input for every variant)."""
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.inference_mode():
        return x, model.encode(x)


def with_threads(threads: int, device: torch.device):
    if device.type == "cpu":
        torch.set_num_threads(threads)


def bench_cell(model, preset, size, batch, args, device, peaks: dict) -> list[Result]:
    """Every variant of one (preset, size, batch), interleaved round by round."""
    torch._dynamo.reset()  # compiled code of another shape must not be reused, nor count towards the limit
    torch._dynamo.config.recompile_limit = 64  # every compiled variant shares `call`'s code: one entry each
    x, z = inputs(size, batch, model, device)
    variants = [(t, op, dt, mode) for t in args.threads for op in args.ops for dt in args.dtypes for mode in args.modes
                if mode == "eager" or op in args.compile_ops]
    calls, compile_s = {}, {}
    with torch.inference_mode():
        flops = {}
        for op in args.ops:
            fn, inp = runner(model, op, x, z, "float32")
            flops[op] = sum(flops_by_op(lambda: fn(inp)).values())
        for op in args.ops:
            for dt in args.dtypes:
                fn, inp = runner(model, op, x, z, dt)
                calls[(op, dt, "eager")] = (fn, inp)
                if "compiled" in args.modes and op in args.compile_ops:
                    calls[(op, dt, "compiled")] = (torch.compile(fn, dynamic=False), inp)
        for t, op, dt, mode in variants:  # compile, once per thread count (torch guards on it), and warm up
            with_threads(t, device)
            fn, inp = calls[(op, dt, mode)]
            t0 = time.perf_counter()
            fn(inp)
            sync(device)
            first = time.perf_counter() - t0
            for _ in range(args.warmup):
                fn(inp)
            if mode == "compiled":
                compile_s[(t, op, dt)] = first
        times = {v: [] for v in variants}
        for _ in range(args.rounds):
            for t in args.threads:
                with_threads(t, device)
                for dt in args.dtypes:
                    key = (dt, t)
                    peaks.setdefault(key, []).append(gemm_peak(device, DTYPES[dt]))
            for v in variants:
                t, op, dt, mode = v
                with_threads(t, device)
                fn, inp = calls[(op, dt, mode)]
                times[v].append(seconds_per_call(lambda: fn(inp), args.iters, 0, device))
    results = []
    for (t, op, dt, mode), rounds in sorted(times.items(), key=lambda kv: (OPS.index(kv[0][1]), kv[0][0])):
        s = min(rounds)
        peak = max(peaks[(dt, t)])
        c = compile_s.get((t, op, dt)) if mode == "compiled" else None
        results.append(Result(preset, size, batch, t, op, dt, mode, s, batch / s, flops[op], flops[op] / s, peak,
                              None if c is None else max(0.0, c - s), rounds))
    return results


def add_ratios(results: list[Result], peaks: dict) -> None:
    """The ratios, and every figure measured against the best peak of the whole run."""
    index = {(r.preset, r.size, r.batch, r.threads, r.op, r.dtype, r.mode): r for r in results}
    for r in results:
        r.peak_flops = max(peaks[(r.dtype, r.threads)])
        base = index.get((r.preset, r.size, r.batch, r.threads, r.op, "float32", "eager"))
        one = index.get((r.preset, r.size, r.batch, 1, r.op, r.dtype, r.mode))
        r.vs_fp32_eager = r.images_per_s / base.images_per_s if base else None
        r.vs_one_thread = r.images_per_s / one.images_per_s if one else None


def table(results: list[Result]) -> str:
    head = (f"{'preset':<9}{'size':>5}{'batch':>6}{'thr':>4}  {'op':<7}{'dtype':<9}{'mode':<9}{'img/s':>9}"
            f"{'x fp32':>8}{'x 1thr':>8}{'GFLOP/s':>9}{'% peak':>8}{'compile s':>10}")
    lines = [head, "-" * len(head)]
    ratio = lambda v: f"{v:.2f}" if v is not None else "-"  # noqa: E731
    for r in results:
        lines.append(f"{r.preset:<9}{r.size:>5}{r.batch:>6}{r.threads:>4}  {r.op:<7}{r.dtype:<9}{r.mode:<9}"
                     f"{r.images_per_s:>9.2f}{ratio(r.vs_fp32_eager):>8}{ratio(r.vs_one_thread):>8}"
                     f"{r.achieved_flops / 1e9:>9.1f}{100 * r.achieved_flops / r.peak_flops:>7.0f}%"
                     f"{'' if r.compile_s is None else f'{r.compile_s:.1f}':>10}")
    return "\n".join(lines)


def peak_lines(peaks: dict) -> list[str]:
    return [f"matmul peak {dt} threads {t}: {max(v) / 1e9:.1f} GFLOP/s (best of {len(v)}: "
            + ", ".join(f"{p / 1e9:.1f}" for p in v) + ")" for (dt, t), v in sorted(peaks.items(), key=str)]


def profile(args, device: torch.device) -> dict:
    """Self time per kernel of one (preset, size, batch, threads, dtype) cell, eager, for each op asked."""
    preset, size, batch, threads, dtype = args.presets[0], args.sizes[0], args.batches[0], args.threads[0], \
        args.dtypes[0]
    with_threads(threads, device)
    model = build(preset, device)
    x, z = inputs(size, batch, model, device)
    peak = max(gemm_peak(device, DTYPES[dtype]) for _ in range(args.rounds + 1))  # best of a few: other load
    activities = [torch.profiler.ProfilerActivity.CPU] + \
                 ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
    out = {"preset": preset, "size": size, "batch": batch, "threads": threads, "dtype": dtype, "peak_flops": peak,
           "ops": {}}
    print(f"{preset} {size}px batch {batch} {dtype} threads {threads} ({device.type}), eager; matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s; {args.iters} calls profiled after {args.warmup + 1} warm-up")
    with torch.inference_mode():
        for op in args.ops:
            fn, inp = runner(model, op, x, z, dtype)
            flops = flops_by_op(lambda: fn(inp))
            for _ in range(args.warmup + 1):
                fn(inp)
            sync(device)
            with torch.profiler.profile(activities=activities) as prof:
                for _ in range(args.iters):
                    fn(inp)
                sync(device)
            rows = kernel_rows(prof.key_averages(), flops, args.iters, peak, device)
            out["ops"][op] = rows
            print_profile(op, rows, args.top, peak)
    return out


def kernel_rows(events, flops: dict[str, int], iters: int, peak: float, device: torch.device) -> list[dict]:
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = [{"kernel": e.key, "calls": e.count / iters, "self_ms": getattr(e, attr) / 1e3 / iters} for e in events]
    rows = [r for r in rows if r["self_ms"] > 0]
    timed = {r["kernel"] for r in rows}
    for op, kernels in KERNEL_OF.items():
        if op in flops:
            flops = {**flops, **{k: flops[op] for k in kernels if k in timed}}
    total = sum(r["self_ms"] for r in rows)
    for r in rows:
        r["share"] = r["self_ms"] / total
        if r["kernel"] in flops:
            r["gflop"] = flops[r["kernel"]] / 1e9
            r["gflops_per_s"] = r["gflop"] / (r["self_ms"] / 1e3)
            r["of_peak"] = r["gflops_per_s"] * 1e9 / peak
    return sorted(rows, key=lambda r: -r["self_ms"])


def print_profile(op: str, rows: list[dict], top: int, peak: float) -> None:
    total = sum(r["self_ms"] for r in rows)
    counted = [r for r in rows if "gflop" in r]
    mm_ms = sum(r["self_ms"] for r in counted)
    mm_at_peak = sum(r["self_ms"] * min(1.0, r["of_peak"]) for r in counted)
    print(f"\n{op}: {total:.1f} ms per call (self times summed)")
    print(f"  {'kernel':<52}{'calls':>7}{'self ms':>10}{'share':>8}{'GFLOP/s':>10}{'% peak':>8}")
    for r in rows[:top]:
        extra = f"{r['gflops_per_s']:>10.1f}{100 * r['of_peak']:>7.0f}%" if "gflop" in r else ""
        print(f"  {r['kernel'][:51]:<52}{r['calls']:>7.0f}{r['self_ms']:>10.2f}{100 * r['share']:>7.1f}%{extra}")
    if counted:
        rest = total - mm_ms
        print(f"  kernels with counted FLOPs (matmuls, attention, convolution): {100 * mm_ms / total:.0f}% of the "
              f"time at {100 * sum(r['gflop'] for r in counted) / (mm_ms / 1e3) / (peak / 1e9):.0f}% of the matmul "
              f"peak together; everything else {rest:.1f} ms")
        print(f"  at most {total / (rest + mm_at_peak):.2f}x faster if every counted kernel ran at the peak and the "
              f"rest stayed; at most {total / mm_ms:.2f}x if the rest took no time at all")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--presets", type=csv(str), default=["vtp-s"], help="comma-separated (default: vtp-s)")
    ap.add_argument("--sizes", type=csv(int), default=[256], help="resolutions (default: 256)")
    ap.add_argument("--batches", type=csv(int), default=[8], help="batch sizes (default: 8)")
    ap.add_argument("--dtypes", type=csv(str), default=["float32", "bfloat16"], help="float32,bfloat16 (default)")
    ap.add_argument("--threads", type=csv(int), default=[1, 2], help="CPU thread counts (default: 1,2)")
    ap.add_argument("--modes", type=csv(str), default=list(MODES), help="eager,compiled (default)")
    ap.add_argument("--ops", type=csv(str), default=["encode", "decode"],
                    help="encode,decode,clip (default: encode,decode; clip runs the same trunk as encode)")
    ap.add_argument("--compile-ops", type=csv(str), default=["encode"],
                    help="ops that are also timed compiled (default: encode; each op, dtype and thread count "
                         "compiles anew: 14-102 s for vtp-s on a busy 2-core CPU)")
    ap.add_argument("--iters", type=int, default=2, help="calls per round (default: 2)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best is kept (default: 2)")
    ap.add_argument("--warmup", type=int, default=1, help="calls after the first, before timing (default: 1)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--profile", action="store_true",
                    help="instead of the grid: self time per kernel for the first preset, size, batch, threads and "
                         "dtype, each op, eager")
    ap.add_argument("--top", type=int, default=15, help="--profile: kernels shown per op (default: 15)")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args()
    for name, allowed in (("presets", PRESETS), ("dtypes", DTYPES), ("modes", MODES), ("ops", OPS),
                          ("compile_ops", OPS)):
        bad = [v for v in getattr(args, name) if v not in allowed]
        if bad:
            ap.error(f"--{name.replace('_', '-')}: unknown {bad[0]!r}; choose from {', '.join(allowed)}")
    if min(args.sizes + args.batches + args.threads + [args.iters, args.rounds]) <= 0 or args.warmup < 0:
        ap.error("sizes, batches, threads, iters and rounds must be positive")
    device = torch.device(args.device)
    meta = {"torch": torch.__version__, "cpu": platform.processor() or platform.machine(), "device": str(device),
            "args": vars(args)}
    if args.profile:
        out = {"meta": meta, "profile": profile(args, device)}
    else:
        results, peaks = [], {}
        for preset in args.presets:
            model = build(preset, device)
            for size in args.sizes:
                for batch in args.batches:
                    results += bench_cell(model, preset, size, batch, args, device, peaks)
            del model
        add_ratios(results, peaks)
        print(table(results))
        print("\n".join(peak_lines(peaks)))
        out = {"meta": meta, "results": [asdict(r) for r in results],
               "peaks": [{"dtype": dt, "threads": t, "flops": v} for (dt, t), v in peaks.items()]}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"results: {args.json}")


if __name__ == "__main__":
    main()
