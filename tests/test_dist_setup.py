"""Who owns the process group: the command line under torchrun, the caller's launcher otherwise; never the library."""
import pytest
import torch.distributed as torch_dist

from openvtp.cli.distributed import process_group
from openvtp.errors import OpenVTPError
from openvtp.runtime import dist
from openvtp.train.loop import pretrain

from .test_train import tiny_config


def test_outside_torchrun_the_command_line_makes_no_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with process_group():
        assert not torch_dist.is_initialized()
    assert dist.info("cpu").world_size == 1


def test_a_launched_process_without_a_group_is_one_line(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(OpenVTPError, match="WORLD_SIZE=2 but no process group is initialised"):
        dist.info("cpu")


@pytest.mark.slow
def test_a_library_run_inside_the_callers_group_leaves_it_alive(tmp_path):
    """As inside someone else's launcher: the caller's group is still there when pretrain returns."""
    torch_dist.init_process_group("gloo", rank=0, world_size=1, store=torch_dist.HashStore())
    try:
        pretrain(tiny_config(tmp_path, "train.steps=1", "eval.images=8"))
        assert torch_dist.is_initialized()
    finally:
        torch_dist.destroy_process_group()
