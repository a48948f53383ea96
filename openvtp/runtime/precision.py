"""The arithmetic of a command or a training run (`auto|fp32|bf16`): checked without torch, resolved per device.

bf16 runs the model under `torch.autocast(dtype=bfloat16)`: matmuls and attention in bf16, norms and softmax in
float32, weights kept in float32. fp32 is the model's own arithmetic, bit for bit. auto picks per device and per use
(`cuda_default`): training and `eval` take bf16 on CUDA, where it is 1.6x or more faster for the same losses; every
use takes float32 on a CPU, whose figures are then exact.
"""
from __future__ import annotations

import contextlib

from openvtp.errors import OpenVTPError

PRECISIONS = ("auto", "fp32", "bf16")
# How results and reports name a resolved precision.
LABELS = {"fp32": "float32", "bf16": "bf16 autocast"}


def check_precision(precision: str, flag: str = "--precision") -> str:
    if precision not in PRECISIONS:
        raise OpenVTPError(f"{flag} must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def resolve(precision: str, device, cuda_default: str = "fp32") -> str:
    """"fp32" or "bf16": an explicit choice as given; auto is `cuda_default` on CUDA and fp32 on any other device."""
    check_precision(precision)
    if precision != "auto":
        return precision
    return cuda_default if device_type(device) == "cuda" else "fp32"


def device_type(device) -> str:
    """"cuda" of torch.device("cuda:1") or "cuda:1"."""
    return getattr(device, "type", None) or str(device).split(":")[0]


def autocast(device, precision: str):
    """The context a resolved precision runs under on `device`: bf16 autocast, or nothing (fp32)."""
    if precision == "bf16":
        import torch

        return torch.autocast(device_type(device), dtype=torch.bfloat16)
    return contextlib.nullcontext()


def training_autocast(device, precision: str):
    """The context a training step runs under: auto is bf16 on CUDA, float32 elsewhere."""
    return autocast(device, resolve(precision, device, cuda_default="bf16"))
