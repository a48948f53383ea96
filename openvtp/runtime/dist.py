"""Ranks and collectives as library code sees them.

The process group belongs to whoever launched the process: the command line (`openvtp.cli.distributed`) under
torchrun, or the caller's own launcher. Library code never creates or destroys it; it asks `info(device)`,
`rank()`, `world_size()` and `is_main()`, and without a group everything runs as rank 0 of 1.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from openvtp.errors import OpenVTPError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def info(device: str = "auto") -> DistInfo:
    """This process's rank, world size and device (`cuda:LOCAL_RANK` for "cuda"), from the live process group."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_dist():
        raise OpenVTPError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but no process group is initialised: run the "
                           "openvtp command under torchrun, or create the group (torch.distributed) first")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    return DistInfo(rank(), world_size(), local_rank, dev)


def is_dist() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1


def rank() -> int:
    return torch_dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return torch_dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_dist():
        torch_dist.barrier()


def all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all_reduce (sum or max) across ranks; returns `t`. Losses use it on statistics, without grad."""
    if is_dist():
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM if op == "sum" else torch_dist.ReduceOp.MAX)
    return t


def all_gather(x: torch.Tensor, with_grad: bool = True) -> torch.Tensor:
    """`x` (B, ...) of every rank concatenated along dim 0 in rank order; `x` itself in one process.

    with_grad=True uses the autograd-aware all_gather: the backward sums, over ranks, the gradient each rank's loss
    sends to this rank's rows. with_grad=False gathers plain copies and puts the local tensor back in its slot, so
    only the local rows carry gradient.
    """
    if not is_dist():
        return x
    if with_grad:
        import torch.distributed.nn.functional as dist_fn

        return torch.cat(dist_fn.all_gather(x), dim=0)
    parts = [torch.empty_like(x) for _ in range(world_size())]
    torch_dist.all_gather(parts, x.detach().contiguous())
    parts[rank()] = x
    return torch.cat(parts, dim=0)


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if is_dist():
        t = t.clone()
        torch_dist.all_reduce(t)
        t /= world_size()
    return t


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_dist():
        t = t.clone()
        torch_dist.all_reduce(t)
    return t


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on one: ranks must agree before a collective (e.g. stopping)."""
    if not is_dist():
        return flag
    return all_reduce_sum(torch.tensor(float(flag), device=device)).item() > 0


def max_over_ranks(value: int, device: torch.device) -> int:
    """The largest `value` of any rank, on every rank."""
    if not is_dist():
        return value
    t = torch.tensor(float(value), device=device)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return int(t.item())
