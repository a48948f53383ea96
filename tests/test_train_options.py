"""`train.activation_checkpointing` and `train.compile`: the same losses and gradients as without them."""
import dataclasses
from pathlib import Path

import pytest
import torch

from openvtp.config.load import load_config
from openvtp.config.schema import FinetuneDecoderConfig, validate_finetune
from openvtp.errors import OpenVTPError
from openvtp.models import VTPModel
from openvtp.models.layers import checkpointing
from openvtp.train import parallel
from openvtp.train.data import build_loader
from openvtp.train import loop
from openvtp.train.loop import pretrain
from openvtp.train.task import PretrainTask

from .test_train import _losses, tiny_config

# stochastic depth on: a recomputed or compiled block must draw the same samples as the eager one
DROP_PATH = "ssl.drop_path=0.2"
AE = ("clip.weight=0", "ssl.weight=0")  # two kinds of block input only: the cheapest model to compile


def _one_step(cfg, **options):
    """Loss and gradients of one forward + backward of a fresh task (same init and batch for every call)."""
    torch.manual_seed(0)
    task = PretrainTask(cfg, VTPModel(cfg.model))
    wrapped = parallel.prepare(task, dataclasses.replace(cfg.train, **options), torch.device("cpu"))
    batch = next(iter(build_loader(cfg, 0, 1, 0)))
    torch.manual_seed(1)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        terms = wrapped(batch, 0)
    terms["loss"].backward()
    grads = {n: p.grad for n, p in task.named_parameters() if p.grad is not None}
    return terms["loss"].item(), grads, sum(saved)


def _assert_grads_close(a: dict, b: dict, rtol: float) -> None:
    assert sorted(a) == sorted(b)
    for name, g in a.items():
        err = (g - b[name]).abs().max().item()
        assert err <= rtol * max(g.abs().max().item(), 1e-8), (name, err)


def _pretrain_losses(monkeypatch, cfg) -> dict[int, float]:
    """Per-step losses of `pretrain(cfg)`; the held-out evaluation at the end is skipped (6 s, no loss in it)."""
    monkeypatch.setattr(loop, "_finish", lambda *args, **kwargs: {})
    pretrain(cfg)
    return _losses(Path(cfg.train.out_dir))


def _assert_losses_close(a: dict, b: dict, rtol: float) -> None:
    assert sorted(a) == sorted(b) and len(a) >= 3
    for step in a:
        assert abs(a[step] - b[step]) <= rtol * max(1.0, abs(a[step])), (step, a[step], b[step])


def test_activation_checkpointing_keeps_loss_and_gradients_and_saves_fewer_activations(tmp_path):
    cfg = tiny_config(tmp_path, DROP_PATH)
    loss, grads, saved = _one_step(cfg)
    loss_ac, grads_ac, saved_ac = _one_step(cfg, activation_checkpointing=True)
    assert abs(loss - loss_ac) <= 1e-6 * abs(loss)
    _assert_grads_close(grads, grads_ac, 1e-6)  # includes the recomputed stochastic-depth draws
    assert saved_ac < 0.7 * saved, (saved_ac, saved)  # blocks keep only their inputs for the backward


def test_activation_checkpointing_gives_the_same_per_step_losses(tmp_path, monkeypatch):
    calls = []
    real = checkpointing.checkpoint
    monkeypatch.setattr(checkpointing, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    args = (DROP_PATH, "train.steps=3")
    plain = _pretrain_losses(monkeypatch, tiny_config(tmp_path / "plain", *args))
    assert not calls
    ac = _pretrain_losses(monkeypatch, tiny_config(tmp_path / "ac", *args, "train.activation_checkpointing=true"))
    assert calls  # the loop's step ran through the checkpointed blocks
    _assert_losses_close(plain, ac, 1e-6)


@pytest.mark.slow
def test_compile_gives_the_same_losses_and_gradients(tmp_path, monkeypatch, one_thread):
    torch._dynamo.reset()
    args = (*AE, "recon.drop_path=0.2", "train.steps=3")
    cfg = tiny_config(tmp_path / "eager", *args)
    loss, grads, _ = _one_step(cfg)
    loss_c, grads_c, _ = _one_step(cfg, compile=True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # the step did run compiled blocks
    assert abs(loss - loss_c) <= 1e-4 * abs(loss)
    _assert_grads_close(grads, grads_c, 1e-4)
    eager = _pretrain_losses(monkeypatch, cfg)
    compiled = _pretrain_losses(monkeypatch, tiny_config(tmp_path / "compiled", *args, "train.compile=true"))
    _assert_losses_close(eager, compiled, 1e-4)


def test_compile_without_a_cxx_compiler_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(parallel.shutil, "which", lambda name: None)
    cfg = tiny_config(tmp_path)
    task = PretrainTask(cfg, VTPModel(cfg.model))
    with pytest.raises(OpenVTPError, match="train.compile on CPU needs a C\\+\\+ compiler"):
        parallel.prepare(task, dataclasses.replace(cfg.train, compile=True), torch.device("cpu"))


@pytest.mark.parametrize("option", ["train.compile=true", "train.activation_checkpointing=true"])
def test_decoder_finetuning_rejects_the_pretraining_options(option):
    cfg = load_config(FinetuneDecoderConfig, None, ["init=x", option])
    with pytest.raises(OpenVTPError, match="apply to pre-training only"):
        validate_finetune(cfg)
