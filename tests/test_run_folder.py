"""A run folder belongs to one live run; SIGINT / SIGTERM stop at a step boundary and resume exactly; files follow
the umask (issue 18)."""
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from openvtp.cli import main
from openvtp.runtime.run_folder import LOCK, take_lock

from .conftest import CONFORMANCE
from .test_train import TINY, _losses, _torchrun

MODEL = str(CONFORMANCE / "tiny-swiglu-rms")
ARGS = ["pretrain", "--config", "demo", *TINY, "train.steps=5", "train.ckpt_every=100", "eval.images=8"]
# Runs signalled from outside once a few steps are logged: long enough that the signal lands well before the end
# on a loaded machine (5 steps take ~0.3 s, so a 5-step run could finish before a polling test sends it).
LONG = 40


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Losses of an uninterrupted run (in this process, like the resumed runs it is compared with)."""
    run = tmp_path_factory.mktemp("straight")
    assert main([*ARGS, f"train.out_dir={run}"]) == 0
    return _losses(run)


def term_self() -> None:
    """SIGTERM to this process, as a scheduler sends it; only where openvtp catches it (else it would end pytest)."""
    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None)
    os.kill(os.getpid(), signal.SIGTERM)


def assert_same_losses(a: dict, b: dict, steps: int = 5) -> None:
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    for step in a:
        assert abs(a[step] - b[step]) < 1e-5 * max(1.0, abs(a[step])), (step, a[step], b[step])


def resume_argv(stderr: str, signame: str, step: int, command: str = "pretrain") -> list[str]:
    """The one line an interrupted run prints, checked, and the command it says resumes the run."""
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(f"openvtp {command}: stopped by {signame}; checkpoint of step {step} in "), line
    argv = shlex.split(line.split("; resume with: ", 1)[1])
    assert argv[:2] == ["openvtp", command] and argv[-1] == "train.resume=latest"
    return argv[1:]


def wait_for_logged_steps(run: Path, proc: subprocess.Popen, steps: int) -> None:
    """Until `run`'s metrics.jsonl has `steps` rows (the process must still be running)."""
    deadline = time.time() + 240
    while not (run / "metrics.jsonl").is_file() or len((run / "metrics.jsonl").read_text().splitlines()) < steps:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.05)


@pytest.mark.slow
def test_ctrl_c_stops_at_a_step_boundary_and_resumes_with_the_same_losses(tmp_path, capsys):
    """SIGINT to the whole process group, as Ctrl-C sends it: main process and its data-loader worker."""
    args = [*ARGS, f"train.steps={LONG}"]
    assert main([*args, f"train.out_dir={tmp_path / 'straight'}"]) == 0
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "openvtp", *args, "data.workers=1", f"train.out_dir={run}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    wait_for_logged_steps(run, proc, 2)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    step = max(_losses(run))
    assert 2 <= step < LONG and [p.name for p in (run / "checkpoints").iterdir()] == [f"step_{step:07d}"]
    assert not (run / LOCK).exists()
    assert main(resume_argv(err, "SIGINT", step)) == 0
    assert_same_losses(_losses(tmp_path / "straight"), _losses(run), LONG)


@pytest.mark.slow
def test_sigterm_stops_at_a_step_boundary_and_resumes_with_the_same_losses(tmp_path, straight, monkeypatch, capsys):
    """The scheduler's SIGTERM, sent here from inside step 2 (0-based) so that the test needs no second process."""
    import openvtp.train.loop as loop

    schedule = loop.warmup_cosine

    def term_at_step_2(step, *args):
        if step == 2:
            term_self()
        return schedule(step, *args)

    monkeypatch.setattr(loop, "warmup_cosine", term_at_step_2)
    argv = [*ARGS, f"train.out_dir={tmp_path}", "train.resume=latest"]
    assert main(argv) == 128 + signal.SIGTERM
    monkeypatch.setattr(loop, "warmup_cosine", schedule)
    err = capsys.readouterr().err
    assert sorted(_losses(tmp_path)) == [1, 2, 3]
    assert main(resume_argv(err, "SIGTERM", 3)) == 0
    assert_same_losses(straight, _losses(tmp_path))
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers are given back


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_both_ranks_at_one_step_and_resumes_with_the_same_losses(tmp_path):
    """A scheduler signals torchrun, which passes SIGTERM on to its workers: they agree on the step to stop
    after, write one checkpoint, and a resumed two-process run continues to the losses of one process."""
    args = [*ARGS, f"train.steps={LONG}", "ssl.drop_path=0", "ssl.koleo_batch=global",
            "ssl.ibot_normalize=all"]  # 2 processes = 1
    assert main([*args, f"train.out_dir={tmp_path / 'one'}"]) == 0
    run = tmp_path / "run"
    proc = _torchrun(*args, f"train.out_dir={run}")
    wait_for_logged_steps(run, proc, 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode != 0 and "stopped by SIGTERM; checkpoint of step" in err, err[-3000:]
    step = max(_losses(run))
    assert 2 <= step < LONG and [p.name for p in (run / "checkpoints").iterdir()] == [f"step_{step:07d}"]
    assert not (run / LOCK).exists()
    resumed = _torchrun(*args, f"train.out_dir={run}", "train.resume=latest")
    _, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err[-3000:]
    one, two = _losses(tmp_path / "one"), _losses(run)
    assert sorted(one) == sorted(two) == list(range(1, LONG + 1))
    assert all(abs(one[s] - two[s]) < 1e-4 * max(1.0, abs(one[s])) for s in one), (one, two)


def test_a_second_run_into_a_live_folder_fails_with_one_line(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    fd = take_lock(tmp_path / LOCK, "train.out_dir")  # this process holds it, as a live run would
    try:
        assert main([*ARGS, f"train.out_dir={tmp_path}"]) == 1
    finally:
        os.close(fd)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"train.out_dir {tmp_path} is in use by a live run: pid {os.getpid()} on " \
                               f"{socket.gethostname()}" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", LOCK]  # untouched
    assert (tmp_path / "metrics.jsonl").read_text() == "{}\n"


def test_a_stale_lock_is_reported_and_taken_over(tmp_path, caplog):
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": 0}))
    leftover = tmp_path / "checkpoints" / ".step_0000002.tmp-k1ll3d"  # a checkpoint write killed half-way
    leftover.mkdir(parents=True)
    (leftover / "state.pt").write_bytes(b"half")
    older = tmp_path / "checkpoints" / ".step_0000001.x7yz2ab_"  # the same, as openvtp named it before issue 18
    older.mkdir()
    with caplog.at_level("WARNING", logger="openvtp"):
        assert main([*ARGS, "train.steps=1", f"train.out_dir={tmp_path}", "train.resume=latest"]) == 0
    assert f"taking over a stale lock (pid {dead.pid} on {socket.gethostname()}" in caplog.text
    assert "no checkpoint in" in caplog.text and "starting at step 0" in caplog.text
    assert not leftover.exists() and not older.exists() and not (tmp_path / LOCK).exists()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_0000001"]


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_files_and_folders_follow_the_umask(tmp_path, mask):
    from openvtp.models import VTPConfig, VTPModel
    from openvtp.runtime.checkpoint import save_checkpoint, write_json_atomic

    old = os.umask(mask)
    try:
        VTPModel(VTPConfig.preset("vtp-tiny")).save_pretrained(tmp_path / "tokenizer")
        save_checkpoint(tmp_path, 1, {"w": torch.zeros(2)}, "a: 1\n")
        write_json_atomic({"a": 1}, tmp_path / "summary.json")
    finally:
        os.umask(old)
    files = [tmp_path / "tokenizer" / "model.safetensors", tmp_path / "tokenizer" / "config.json",
             tmp_path / "checkpoints" / "step_0000001" / "state.pt", tmp_path / "summary.json"]
    folders = [tmp_path / "tokenizer", tmp_path / "checkpoints" / "step_0000001"]
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o666 & ~mask)}
    assert {oct(p.stat().st_mode & 0o777) for p in folders} == {oct(0o777 & ~mask)}


def test_extraction_interrupted_inside_a_shard_resumes_to_the_same_latents(tmp_path):
    """SIGTERM raised while batch 2 is read: the shard's first part is kept and the next run finishes it."""
    from safetensors.torch import load_file

    from openvtp.demo.scenes import CaptionedScenes
    from openvtp.errors import Interrupted
    from openvtp.generation.latents import extract_latents
    from openvtp.models import VTPConfig, VTPModel

    class SignalAt(torch.utils.data.Dataset):
        """The data, with SIGTERM while item `at` is read; records what was read."""

        def __init__(self, data, at=None):
            self.data, self.at, self.read = data, at, []

        def __len__(self):
            return len(self.data)

        def __getitem__(self, i):
            self.read.append(i)
            if i == self.at:
                term_self()
            return self.data[i]

    vtp = VTPModel(VTPConfig.preset("vtp-tiny")).eval()
    data = CaptionedScenes("train", 64, 20)
    kw = dict(batch_size=4, shard_size=10, stats_num=0, progress=False)
    whole = extract_latents(vtp, data, tmp_path / "whole", **kw)
    with pytest.raises(Interrupted) as e:
        extract_latents(vtp, SignalAt(data, 5), tmp_path / "cut", **kw)
    assert e.value.signum == signal.SIGTERM and "8 images of shard 0" in e.value.saved
    assert (tmp_path / "cut" / "partial_latents_00000.safetensors").is_file()
    rest = SignalAt(data)
    extract_latents(vtp, rest, tmp_path / "cut", **kw)
    assert not set(rest.read) & set(range(1, 8))  # the 8 images kept are not encoded again
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == sorted(p.name for p in whole.iterdir())
    for name in ("latents_00000.safetensors", "latents_00001.safetensors"):
        a, b = load_file(whole / name), load_file(tmp_path / "cut" / name)
        assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a), name


def test_train_dit_stops_on_sigterm_and_resumes_with_the_same_losses(tmp_path):
    from openvtp.config.load import load_config
    from openvtp.demo.scenes import CaptionedScenes
    from openvtp.errors import Interrupted
    from openvtp.generation.config import GenerationConfig
    from openvtp.generation.latents import extract_latents
    from openvtp.generation.train import train_dit
    from openvtp.models import VTPConfig, VTPModel

    latents = extract_latents(VTPModel(VTPConfig.preset("vtp-tiny")).eval(), CaptionedScenes("train", 64, 16),
                              tmp_path / "latents", batch_size=8, stats_num=100, progress=False)

    def config(run, *extra):
        return load_config(GenerationConfig, "dit-demo", [
            "model.arch=dit-tiny-1", f"data.latents_dir={latents}", "data.num_classes=7", "data.workers=0",
            f"train.out_dir={tmp_path / run}", "train.steps=5", "train.batch=8", "train.ckpt_every=0",
            "train.tensorboard=false", "train.progress=false", *extra])

    def term_after_step_2(step, terms):
        if step == 2:
            term_self()

    straight = train_dit(config("straight"))
    with pytest.raises(Interrupted) as e:
        train_dit(config("cut"), callback=term_after_step_2)
    assert e.value.signum == signal.SIGTERM and e.value.resume == ("train.resume=latest",)
    assert [p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()] == ["step_0000002"]
    assert train_dit(config("cut", "train.resume=latest")) == straight[2:]


def test_eval_interrupted_inside_a_chunk_resumes_to_the_same_results(tmp_path, monkeypatch, capsys):
    import json

    from openvtp.eval.datasets import EvalSet

    load = EvalSet.load
    calls, term_at = [], [None]

    def counted(self, pos, *args, **kwargs):
        calls.append(pos)
        if len(calls) == term_at[0]:
            term_self()
        return load(self, pos, *args, **kwargs)

    monkeypatch.setattr(EvalSet, "load", counted)
    argv = ["eval", MODEL, "--data", "embedded", "--tasks", "knn", "--limit", "12", "--train-limit", "12",
            "--chunk-size", "8", "--batch-size", "4", "--workers", "0", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    whole_reads, term_at[0] = len(calls), len(calls) + 2
    assert main([*argv, "--out", str(tmp_path / "cut")]) == 128 + signal.SIGTERM
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("openvtp eval: stopped by SIGTERM; features of ") and " up to image 4 of 12" in line
    assert len(list((tmp_path / "cut" / "cache").rglob("partial_00000.safetensors"))) == 1
    calls.clear()
    assert main(shlex.split(line.split("; resume with: ", 1)[1])[1:]) == 0
    assert len(calls) == whole_reads - 4  # the 4 images of the unfinished chunk are not read again
    assert not list((tmp_path / "cut" / "cache").rglob("partial_*"))
    a, b = ({model: [e.get("metrics") for e in entries]
             for model, entries in json.loads((tmp_path / run / "results.json").read_text())["results"].items()}
            for run in ("whole", "cut"))
    assert a == b and any(m for entries in a.values() for m in entries)


