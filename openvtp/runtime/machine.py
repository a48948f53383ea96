"""What a run computed on. The same code, config and seed give the same digits only on the same kind of
CPU (or GPU) and torch build: BLAS and oneDNN pick other kernels on another CPU, and training carries
their rounding into every figure, so a summary says where its figures come from."""
from __future__ import annotations

import platform
from pathlib import Path

ISA_PREFIXES = ("avx2", "avx512", "amx")


def _cpu() -> tuple[str, list[str]]:
    """The CPU's model name and its vector-instruction flags (from /proc/cpuinfo where there is one)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), []
    fields = dict(line.split(":", 1) for line in text.split("\n\n")[0].splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = sorted(f for f in fields.get("flags", "").split() if f.startswith(ISA_PREFIXES))
    return fields.get("model name", platform.machine()), flags


def describe() -> dict:
    """{"cpu", "isa", "torch", "cpu_capability"} and, with CUDA, "gpu": enough to tell two machine kinds apart."""
    import torch

    cpu, isa = _cpu()
    out = {"cpu": cpu, "isa": isa, "torch": torch.__version__,
           "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
    return out


def label(machine: dict | None) -> str:
    """One line naming a machine kind, for tables ("not recorded" for runs that predate the record)."""
    if not machine:
        return "not recorded"
    isa = [f for f in machine.get("isa", []) if f in ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile")]
    return f"{machine['cpu']} ({', '.join(isa) or machine.get('cpu_capability', '?')}), torch {machine['torch']}" + (
        f", {machine['gpu']}" if "gpu" in machine else "")
