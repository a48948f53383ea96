"""One-GPU check of pre-training, DiT training and encode / decode: speed, MFU, memory, bf16 against fp32.

    make gpu-check    # torchrun --standalone --nproc_per_node 1 benchmarks/gpu_check.py --out runs/gpu_check.json

On CUDA: pre-training steps of vtp-s and vtp-l at 256 px on the embedded scenes, first in fp32 (the
reference), then in bf16 autocast under DDP and under FSDP2, both wrapped even in a group of one
(`parallel.wrap(force=True)`); LightningDiT-XL/1 steps on 64 x 16 x 16 latents in fp32, then bf16; bf16
encode / decode of vtp-s and vtp-l. Each prints images/s, MFU (a step's FLOPs from torch's flop counter,
over its time and the bf16 matmul peak measured here; also over the H200's nominal peak), peak memory,
and whether each of the first bf16 steps' losses is within TOLERANCE of fp32's (same init, batches and
seeds). Step counts are fixed; the wall-clock budget only skips what is left, loudly. `--reduced`
(automatic without CUDA) runs the same code at tiny sizes over gloo. Exit status 1 when a check fails or
a part fails or is skipped. Batches are built and moved to the device before timing: times are compute.
"""
from __future__ import annotations

import argparse
import copy
import gc
import itertools
import json
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel as DDP

from peak import counted_flops, gemm_peak, seconds_per_call, sync

from openvtp.cli import distributed
from openvtp.config.load import load_config, preset_names
from openvtp.config.schema import PretrainConfig, validate
from openvtp.demo.scenes import CaptionedScenes
from openvtp.generation import seeding
from openvtp.generation.config import GenerationConfig, validate as validate_generation
from openvtp.generation.train import build_dit_for_data, dit_loss, dit_step
from openvtp.losses.flow import FlowMatchingLoss
from openvtp.models import VTPConfig, VTPModel
from openvtp.models.config import PRESETS
from openvtp.runtime import dist
from openvtp.runtime.precision import training_autocast
from openvtp.train import parallel
from openvtp.train.data import build_loader, finish_views
from openvtp.train.flops import pretrain_step_flops
from openvtp.train.loop import split_batch, train_step
from openvtp.train.optim import adamw, pretrain_param_groups
from openvtp.train.task import PretrainTask

# bf16 rounds to 8 significant bits (up to 2^-8 = 0.4% per rounding); over a loss the errors mostly average out
# (the reduced CPU run: <= 7e-4), and 2% leaves room for the deep GPU models yet catches a broken cast or kernel
TOLERANCE = 2e-2
H200_BF16 = 989e12  # NVIDIA's dense bf16 figure for the H200 SXM (no sparsity)


@dataclass(frozen=True)
class Sizes:
    """The fixed work of a mode."""

    pretrain: tuple[tuple[str, int], ...]  # (model preset, batch per device); B_ssl = B/4, B_rec = B/8 as the paper's
    pretrain_overrides: tuple[str, ...]
    dit_overrides: tuple[str, ...]         # on the dit-xl-1-vtp preset
    dit_latent: tuple[int, int, int]       # (C, h, w)
    dit_batch: int                         # per device
    codec: tuple[tuple[str, int], ...]     # (model preset, batch per device) at the preset's image size
    check_steps: int                       # first steps run in fp32 and in bf16 and compared
    timed_steps: int                       # bf16 steps timed after them
    gemm_n: int                            # side of the matmul that measures the peak (0: peak.py's choice)


# Batches fit the fp32 reference steps in 139 GiB: on the CPU, autograd saved 3.2 GiB of fp32 activations for a
# vtp-s step at B = 8, 11.2 GiB for vtp-l at B = 8 and 4.2 GiB for a DiT-XL/1 step at B = 2 (bf16: ~0.6x),
# so ~51 GiB (vtp-s, 128), ~45 GiB (vtp-l, 32) and ~67 GiB (DiT, 32) plus weights and AdamW state.
FULL = Sizes(pretrain=(("vtp-s", 128), ("vtp-l", 32)), pretrain_overrides=(), dit_overrides=(),
             dit_latent=(64, 16, 16), dit_batch=32, codec=(("vtp-s", 64), ("vtp-l", 64)),
             check_steps=3, timed_steps=5, gemm_n=0)
REDUCED = Sizes(pretrain=(("vtp-tiny", 8),),
                pretrain_overrides=("ssl.global_size=64", "ssl.local_size=32", "ssl.n_local=2", "ssl.prototypes=256",
                                    "ssl.head_hidden=64", "ssl.head_bottleneck=32", "recon.lpips_weight=0",
                                    "model.text_context_length=16"),
                dit_overrides=("model.arch=dit-tiny-1",), dit_latent=(8, 4, 4), dit_batch=8,
                codec=(("vtp-tiny", 8),), check_steps=3, timed_steps=1, gemm_n=1024)


class OverBudget(Exception):
    pass


class Check:
    """The run's shared state: device, peaks, budget, and the rows and part statuses it reports."""

    def __init__(self, info: dist.DistInfo, sizes: Sizes, budget_s: float, out: Path, mode: str):
        self.info, self.sizes, self.budget_s, self.out = info, sizes, budget_s, out
        self.device, self.world = info.device, info.world_size
        self.t0 = time.perf_counter()
        cuda = self.device.type == "cuda"
        self.peak = gemm_peak(self.device, torch.bfloat16, n=sizes.gemm_n or None)
        self.nominal = H200_BF16 if cuda and "H200" in torch.cuda.get_device_name(self.device) else None
        self.report = {"mode": mode, "world_size": self.world, "torch": torch.__version__,
                       "device": torch.cuda.get_device_name(self.device) if cuda else "cpu",
                       "tolerance": TOLERANCE, "check_steps": sizes.check_steps, "timed_steps": sizes.timed_steps,
                       "peak_bf16_flops_per_s": self.peak, "nominal_h200_bf16_flops_per_s": H200_BF16,
                       "parts": {}, "rows": []}

    def guard(self) -> None:
        """Stop before more work once the budget is spent (every rank agrees)."""
        if dist.any_rank(time.perf_counter() - self.t0 > self.budget_s, self.device):
            raise OverBudget(f"wall-clock budget of {self.budget_s:.0f} s spent")

    def reset_memory(self) -> None:
        """Free what the last run left (DDP and FSDP hold reference cycles) and restart the peak."""
        if self.device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None

    def row(self, part: str, run: str, batch: int, seconds: float, flops: int, **extra) -> None:
        achieved = flops / seconds / self.world  # per device
        row = dict(part=part, run=run, batch=batch, s_per_step=seconds, images_per_s=batch / seconds,
                   flops_per_step=flops, tflops_per_s=achieved / 1e12, mfu=achieved / self.peak,
                   mfu_nominal=achieved / self.nominal if self.nominal else None,
                   peak_mem_gib=self.peak_memory_gib(), **extra)
        self.report["rows"].append(row)
        if self.info.rank == 0:
            print(format_row(row), flush=True)

    def compared(self, part: str, run: str, batch: int, flops: int, ref: list[float], result: tuple, **extra) -> None:
        """A training run's row with its first losses checked against the fp32 reference's."""
        losses, seconds = result
        n = len(ref)
        diff = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses[:n], ref))
        self.row(part, run, batch, seconds, flops, losses=losses[:n], fp32_losses=ref, max_rel_diff=diff,
                 check="PASS" if diff <= TOLERANCE and all(map(math.isfinite, losses)) else "FAIL", **extra)

    def part(self, name: str, fn) -> None:
        status: dict = {"status": "ok"}
        start = time.perf_counter()
        try:
            self.guard()
            fn()
        except OverBudget as e:
            status = {"status": "skipped", "error": str(e)}
            print(f"!!! SKIPPED {name}: {e} ({time.perf_counter() - self.t0:.0f} s elapsed) !!!", flush=True)
        except Exception as e:  # one failing part must not cost the figures of the others
            traceback.print_exc()
            status = {"status": "failed", "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            print(f"!!! FAILED {name}: {status['error']} !!!", flush=True)
        self.report["parts"][name] = {**status, "seconds": time.perf_counter() - start}
        self.reset_memory()
        self.write()

    def write(self) -> None:
        rows, parts = self.report["rows"], self.report["parts"].values()
        self.report["elapsed_s"] = time.perf_counter() - self.t0
        self.report["passed"] = all(p["status"] == "ok" for p in parts) and all(r.get("check", "PASS") == "PASS"
                                                                               for r in rows)
        if self.info.rank == 0:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text(json.dumps(self.report, indent=1))


def timed(check: Check, step, steps: int) -> tuple[list[float], float | None]:
    """Run step(0..steps-1); returns every step's loss (mean over ranks) and the mean time of the steps
    after the first `check_steps` (None when there are none)."""
    n_check, losses, t0 = check.sizes.check_steps, [], 0.0
    for s in range(steps):
        if s == n_check:
            sync(check.device)
            t0 = time.perf_counter()
        losses.append(step(s).detach().float())
    sync(check.device)
    seconds = (time.perf_counter() - t0) / (steps - n_check) if steps > n_check else None
    return dist.all_reduce_mean(torch.stack(losses)).tolist(), seconds


def pretrain_part(check: Check, preset: str, batch: int) -> None:
    """fp32 reference steps, then bf16 steps under DDP and under FSDP2 from the same init and batches: the
    preset's recipe on the embedded scenes (a random LPIPS backbone: nothing is downloaded)."""
    info, sizes, device = check.info, check.sizes, check.device
    batch *= check.world
    shipped = preset in preset_names("vtp")
    model_keys = [] if shipped else [f"model.{k}={v}" for k, v in PRESETS[preset].items()]
    cfg = load_config(PretrainConfig, preset if shipped else None, [
        *model_keys, *sizes.pretrain_overrides, "data.source=embedded", "data.workers=0", "recon.lpips_backbone=random",
        f"train.batch={batch}", f"ssl.batch={batch // 4}", f"recon.batch={batch // 8}"])
    validate(cfg, check.world)
    steps = sizes.check_steps + sizes.timed_steps
    micro = [[finish_views(mb, device) for mb in split_batch(b, cfg.optim.accum_steps)]
             for b in itertools.islice(build_loader(cfg, info.rank, check.world, 0), steps)]
    flops = pretrain_step_flops(cfg, device)
    torch.manual_seed(cfg.train.seed)
    proto = PretrainTask(cfg, VTPModel(cfg.model))

    def run(strategy: str, precision: str, n: int):
        check.guard()
        check.reset_memory()
        task = copy.deepcopy(proto).to(device).train()
        wrapped = parallel.wrap(task, strategy, device, force=True)
        opt = adamw(pretrain_param_groups(task, cfg.optim), cfg.optim)
        run_cfg = replace(cfg, train=replace(cfg.train, precision=precision))

        def step(s: int) -> torch.Tensor:  # the loop's own step, without its logging
            return train_step(run_cfg, task, wrapped, opt, micro[s], s, info).loss

        return timed(check, step, n), type(wrapped).__name__

    (ref, _), _ = run("ddp", "fp32", sizes.check_steps)
    for strategy in ("ddp", "fsdp"):
        result, wrapped = run(strategy, "bf16", steps)
        check.compared(f"pretrain {preset}", f"{strategy} bf16", batch, flops, ref, result, wrapped=wrapped)


def dit_part(check: Check) -> None:
    """LightningDiT steps as openvtp/generation/train.py takes them, on seeded Gaussian latents."""
    info, sizes, device, world = check.info, check.sizes, check.device, check.world
    cfg = load_config(GenerationConfig, "dit-xl-1-vtp", [*sizes.dit_overrides,
                                                         f"train.batch={sizes.dit_batch * world}"])
    validate_generation(cfg, world)
    tc, oc, fc, shape = cfg.train, cfg.optim, cfg.flow, sizes.dit_latent
    B, b = tc.batch, tc.batch // world
    sl = slice(info.rank * b, (info.rank + 1) * b)
    steps = sizes.check_steps + sizes.timed_steps
    data = []
    for s in range(steps):
        g = seeding.generator(tc.seed, seeding.DATA, s)
        data.append((torch.randn((B, *shape), generator=g)[sl].to(device),
                     torch.randint(0, cfg.data.num_classes, (B,), generator=g)[sl].to(device)))
    torch.manual_seed(tc.seed)
    proto, _ = build_dit_for_data(cfg, shape)
    loss_fn = FlowMatchingLoss(fc.timestep_sampling, fc.lognorm_mu, fc.lognorm_sigma, fc.cos_weight)
    flops = 0

    def run(precision: str, n: int):
        nonlocal flops
        check.guard()
        check.reset_memory()
        model = copy.deepcopy(proto).to(device).train()
        ema = copy.deepcopy(model).requires_grad_(False).eval()
        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model
        opt = torch.optim.AdamW(model.parameters(), lr=oc.lr, betas=(oc.beta1, oc.beta2),
                                weight_decay=oc.weight_decay, fused=True)

        def step(s: int) -> torch.Tensor:  # the trainer's own step
            return dit_step(cfg, model, train_model, ema, opt, loss_fn, *data[s], s, device, precision)[0]["loss"]

        if not flops:  # forward + backward of step 0 (the counter sees no optimiser); parameters stay as they are
            flops = counted_flops(lambda: dit_loss(cfg, model, train_model, loss_fn, *data[0], 0, device,
                                                   precision)["loss"].backward()) * world
            model.zero_grad(set_to_none=True)
        return timed(check, step, n)

    ref, _ = run("fp32", sizes.check_steps)
    check.compared(f"dit {cfg.model.arch}", "bf16", B, flops, ref, run("bf16", steps))


def codec_part(check: Check, preset: str, batch: int) -> None:
    """bf16 encode and decode of embedded scenes at the preset's image size (no text tower)."""
    device = check.device
    cfg = VTPConfig.preset(preset, train_clip=False)
    torch.manual_seed(0)
    model = VTPModel(cfg).to(device).eval()
    scenes = CaptionedScenes("train", size=cfg.image_size, length=batch, seed=0)
    x = torch.stack([scenes[i]["image"] for i in range(batch)]).to(device).float() / 255
    iters, warmup = check.sizes.timed_steps, check.sizes.check_steps
    with torch.inference_mode(), training_autocast(device, "bf16"):
        z = model.encode(x)
        for name, fn in (("encode", lambda: model.encode(x)), ("decode", lambda: model.decode(z))):
            check.guard()
            check.reset_memory()
            seconds = seconds_per_call(fn, iters, warmup, device)
            check.row(f"codec {preset} {cfg.image_size}px", f"{name} bf16", batch * check.world, seconds,
                      counted_flops(fn) * check.world)


def format_row(r: dict) -> str:
    def num(v, f: str, scale: float = 1.0) -> str:
        return "-" if v is None else format(scale * v, f)
    return (f"{r['part']:<24} {r['run']:<12} {r['images_per_s']:>9.1f} {1e3 * r['s_per_step']:>9.1f} "
            f"{r['flops_per_step'] / 1e12:>9.3f} {100 * r['mfu']:>6.1f} {num(r['mfu_nominal'], '6.1f', 100):>6} "
            f"{num(r['peak_mem_gib'], '7.2f'):>7} {num(r.get('max_rel_diff'), '9.2e'):>9} {r.get('check', ''):>5}")


HEADER = (f"{'part':<24} {'run':<12} {'img/s':>9} {'ms/step':>9} {'TFLOP/st':>9} {'MFU%':>6} {'MFU%n':>6} "
          f"{'GiB':>7} {'rel diff':>9} {'check':>5}")


def init_group() -> dist.DistInfo:
    """torchrun's group (as the command line makes it), or a group of one (so that DDP and FSDP2 can wrap a
    single process)."""
    if not distributed.start():
        cuda = torch.cuda.is_available()
        store = {} if "MASTER_ADDR" in os.environ else {"store": torch_dist.HashStore()}
        device_id = {"device_id": torch.device("cuda", 0)} if cuda else {}
        torch_dist.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1, **store, **device_id)
    return dist.info("auto")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/gpu_check.json"))
    ap.add_argument("--reduced", action="store_true", help="tiny sizes (the default without CUDA)")
    ap.add_argument("--budget-s", type=float, default=0.0,
                    help="skip what is left after this long (0: 420 s, reduced 120 s)")
    args = ap.parse_args()
    info = init_group()
    reduced = args.reduced or info.device.type != "cuda"
    sizes = REDUCED if reduced else FULL
    if info.device.type == "cpu":
        torch.set_num_threads(1)  # a smoke test: on a shared CPU, threads mostly wait on each other
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32
    mode = "reduced" if reduced else "full"
    check = Check(info, sizes, args.budget_s or (120.0 if reduced else 420.0), args.out, mode)
    if info.rank == 0:
        nominal = f", nominal H200 {H200_BF16 / 1e12:.0f} TFLOP/s" + ("" if check.nominal else " (not this device)")
        print(f"gpu check ({check.report['mode']}) on {check.report['device']} x{check.world}: measured bf16 matmul "
              f"peak {check.peak / 1e12:.3f} TFLOP/s{nominal}; MFU% over the measured peak, MFU%n over the nominal\n"
              + HEADER, flush=True)
    first, *rest = sizes.pretrain
    check.part(f"pretrain {first[0]}", lambda: pretrain_part(check, *first))
    check.part("dit", lambda: dit_part(check))
    for preset, batch in sizes.codec:
        check.part(f"codec {preset}", lambda p=preset, b=batch: codec_part(check, p, b))
    for preset, batch in rest:
        check.part(f"pretrain {preset}", lambda p=preset, b=batch: pretrain_part(check, p, b))
    passed = check.report["passed"]
    if info.rank == 0:
        print(HEADER)
        for r in check.report["rows"]:
            print(format_row(r))
        for r in check.report["rows"]:
            if "check" in r:
                print(f"bf16 vs fp32, {r['part']} {r['run']}: losses {[round(v, 5) for v in r['losses']]} vs "
                      f"{[round(v, 5) for v in r['fp32_losses']]}, max relative difference {r['max_rel_diff']:.2e} "
                      f"(tolerance {TOLERANCE:.0e}): {r['check']}")
        bad = [f"{k} {v['status']}" for k, v in check.report["parts"].items() if v["status"] != "ok"]
        bad += [f"{r['part']} {r['run']} out of tolerance" for r in check.report["rows"] if r.get("check") == "FAIL"]
        print(f"{'PASSED' if passed else 'FAILED'}{': ' + '; '.join(bad) if bad else ''} in "
              f"{check.report['elapsed_s']:.0f} s; figures in {args.out}")
    distributed.end(finished=True)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
