"""CLI model commands and their error paths, run as a user would."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from .conftest import CONFORMANCE

MODEL = str(CONFORMANCE / "tiny-swiglu-rms")


def run(*args, ok=True):
    proc = subprocess.run([sys.executable, "-m", "openvtp", *args], capture_output=True, text=True, timeout=120)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(path)
    return path


def test_info_json():
    info = json.loads(run("info", MODEL, "--json").stdout)
    assert info["params"]["total"] == 1916769
    assert info["params"]["trunk"] == 151872


def test_reconstruct_and_zeroshot(tmp_path, photo):
    out = run("reconstruct", MODEL, str(photo), "--out", str(tmp_path / "rec")).stdout
    assert "PSNR" in out
    with Image.open(tmp_path / "rec" / "photo_recon.png") as im:
        assert im.size == (128, 64)
    lines = run("zeroshot", MODEL, str(photo), "--labels", "a dog,a cat,a car").stdout.strip().splitlines()
    probs = [float(line.split("%")[0]) for line in lines]
    assert len(lines) == 3 and abs(sum(probs) - 100) < 0.1


@pytest.mark.parametrize("args,needle", [
    (("info", "/nonexistent/model"), "model not found"),
    (("reconstruct", MODEL, "missing.png", "--out", "x"), "image not found: missing.png"),
    (("reconstruct", MODEL, "{bad}", "--out", "x", "--size", "40"), "not a multiple of the patch size"),
    (("zeroshot", MODEL, "{bad}", "--labels", "a,b"), "cannot read image"),
    (("zeroshot", MODEL, "{photo}", "--labels", "only-one"), "at least two"),
])
def test_user_errors_are_one_line(tmp_path, photo, args, needle):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    args = [a.replace("{bad}", str(bad)).replace("{photo}", str(photo)) for a in args]
    proc = run(*args, ok=False)
    assert proc.returncode != 0
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_bad_checkpoint_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text((CONFORMANCE / "tiny-swiglu-rms" / "config.json").read_text())
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    proc = run("info", str(tmp_path), ok=False)
    assert proc.returncode != 0 and "cannot read" in proc.stderr and "Traceback" not in proc.stderr
