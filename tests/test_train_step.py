"""The pre-training step: micro-batches carry their masked-patch positions (made on the host, so a GPU never waits
for them); a non-finite step is skipped on the device (no per-step host read): weights, AdamW state and EMA teacher
stay as they were, the run goes on, and `train.max_bad_steps` skipped steps in a row stop it with a checkpoint."""
import json

import pytest
import torch

from openvtp.errors import OpenVTPError
from openvtp.losses import IBOTPatchLoss
from openvtp.train import loop
from openvtp.runtime.checkpoint import load_checkpoint
from openvtp.train.data import build_loader
from openvtp.train.objectives.ssl import masked_rows
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


def test_micro_batches_carry_the_positions_of_the_rows_their_masks_select(tmp_path):
    cfg = tiny_config(tmp_path, "ssl.batch=4", "train.batch=8")
    batch = next(iter(build_loader(cfg, 0, 1, 0)))
    assert batch["ssl_masks"].any()
    masks = batch["ssl_masks"]
    for n in (1, 2):
        for part in loop.split_batch(dict(batch), n):
            assert torch.equal(part["ssl_mask_index"], part["ssl_masks"].reshape(-1).nonzero().squeeze(1))
            assert part["ssl_masks"].shape[0] == part["ssl_globals"].flatten(0, 1).shape[0]
    # the positions pick the rows and iBOT weights the boolean masks picked, so the SSL terms keep their bits
    index = loop.split_batch(dict(batch), 1)[0]["ssl_mask_index"]
    tokens = torch.randn(masks.shape[0], 1 + masks.shape[1], 8)
    assert masks.sum() > 0 and torch.equal(masked_rows(tokens, index), tokens[:, 1:][masks])
    per_image = masks.sum(dim=1, keepdim=True).clamp(min=1)
    assert torch.equal(IBOTPatchLoss.mask_weights(masks, index), (1.0 / per_image).expand(masks.shape)[masks])


def test_gradient_accumulation_steps_over_micro_batches(tmp_path):
    loop.pretrain(tiny_config(tmp_path, "train.steps=2", "optim.accum_steps=2"))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
