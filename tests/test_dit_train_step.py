"""The DiT trainer runs pre-training's skeleton: a non-finite step is skipped on the device (weights, AdamW state and
EMA stay as they were, the run goes on), `train.max_bad_steps` skipped steps in a row stop it at the last good
state, and the host reads the step's figures only at log steps."""
import json

import pytest
import torch

import openvtp.generation.train as dit_train
from openvtp.config.load import load_config
from openvtp.demo.scenes import CaptionedScenes
from openvtp.errors import OpenVTPError
from openvtp.generation.config import GenerationConfig
from openvtp.generation.latents import extract_latents
from openvtp.models import VTPConfig, VTPModel
from openvtp.runtime.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit_latents")
    torch.manual_seed(0)
    return extract_latents(VTPModel(VTPConfig.preset("vtp-tiny")).eval(), CaptionedScenes("train", 64, 16),
                           root / "latents", batch_size=8, stats_num=100, progress=False)


def dit_config(latents, run, *extra) -> GenerationConfig:
    return load_config(GenerationConfig, "dit-demo", [
        "model.arch=dit-tiny-1", f"data.latents_dir={latents}", "data.num_classes=7", "data.workers=0",
        f"train.out_dir={run}", "train.steps=4", "train.batch=8", "train.ckpt_every=1", "train.keep_last=0",
        "train.tensorboard=false", "train.progress=false", *extra])


def _poison(monkeypatch, bad_steps: set[int]):
    """The flow-matching loss is NaN at the given (0-based) steps."""
    loss = dit_train.dit_loss

    def poisoned(cfg, model, train_model, loss_fn, x, y, step, *args):
        terms = loss(cfg, model, train_model, loss_fn, x, y, step, *args)
        if step in bad_steps:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(dit_train, "dit_loss", poisoned)


def test_a_nonfinite_dit_step_changes_nothing_and_the_run_goes_on(latents, tmp_path, monkeypatch, capsys):
    _poison(monkeypatch, {2})
    losses = dit_train.train_dit(dit_config(latents, tmp_path, "train.log_every=4"))
    assert len(losses) == 4 and torch.isnan(torch.tensor(losses[2])) and all(map(torch.isfinite, torch.tensor(
        [losses[0], losses[1], losses[3]])))
    before, after, last = (load_checkpoint(tmp_path / "checkpoints" / f"step_{s:07d}") for s in (2, 3, 4))
    for part in ("model", "ema"):
        assert all(torch.equal(before[part][k], after[part][k]) for k in before[part]), part
        assert not all(torch.equal(after[part][k], last[part][k]) for k in after[part]), part
    opt_before, opt_after = before["optimizer"]["state"], after["optimizer"]["state"]
    assert all(torch.equal(opt_before[k]["step"], opt_after[k]["step"]) for k in opt_before)
    assert all(torch.equal(opt_before[k]["exp_avg_sq"], opt_after[k]["exp_avg_sq"]) for k in opt_before)
    assert "1 of the last 4 steps skipped" in "".join(capsys.readouterr())
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4] and {"loss", "grad_norm", "lr", "images_per_s"} <= set(rows[0])


def test_consecutive_nonfinite_dit_steps_stop_the_run_at_the_last_good_state(latents, tmp_path, monkeypatch):
    _poison(monkeypatch, {1, 2, 3, 4, 5})
    cfg = dit_config(latents, tmp_path, "train.steps=8", "train.max_bad_steps=2", "train.log_every=3",
                     "train.ckpt_every=0")
    with pytest.raises(OpenVTPError, match=r"2 consecutive non-finite steps up to step 3.*as step 1 \(lower optim.lr"):
        dit_train.train_dit(cfg)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_0000001"]
