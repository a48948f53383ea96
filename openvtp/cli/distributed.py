"""The process group of a command launched by torchrun: created before the command runs and torn down after it
on every exit path (done, error, signal), while the interpreter is still whole. Library code only uses it.

Tearing down is more than `destroy_process_group()`. DTensor (FSDP2's parameters) keeps sharding plans and mesh
topology in module-level caches that hold the DeviceMesh, and the mesh holds its process group; a DDP reducer
holds its group in a reference cycle. Left alone, the gloo group and its threads (TCP loop, run loops) outlive
the command until interpreter finalisation, where they are destroyed in no fixed order: a rank that had done
all its work could then die in `std::terminate`. Emptying those caches and collecting cycles destroys the group
here instead, joining its threads.
"""
from __future__ import annotations

import gc
import os
import sys
from contextlib import contextmanager


def launched() -> bool:
    """Whether torchrun (or another launcher setting WORLD_SIZE) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start() -> bool:
    """Create the launcher's process group (gloo, and NCCL for CUDA tensors where there is a GPU); returns
    whether this call created it (False outside torchrun, or when the caller already has a group)."""
    if not launched():
        return False
    import torch
    import torch.distributed as torch_dist

    if torch_dist.is_initialized():
        return False
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "cpu:gloo,cuda:nccl"
    torch_dist.init_process_group(backend)
    return True


def end(finished: bool) -> None:
    """Destroy the process group and everything that keeps it alive. finished: the command returned normally
    on this rank; then the ranks first wait for each other, so none closes its connections while another still
    uses them (after an error or a signal they do not: a peer may be gone)."""
    import torch.distributed as torch_dist

    if not torch_dist.is_initialized():
        return
    if finished:
        torch_dist.barrier()
    _drop_dtensor_caches()
    torch_dist.destroy_process_group()
    gc.collect()


def _drop_dtensor_caches() -> None:
    if "torch.distributed.tensor" not in sys.modules:  # no DTensor was made: nothing cached
        return
    from torch.distributed.tensor import _collective_utils, _redistribute
    from torch.distributed.tensor.debug import _clear_sharding_prop_cache

    _clear_sharding_prop_cache()
    _redistribute.clear_redistribute_planner_cache()
    _redistribute._gen_transform_infos.cache_clear()
    _collective_utils.MeshTopoInfo.build_from_mesh.cache_clear()


@contextmanager
def process_group():
    """Around a command: the group exists while it runs (under torchrun) and is gone when it returns."""
    created = start()
    finished = False
    try:
        yield
        finished = True
    finally:
        if created:
            end(finished)
