"""`train.parallel=fsdp`: same losses as one process, full single-process checkpoints and export, exact resume."""
import shutil

import pytest
import torch
from safetensors.torch import load_file

from openvtp.config.schema import validate
from openvtp.errors import OpenVTPError
from openvtp.models import VTPModel

from .test_train import TINY, _cli, _losses, _torchrun, tiny_config

# 4 steps, a checkpoint every 2, grids and a quick eval on rank 0 at step 2 and 4; KoLeo over the gathered
# batch and iBOT over all global crops (per-rank KoLeo, and iBOT over each rank's masked crops, depend on the
# world size by design)
ARGS = ["pretrain", "--config", "demo", *TINY, "train.steps=4", "train.ckpt_every=2", "train.image_every=2",
        "eval.every=2", "eval.images=8", "ssl.drop_path=0", "ssl.koleo_batch=global", "ssl.ibot_normalize=all"]


def _ok(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same run in one process and as two FSDP processes (the same global batch)."""
    root = tmp_path_factory.mktemp("fsdp")
    _ok(_cli(*ARGS, f"train.out_dir={root / 'one'}"))
    _ok(_torchrun(*ARGS, "train.parallel=fsdp", f"train.out_dir={root / 'fsdp'}"))
    return root


def _state(run, step):
    return torch.load(run / "checkpoints" / f"step_{step:07d}" / "state.pt", weights_only=True)


def _close(a: float, b: float) -> bool:
    return abs(a - b) < 1e-4 * max(1.0, abs(a))


@pytest.mark.slow
def test_fsdp_losses_equal_one_process(runs):
    one, two = _losses(runs / "one"), _losses(runs / "fsdp")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    assert abs(one[1] - two[1]) < 1e-4, (one[1], two[1])
    # later steps include the sharded AdamW step, grad clipping and the EMA teacher update
    assert all(_close(one[s], two[s]) for s in one), (one, two)
    assert sorted(p.name for p in (runs / "fsdp" / "images").iterdir()) == ["recon_0000002.png", "recon_0000004.png"]


@pytest.mark.slow
def test_fsdp_with_activation_checkpointing_gives_the_same_losses(runs, tmp_path):
    # each sharded block is checkpointed around its own call: the recompute in backward finds the
    # parameters FSDP gathered for it
    _ok(_torchrun(*ARGS, "train.steps=2", "eval.every=0", "train.parallel=fsdp",
                  "train.activation_checkpointing=true", f"train.out_dir={tmp_path}"))
    one, ac = _losses(runs / "one"), _losses(tmp_path)
    assert sorted(ac) == [1, 2]
    assert all(_close(one[s], ac[s]) for s in ac), (one, ac)


@pytest.mark.slow
def test_fsdp_checkpoint_and_tokenizer_are_full_single_process_state(runs):
    a, b = _state(runs / "one", 4), _state(runs / "fsdp", 4)
    assert sorted(a) == sorted(b)
    assert list(a["task"]) == list(b["task"])
    for k, v in a["task"].items():
        assert v.shape == b["task"][k].shape and v.dtype == b["task"][k].dtype, k
        assert torch.allclose(v.float(), b["task"][k].float(), atol=1e-4), k
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert sorted(a["optimizer"]["state"]) == sorted(b["optimizer"]["state"])
    for i, entry in a["optimizer"]["state"].items():
        assert {k: v.shape for k, v in entry.items()} == {k: v.shape for k, v in b["optimizer"]["state"][i].items()}
    x, y = (load_file(runs / r / "tokenizer" / "model.safetensors") for r in ("one", "fsdp"))
    assert list(x) == list(y) and all(x[k].shape == y[k].shape for k in x)
    VTPModel.from_pretrained(runs / "fsdp" / "tokenizer")


@pytest.mark.slow
def test_fsdp_resume_latest_continues_exactly(runs, tmp_path):
    run = tmp_path / "resumed"
    shutil.copytree(runs / "fsdp", run)
    shutil.rmtree(run / "checkpoints" / "step_0000004")
    _ok(_torchrun(*ARGS, "train.parallel=fsdp", "train.resume=latest", f"train.out_dir={run}"))
    one, resumed = _losses(runs / "one"), _losses(run)
    assert sorted(resumed) == [1, 2, 3, 4]
    assert all(_close(one[s], resumed[s]) for s in (3, 4)), (one, resumed)
    assert (run / "checkpoints" / "step_0000004" / "state.pt").is_file()


def test_unknown_parallel_strategy_fails_before_work(tmp_path):
    with pytest.raises(OpenVTPError, match="config .train.parallel.: must be ddp or fsdp"):
        validate(tiny_config(tmp_path, "train.parallel=foo"))
    run = tmp_path / "run"
    proc = _cli("pretrain", "--config", "demo", *TINY, "train.parallel=foo", f"train.out_dir={run}")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert err.strip().splitlines() == ["openvtp pretrain: error: config 'train.parallel': must be ddp or fsdp, got 'foo'"]
    assert not run.exists()
