"""`openvtp demo` (what `make demo` runs): stage 1, then stage 2 on its tokenizer, one summary."""
import json
import re
from pathlib import Path

import pytest
from safetensors.torch import load_file

from .test_train import TINY, _cli

STAGE2 = ["decoder.train.steps=3", "decoder.train.batch=4", "decoder.data.workers=0", "decoder.eval.images=8",
          "decoder.gan.start_step=1", "decoder.gan.disc_channels=8", "decoder.train.image_every=0"]


def _weights(folder) -> dict:
    return load_file(next(folder.glob("*.safetensors")))


@pytest.mark.slow
def test_demo_fine_tunes_the_decoder_of_the_pretrained_tokenizer(tmp_path):
    run = tmp_path / "demo"
    proc = _cli("demo", "--out", str(run), "--generation-budget", "0", *TINY, "train.steps=3", "eval.images=8",
                *STAGE2)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    assert "after decoder fine-tuning" in out
    grids = re.search(r"reconstruction grids: (\S+) \(fine-tuned decoder\), (\S+) \(pre-training\)", out)
    assert grids and all(Path(p).is_file() for p in grids.groups()), out

    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["decoder_finetune"]["steps"] == 3
    held = summary["heldout"]
    assert {"psnr", "psnr_decoder_finetuned", "psnr_patch_mean_baseline"} <= held.keys()
    stage2 = json.loads((run / "decoder" / "summary.json").read_text())
    assert stage2["heldout"]["psnr_stage1"] == pytest.approx(held["psnr"], abs=1e-4)  # the same held-out images
    assert stage2["heldout"]["psnr"] == held["psnr_decoder_finetuned"]

    before, after = _weights(run / "tokenizer"), _weights(run / "decoder" / "tokenizer")
    assert before.keys() == after.keys()
    decoder = [k for k in before if k.startswith("pixel_decoder.")]
    assert decoder and any(not before[k].equal(after[k]) for k in decoder)
    assert all(before[k].equal(after[k]) for k in before if k not in decoder)


def test_demo_rejects_a_bad_stage2_override_before_any_work(tmp_path):
    run = tmp_path / "demo"
    proc = _cli("demo", "--out", str(run), "--generation-budget", "0", *TINY, "decoder.gan.start_step=-1")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "gan.start_step must be >= 0" in err and "Traceback" not in err
    assert not (run / "checkpoints").exists()
