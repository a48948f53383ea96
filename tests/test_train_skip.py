"""A non-finite step is skipped on the device (no per-step host read): weights, AdamW state and EMA teacher stay
as they were, the run goes on, and `train.max_bad_steps` skipped steps in a row stop it with a checkpoint."""
import json

import pytest
import torch

from openvtp.errors import OpenVTPError
from openvtp.train import loop
from openvtp.train.checkpoint import load_checkpoint
from openvtp.train.task import PretrainTask

from .test_train import tiny_config


def _poison(monkeypatch, bad_steps: set[int]):
    """The task's loss is NaN at the given (0-based) steps."""
    forward = PretrainTask.forward

    def poisoned(self, batch, step):
        terms = forward(self, batch, step)
        if step in bad_steps:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(PretrainTask, "forward", poisoned)


def _run_states(tmp_path, steps: int, *extra) -> dict:
    """{step: task state} of a run that checkpoints every step."""
    cfg = tiny_config(tmp_path, f"train.steps={steps}", "train.ckpt_every=1", "train.keep_last=0", *extra)
    loop.pretrain(cfg)
    return {s: load_checkpoint(tmp_path / "checkpoints" / f"step_{s:07d}") for s in range(1, steps + 1)}


def test_a_nonfinite_step_changes_nothing_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    _poison(monkeypatch, {2})
    states = _run_states(tmp_path, 4, "train.log_every=4")
    before, after = states[2], states[3]
    for key, value in before["task"].items():
        if key.startswith(("model.", "ssl.teacher.", "ssl.head")):
            assert torch.equal(value, after["task"][key]), key  # the student, its heads and the EMA teacher
    opt_before, opt_after = before["optimizer"]["state"], after["optimizer"]["state"]
    assert all(torch.equal(opt_before[k]["step"], opt_after[k]["step"]) for k in opt_before)
    assert all(torch.equal(opt_before[k]["exp_avg"], opt_after[k]["exp_avg"]) for k in opt_before)
    assert not torch.equal(states[4]["task"]["model.trunk.cls_token"], after["task"]["model.trunk.cls_token"])
    assert "1 of the last 4 steps skipped" in "".join(capsys.readouterr())
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4]  # the host read the step's figures only at the log step


def test_consecutive_nonfinite_steps_stop_the_run_at_the_last_good_state(tmp_path, monkeypatch):
    _poison(monkeypatch, {1, 2, 3, 4, 5})
    cfg = tiny_config(tmp_path, "train.steps=8", "train.max_bad_steps=2", "train.log_every=3")
    with pytest.raises(OpenVTPError, match=r"2 consecutive non-finite steps up to step 3.*as step 1"):
        loop.pretrain(cfg)
    saved = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert saved == ["step_0000001"]
