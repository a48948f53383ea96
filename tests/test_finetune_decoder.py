"""Stage 2 (`openvtp finetune-decoder`): frozen encoder, decoder + PatchGAN, delayed start, exact resume."""
import json
import shutil
import subprocess
import sys

import pytest
import torch

from openvtp.config.load import load_config
from openvtp.config.schema import FinetuneDecoderConfig
from openvtp.errors import OpenVTPError
from openvtp.models import VTPConfig, VTPModel
from openvtp.runtime.checkpoint import load_checkpoint
from openvtp.train.decoder_finetune import DecoderGAN, finetune_decoder

SMALL = dict(image_size=32, vision_patch_size=8, vision_embed_dim=32, vision_depth=2, vision_num_heads=2,
             vision_feature_bottleneck=8, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2,
             text_embed_dim=32, text_depth=1, text_num_heads=2)
RUN = ["train.batch=4", "data.workers=0", "train.log_every=1", "train.image_every=0", "eval.images=8",
       "optim.warmup_steps=1", "gan.disc_channels=8", "gan.disc_layers=2"]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    path = tmp_path_factory.mktemp("stage1") / "tokenizer"
    torch.manual_seed(0)
    VTPModel(VTPConfig.from_dict(SMALL)).save_pretrained(path)
    return path


def _config(stage1, out, *extra) -> FinetuneDecoderConfig:
    return load_config(FinetuneDecoderConfig, "decoder-demo", [f"init={stage1}", f"train.out_dir={out}", *RUN, *extra])


def _metrics(run) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def test_only_the_decoder_changes_and_the_gan_starts_late(stage1, tmp_path):
    summary = finetune_decoder(_config(stage1, tmp_path, "train.steps=4", "gan.start_step=2"))
    before, after = VTPModel.from_pretrained(stage1), VTPModel.from_pretrained(tmp_path / "tokenizer")
    a, b = before.state_dict(), after.state_dict()
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert changed and all(k.startswith("pixel_decoder.") for k in changed), sorted(changed)[:5]
    assert any(k.startswith("pixel_decoder.proj_out") for k in changed)
    rows = _metrics(tmp_path)
    assert "d_loss" not in rows[1] and "d_loss" not in rows[2]  # steps 0 and 1: before gan.start_step
    assert "d_loss" in rows[3] and rows[3]["adaptive_weight"] > 0
    assert summary["heldout"]["images"] == 8 and summary["heldout"]["psnr"] > 0
    assert (tmp_path / "reconstructions.png").is_file() and (tmp_path / "loss_curves.png").is_file()


def test_resume_continues_with_the_same_losses(stage1, tmp_path):
    args = ["train.steps=4", "gan.start_step=1", "train.ckpt_every=2"]
    finetune_decoder(_config(stage1, tmp_path / "a", *args))
    run = tmp_path / "b"
    finetune_decoder(_config(stage1, run, *args))
    shutil.rmtree(run / "checkpoints" / "step_0000004")  # as if killed after the step-2 checkpoint
    finetune_decoder(_config(stage1, run, *args, "train.resume=latest"))
    a, b = _metrics(tmp_path / "a"), _metrics(run)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in (3, 4):
        for key in ("loss", "d_loss", "rec_l1"):
            assert abs(a[step][key] - b[step][key]) < 1e-5, (step, key, a[step][key], b[step][key])


def _poison(monkeypatch, method: str, key: str, bad_steps: set[int]):
    """DecoderGAN.`method`'s `key` term is NaN at the given (0-based) steps."""
    original = getattr(DecoderGAN, method)
    steps = iter(range(10**6))  # the discriminator is called once per step, after the generator

    def poisoned(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        terms = out[0] if isinstance(out, tuple) else out
        step = args[1] if method == "generator_terms" else next(steps)
        if step in bad_steps:
            terms[key] = terms[key] * float("nan")
        return out

    monkeypatch.setattr(DecoderGAN, method, poisoned)


def _states(run, steps: int) -> dict:
    return {s: load_checkpoint(run / "checkpoints" / f"step_{s:07d}") for s in range(1, steps + 1)}


@pytest.mark.parametrize("part,method,key", [("decoder", "generator_terms", "loss"),
                                             ("discriminator", "discriminator_terms", "d_loss")])
def test_a_nonfinite_update_is_skipped_and_the_run_goes_on(stage1, tmp_path, monkeypatch, capsys, part, method, key):
    """Step 2 (0-based) of the decoder or of the discriminator is not finite: that part and its optimiser stay as
    they were (decided on the device, read on the host at the log step), the other part trains on."""
    _poison(monkeypatch, method, key, {2})
    finetune_decoder(_config(stage1, tmp_path, "train.steps=4", "gan.start_step=0", "train.ckpt_every=1",
                             "train.keep_last=0", "train.log_every=4"))
    states = _states(tmp_path, 4)
    other = "discriminator" if part == "decoder" else "decoder"
    for key_ in states[2][part]:
        assert torch.equal(states[2][part][key_], states[3][part][key_]), key_
    opt = "opt_g" if part == "decoder" else "opt_d"
    assert all(torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["step"], b["step"])
               for a, b in zip(states[2][opt]["state"].values(), states[3][opt]["state"].values()))
    assert any(not torch.equal(v, states[3][other][k]) for k, v in states[2][other].items())
    assert any(not torch.equal(v, states[4][part][k]) for k, v in states[3][part].items())  # and it goes on
    assert "1 of the last 4 steps skipped" in "".join(capsys.readouterr())
    assert sorted(_metrics(tmp_path)) == [4]


def test_consecutive_nonfinite_steps_stop_stage_2_at_the_last_good_state(stage1, tmp_path, monkeypatch):
    _poison(monkeypatch, "generator_terms", "loss", {1, 2, 3, 4, 5})
    with pytest.raises(OpenVTPError, match=r"2 consecutive non-finite steps up to step 3.*as step 1"):
        finetune_decoder(_config(stage1, tmp_path, "train.steps=8", "train.max_bad_steps=2", "train.log_every=3"))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_0000001"]


def test_bad_inputs_are_one_line_errors(stage1, tmp_path):
    no_decoder = tmp_path / "no_decoder"
    VTPModel(VTPConfig.from_dict({**SMALL, "train_reconstruction": False})).save_pretrained(no_decoder)
    with pytest.raises(OpenVTPError, match="no pixel decoder"):
        finetune_decoder(_config(no_decoder, tmp_path / "x", "train.steps=1"))
    with pytest.raises(OpenVTPError, match="accum_steps"):
        finetune_decoder(_config(stage1, tmp_path / "y", "optim.accum_steps=2"))
    with pytest.raises(OpenVTPError, match="data.photo_fraction"):  # the checks shared with pre-training apply
        finetune_decoder(_config(stage1, tmp_path / "y", "data.photo_fraction=2"))
    res = subprocess.run([sys.executable, "-m", "openvtp", "finetune-decoder", str(tmp_path / "missing"),
                          f"train.out_dir={tmp_path / 'z'}"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "missing" in res.stderr


def test_sigterm_stops_stage_2_at_a_step_boundary_and_resumes_with_the_same_losses(stage1, tmp_path, monkeypatch,
                                                                                   capsys):
    """The scheduler's SIGTERM, sent from inside step 2 (0-based): a checkpoint of step 3, exit 143, and the printed
    command resumes to the losses of an uninterrupted run."""
    import signal

    import openvtp.train.decoder_finetune as stage2
    from openvtp.cli import main

    from .test_run_folder import resume_argv, term_self

    args = ["finetune-decoder", str(stage1), *RUN, "train.steps=5", "gan.start_step=1", "train.ckpt_every=100"]
    assert main([*args, f"train.out_dir={tmp_path / 'straight'}"]) == 0
    schedule = stage2.warmup_cosine

    def term_at_step_2(step, *rest):
        if step == 2:
            term_self()
        return schedule(step, *rest)

    run = tmp_path / "run"
    monkeypatch.setattr(stage2, "warmup_cosine", term_at_step_2)
    capsys.readouterr()
    assert main([*args, f"train.out_dir={run}"]) == 128 + signal.SIGTERM
    monkeypatch.setattr(stage2, "warmup_cosine", schedule)
    err = capsys.readouterr().err
    assert f"checkpoint of step 3 in {run}" in err.strip().splitlines()[-1]
    command = resume_argv(err, "SIGTERM", 3, "finetune-decoder")
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_0000003"]
    assert main(command) == 0
    a, b = _metrics(tmp_path / "straight"), _metrics(run)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5]
    for step in a:
        for key in ("loss", "rec_l1"):
            assert abs(a[step][key] - b[step][key]) < 1e-5, (step, key, a[step][key], b[step][key])
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
