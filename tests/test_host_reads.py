"""Training loops read device values on the host at most once per `train.log_every` steps.

On a GPU every such read makes the host wait for the device; this machine has none, so the test counts the
calls that would wait: scalar reads (`.item()`, `bool()`, `float()`, `int()` of a tensor), ops whose output
shape depends on values (`nonzero`, `masked_select`, boolean indexing) and `.tolist()`. Reads of tensors the
data loader made (they live on the host) are not counted. As `benchmarks/host_syncs.py` does on CUDA, the
count is the difference between runs of three and of two log intervals: set-up, checkpoint and final
evaluation are the same in both.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from openvtp.generation import train as dit_train
from openvtp.train import decoder_finetune, loop

from .test_dit_train_step import dit_config
from .test_dit_train_step import latents  # noqa: F401 (fixture)

from .test_finetune_decoder import _config as finetune_config
from .test_finetune_decoder import stage1  # noqa: F401 (fixture)
from .test_train import tiny_config

LOG_EVERY = 3
WAITING_OPS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
               torch.ops.aten.masked_select.default, torch.ops.aten.unique_consecutive.default,
               torch.ops.aten._unique2.default}


class HostReads(TorchDispatchMode):
    """Counts the waiting ops on tensors whose storage the loader did not make."""

    def __init__(self, loader_storages: set[int]):
        super().__init__()
        self.loader_storages, self.count = loader_storages, 0
        self.in_loader = False  # the loader's own work (its sampler, in this process) runs on the host

    def counts(self, tensor: torch.Tensor) -> bool:
        return not self.in_loader and tensor.untyped_storage().data_ptr() not in self.loader_storages

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in WAITING_OPS and self.counts(args[0]):
            self.count += 1
        return func(*args, **(kwargs or {}))


def host_reads(module, run, monkeypatch, loader: str = "build_loader") -> int:
    """Waiting calls made by `run()`, which runs the loop in `module` (its `loader`, a function or a DataLoader
    class, is watched)."""
    storages: set[int] = set()
    mode = HostReads(storages)
    kept = []  # the loader's batches stay alive, so no later tensor takes one of their addresses
    build = getattr(module, loader)

    def watched_loader(*args, **kwargs):
        batches = iter(build(*args, **kwargs))
        while True:
            mode.in_loader = True
            batch = next(batches, None)
            mode.in_loader = False
            if batch is None:
                return
            storages.update(v.untyped_storage().data_ptr() for v in (batch.values() if isinstance(batch, dict)
                                                                       else batch))
            kept.append(batch)
            yield batch

    tolist = torch.Tensor.tolist

    def counted_tolist(self):
        if mode.counts(self):
            mode.count += 1
        return tolist(self)

    with monkeypatch.context() as m:
        m.setattr(module, loader, watched_loader)
        m.setattr(torch.Tensor, "tolist", counted_tolist)
        with mode:
            run()
    return mode.count


def per_interval(module, run_for_steps, monkeypatch, loader: str = "build_loader") -> int:
    """Waiting calls that one more interval of `LOG_EVERY` steps adds to a run."""
    three = host_reads(module, lambda: run_for_steps(3 * LOG_EVERY, "three"), monkeypatch, loader)
    two = host_reads(module, lambda: run_for_steps(2 * LOG_EVERY, "two"), monkeypatch, loader)
    return three - two


@pytest.mark.slow
def test_pretraining_reads_the_device_once_per_log_interval(tmp_path, monkeypatch):
    def run(steps, name):
        loop.pretrain(tiny_config(tmp_path / name, f"train.steps={steps}", f"train.log_every={LOG_EVERY}",
                                  "train.ckpt_every=1000", "data.workers=1"))

    assert per_interval(loop, run, monkeypatch) == 1


@pytest.mark.slow
def test_decoder_finetuning_reads_the_device_once_per_log_interval(stage1, tmp_path, monkeypatch):  # noqa: F811
    def run(steps, name):
        decoder_finetune.finetune_decoder(finetune_config(
            stage1, tmp_path / name, f"train.steps={steps}", f"train.log_every={LOG_EVERY}", "train.ckpt_every=1000",
            "gan.start_step=1", "data.workers=1"))

    assert per_interval(decoder_finetune, run, monkeypatch) == 1


@pytest.mark.slow
def test_dit_training_reads_the_device_once_per_log_interval(latents, tmp_path, monkeypatch):  # noqa: F811
    def run(steps, name):
        dit_train.train_dit(dit_config(latents, tmp_path / name, f"train.steps={steps}", f"train.log_every={LOG_EVERY}",
                                       "train.ckpt_every=0", "data.workers=1"))

    assert per_interval(dit_train, run, monkeypatch, loader="DataLoader") == 1
