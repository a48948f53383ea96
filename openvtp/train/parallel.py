"""How `pretrain` spreads the task over ranks: `train.parallel=ddp` (replicas) or `fsdp` (FSDP2 shards).

DDP keeps a full copy of the model, gradients and AdamW state on every rank. FSDP2 (`fully_shard`)
splits every parameter, its gradient and its optimizer state on dim 0 over the ranks and gathers
one transformer block at a time for forward and backward. Everything a run writes is the same
under both: checkpoints hold full tensors keyed as in a single process (so a run can resume under
either strategy), and the exported tokenizer is a plain `VTPModel`.
"""
from __future__ import annotations

import os
import shutil
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP

from openvtp.config.schema import TrainConfig
from openvtp.errors import OpenVTPError
from openvtp.models import VTPModel
from openvtp.models.config import VTPConfig

from openvtp.runtime import dist
from openvtp.runtime.checkpoint import load_checkpoint, restore_checkpoint
from .task import PretrainTask

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def transformer_blocks(task: PretrainTask) -> list[nn.Module]:
    """FSDP's units: the blocks of the vision trunk, text tower, pixel decoder and the SSL teacher's trunk."""
    m = task.model
    lists = [m.trunk.blocks]
    if m.config.train_clip:
        lists.append(m.text_transformer.resblocks)
    if m.pixel_decoder is not None:
        lists.append(m.pixel_decoder.blocks)
    if task.ssl is not None:
        lists.append(task.ssl.teacher["trunk"].blocks)
    return [block for blocks in lists for block in blocks]


def wrap(task: PretrainTask, strategy: str, device: torch.device, force: bool = False) -> nn.Module:
    """The module the loop calls: `task` itself for one process, a DDP replica, or `task` sharded in place.

    `force` wraps in a process group of one too (benchmarks/gpu_check.py runs DDP and FSDP2 on one
    GPU); it needs torch.distributed initialised. The frozen EMA teacher is sharded like the student
    (its blocks are units, the rest joins the root), so each rank holds the same dim-0 slice of a
    teacher parameter as of its student parameter, and the EMA update is a local lerp of shards with
    no communication. Build the optimizer after this call: FSDP replaces the parameters.
    """
    if dist.world_size() == 1 and not force:
        return task
    if not torch_dist.is_initialized():
        raise OpenVTPError(f"train.parallel={strategy} at world size 1 needs an initialised process group")
    if strategy == "ddp":
        return DDP(task, device_ids=[device.index] if device.type == "cuda" else None)
    task.fsdp_scalars = _scalars_to_vectors(task)
    mesh = init_device_mesh(device.type, (torch_dist.get_world_size(),))
    for block in transformer_blocks(task):
        fully_shard(block, mesh=mesh)
    return fully_shard(task, mesh=mesh)


def prepare(task: PretrainTask, train: TrainConfig, device: torch.device) -> nn.Module:
    """`wrap` plus the step's memory and speed options: the module the loop calls.

    `train.activation_checkpointing` recomputes every student block (trunk, text tower, pixel
    decoder) in the backward pass; each block is checkpointed around its own call, so under FSDP
    the recompute finds the parameters the pre-backward hook gathered. `train.compile` compiles
    each transformer block (regional compilation, PyTorch's advice for FSDP2, used under every
    strategy): identical blocks share one graph per input shape, and module names and state dicts
    stay as they are. The task as a whole is not compiled: its loss code specialises on the step
    (one recompile a step) and RoPE's table cache breaks the graph.
    """
    if train.activation_checkpointing:
        task.model.set_grad_checkpointing(True)
    wrapped = wrap(task, train.parallel, device)
    if train.compile:
        if device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX"), "g++", "clang++") if c):
            raise OpenVTPError("train.compile on CPU needs a C++ compiler (g++ or clang++ on PATH, or $CXX)")
        teacher = set(task.ssl.teacher["trunk"].blocks) if task.ssl is not None else set()
        for block in transformer_blocks(task):
            compiled = torch.compile(block.forward, dynamic=False)
            block.forward = compiled if block in teacher else _when_training(compiled, block.forward)
    return wrapped


def _when_training(compiled, eager):
    """A student block runs compiled where it trains (autograd on); grids and evaluation, on other
    shapes and without autograd, stay eager instead of compiling graphs they would use a few times."""
    def forward(*args):
        return compiled(*args) if torch.is_grad_enabled() else eager(*args)
    return forward


def _scalars_to_vectors(task: nn.Module) -> frozenset[str]:
    """FSDP2 cannot shard 0-dim parameters (the CLIP logit scale and bias): hold them as 1-element
    vectors, which broadcast the same way in the loss; state dicts turn them back into scalars."""
    names = []
    for prefix, module in task.named_modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if p.ndim == 0:
                setattr(module, name, nn.Parameter(p.detach().reshape(1), requires_grad=p.requires_grad))
                names.append(f"{prefix}.{name}" if prefix else name)
    return frozenset(names)


def _reshape(state: dict, names: frozenset[str], shape: tuple[int, ...]) -> dict:
    """Model state with the parameters in `names` (and their optimizer moments) reshaped."""
    def fix(name, value):
        if name not in names:
            return value
        if isinstance(value, dict):  # an optimizer entry: moments follow the parameter, 'step' stays 0-dim
            return {k: v.reshape(shape) if k != "step" and torch.is_tensor(v) else v for k, v in value.items()}
        return value.reshape(shape)
    return {k: fix(k, v) for k, v in state.items()}


def is_sharded(module: nn.Module) -> bool:
    return isinstance(module, FSDPModule)


def grad_sync(wrapped: nn.Module, last_micro_step: bool):
    """Context for one micro-step's forward: DDP skips the all-reduce until the last one.

    FSDP reduce-scatters every micro-step instead: skipping it would keep full, unsharded
    gradients on every rank, which is the memory FSDP exists to save.
    """
    if isinstance(wrapped, DDP) and not last_micro_step:
        return wrapped.no_sync()
    return nullcontext()


def _names(task: nn.Module, opt: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the optimizer's order: a single-process state dict's index i is names[i]."""
    by_param = {p: n for n, p in task.named_parameters()}
    return [by_param[p] for group in opt.param_groups for p in group["params"]]


def full_state_dicts(task: nn.Module, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Task and optimizer state as one process has them: full tensors, optimizer state keyed by index.

    Under FSDP this gathers the shards (a collective) onto rank 0's CPU; other ranks get empty dicts.
    """
    if not is_sharded(task):
        return task.state_dict(), opt.state_dict()
    model_sd = get_model_state_dict(task, options=_FULL)
    opt_sd = get_optimizer_state_dict(task, opt, options=_FULL)
    if not opt_sd:
        return model_sd, opt_sd
    scalars = task.fsdp_scalars
    index = {name: i for i, name in enumerate(_names(task, opt))}
    by_index = {"state": {index[k]: v for k, v in _reshape(opt_sd["state"], scalars, ()).items()},
                "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in opt_sd["param_groups"]]}
    return _reshape(model_sd, scalars, ()), by_index


def restore(path: Path, task: nn.Module, opt: torch.optim.Optimizer) -> int:
    """Load a checkpoint (written by any strategy) into the task and optimizer; returns its step.

    Under FSDP only rank 0 reads the file; the tensors are broadcast and each rank keeps its shards.
    """
    if not is_sharded(task):
        return restore_checkpoint(path, {"task": task, "optimizer": opt})
    state, problem = None, None
    if dist.rank() == 0:
        try:
            state = load_checkpoint(path)
            state["task"] = _reshape(state["task"], task.fsdp_scalars, (1,))
            expected = {k: tuple(v.shape) for k, v in task.state_dict().items()}
            found = {k: tuple(v.shape) for k, v in state["task"].items()}
            if found != expected:
                diff = sorted(set(found.items()) ^ set(expected.items()))[0][0]
                problem = f"checkpoint {path} does not match this config: first difference at '{diff}'"
        except OpenVTPError as e:
            problem = str(e)
    shared = [problem, int(state["step"]) if state is not None else 0]
    torch_dist.broadcast_object_list(shared, src=0)
    if shared[0]:
        raise OpenVTPError(shared[0])
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(task, state["task"] if state is not None else {}, options=options)
    opt_sd: dict = {}
    if state is not None:
        names, saved = _names(task, opt), state["optimizer"]
        opt_sd = {"state": _reshape({names[i]: v for i, v in saved["state"].items()}, task.fsdp_scalars, (1,)),
                  "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in saved["param_groups"]]}
    set_optimizer_state_dict(task, opt, opt_sd, options=options)
    return shared[1]


def full_model(task: nn.Module, config: VTPConfig, device: torch.device) -> VTPModel | None:
    """A plain copy of the sharded model with full weights on rank 0 (None elsewhere); a collective.

    Grids, evaluation and export run on rank 0 alone, and a forward through the FSDP model on
    one rank would wait forever for the others' shards, so rank 0 works on this copy.
    """
    weights = get_model_state_dict(task.model, options=_FULL)
    if dist.rank() != 0:
        return None
    copy = VTPModel(config).to(device)
    shapes = {k: v.shape for k, v in copy.state_dict().items()}
    copy.load_state_dict({k: v.reshape(shapes[k]) if k in shapes else v for k, v in weights.items()})
    return copy
