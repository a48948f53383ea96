"""`openvtp demo` (what `make demo` runs): every stage on one command line, fixed step counts, figures that
do not depend on the machine's load, a loud safety net, bad overrides rejected before any work."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from .test_train import TINY, _cli

STAGE2 = ["decoder.train.steps=3", "decoder.train.batch=4", "decoder.data.workers=0", "decoder.eval.images=8",
          "decoder.gan.start_step=1", "decoder.gan.disc_channels=8", "decoder.train.image_every=0"]
GENERATION = ["dit.model.arch=dit-tiny-1", "dit.model.hidden_size=0", "dit.model.depth=0", "dit.model.num_heads=0",
              "dit.train.steps=12", "dit.train.batch=8", "dit.sample.num_steps=4", "generation.num_images=64",
              "generation.judge_steps=20", "generation.eval_samples=39", "generation.reference_images=64",
              "generation.grid_per_class=1"]
SUMMARIES = ("summary.json", "decoder/summary.json", "generation/summary.json")


def _weights(folder) -> dict:
    return load_file(next(folder.glob("*.safetensors")))


def _figures(run: Path) -> dict:
    """Every summary of a demo run with its timings removed and its own folder name replaced."""
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k != "timing"}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x.replace(str(run), "RUN") if isinstance(x, str) else x

    return {name: strip(json.loads((run / name).read_text())) for name in SUMMARIES}


def _demo(run: Path, *extra, env=None) -> str:
    proc = _cli("demo", "--out", str(run), *TINY, "train.steps=4", "eval.images=8", *STAGE2, *GENERATION, *extra,
                env=env)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return out


@pytest.mark.slow
def test_demo_runs_every_stage_and_its_figures_do_not_depend_on_load(tmp_path):
    idle = _demo(tmp_path / "idle")
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:  # a CPU-bound process beside it, and torch's default thread count instead of 1
        _demo(tmp_path / "busy", env={"OMP_NUM_THREADS": "2"})
    finally:
        burner.kill()
    assert _figures(tmp_path / "idle") == _figures(tmp_path / "busy")

    run = tmp_path / "idle"
    assert "after decoder fine-tuning" in idle and "judge accuracy on the requested shape" in idle
    assert "INCOMPLETE" not in idle
    grids = re.search(r"reconstruction grids: (\S+) \(fine-tuned decoder\), (\S+) \(pre-training\)", idle)
    assert grids and all(Path(p).is_file() for p in grids.groups()), idle
    assert re.search(r"sample grid: (\S+)", idle) and (run / "generation" / "samples_grid.png").is_file()

    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] and "stopped" not in summary
    assert summary["steps"] == 4 and summary["decoder_finetune"]["steps"] == 3
    assert summary["generation"]["dit_steps"] == 12 and summary["generation"]["samples"] == 39
    held = summary["heldout"]
    assert {"psnr", "psnr_decoder_finetuned", "psnr_patch_mean_baseline"} <= held.keys()
    stage2 = json.loads((run / "decoder" / "summary.json").read_text())
    assert stage2["heldout"]["psnr_stage1"] == pytest.approx(held["psnr"], abs=1e-4)  # the same held-out images
    assert stage2["heldout"]["psnr"] == held["psnr_decoder_finetuned"]
    generation = json.loads((run / "generation" / "summary.json").read_text())
    assert generation["judge"]["steps"] == 20 and generation["latents"]["images"] == 64
    assert generation["tokenizer"] == str(run / "decoder" / "tokenizer")  # generation decodes with stage 2's decoder

    before, after = _weights(run / "tokenizer"), _weights(run / "decoder" / "tokenizer")
    assert before.keys() == after.keys()
    decoder = [k for k in before if k.startswith("pixel_decoder.")]
    assert decoder and any(not before[k].equal(after[k]) for k in decoder)
    assert all(before[k].equal(after[k]) for k in before if k not in decoder)


def test_a_fired_safety_net_is_loud(tmp_path):
    run = tmp_path / "demo"
    proc = _cli("demo", "--out", str(run), *TINY, "train.steps=3", "eval.images=8", "train.time_limit_s=1e-9",
                *STAGE2, "generation.enabled=false")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 2, err[-2000:]
    assert out.strip().splitlines()[-1].startswith("WARNING: INCOMPLETE RUN")
    assert "train.time_limit_s=1e-09 safety net fired at step 1 of 3" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] is False and summary["steps"] == 1 and len(summary["stopped"]) == 1
    assert json.loads((run / "decoder" / "summary.json").read_text())["complete"] is True


@pytest.mark.parametrize("override, message", [
    ("decoder.gan.start_step=-1", "decoder fine-tuning (decoder.KEY=VALUE): config 'gan.start_step': must be >= 0"),
    ("dit.train.steps=0", "the DiT (dit.KEY=VALUE): config 'train.steps': must be > 0"),
    ("generation.num_imagez=5", "Did you mean: 'num_images'"),
    ("generation.judge_steps=5", "generation.judge_steps"),
    ("train.steps=0", "pre-training (KEY=VALUE): config 'train.steps': must be positive"),
])
def test_demo_rejects_a_bad_override_of_any_stage_before_any_work(tmp_path, override, message):
    run = tmp_path / "demo"
    proc = _cli("demo", "--out", str(run), *TINY, override)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and not run.exists()


def test_demo_help_lists_every_stage_and_the_generation_keys():
    out = subprocess.run([sys.executable, "-m", "openvtp", "demo", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for needle in ("decoder.KEY=VALUE", "dit.KEY=VALUE", "generation.num_images=4000", "generation.judge_steps=600",
                   "generation.eval_samples=350"):
        assert needle in out
