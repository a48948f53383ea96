"""Schedules as pure functions of the step, so a resumed run sees exactly the same values."""
from __future__ import annotations

import math


def warmup_cosine(step: int, total: int, peak: float, final: float, warmup: int) -> float:
    """Linear warm-up from 0 to `peak`, then cosine decay to `final` at `total`."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    progress = min(max((step - warmup) / max(total - warmup, 1), 0.0), 1.0)
    return final + 0.5 * (peak - final) * (1 + math.cos(math.pi * progress))


def cosine(step: int, total: int, start: float, end: float) -> float:
    """Cosine from `start` at step 0 to `end` at `total` (DINO's teacher momentum)."""
    progress = min(max(step / max(total, 1), 0.0), 1.0)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * progress))


def linear_warmup(step: int, warmup: int, start: float, end: float) -> float:
    """Linear from `start` to `end` over `warmup` steps, then constant (DINO's teacher temperature)."""
    if warmup <= 0 or step >= warmup:
        return end
    return start + (end - start) * step / warmup
