"""torch.distributed queries shared by the losses; every helper is a no-op in a single process."""

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group is up and has more than one member."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_(x: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all_reduce (sum or max) across ranks, without gradient; returns `x`."""
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return x
