"""`openvtp eval` and `openvtp fid` as a user runs them: end to end on conformance checkpoints, one-line errors."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from openvtp.cli import main
from openvtp.models import VTPConfig, VTPModel

from .conftest import CONFORMANCE

SWIGLU = str(CONFORMANCE / "tiny-swiglu-rms")
QKNORM = str(CONFORMANCE / "tiny-mlp-ln-qknorm")


def run(*args):
    proc = subprocess.run([sys.executable, "-m", "openvtp", *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_two_models_one_call_table_and_plot(tmp_path):
    out = tmp_path / "cmp"
    proc = run("eval", SWIGLU, QKNORM, "--data", "embedded", "--limit", "8", "--train-limit", "16", "--out", str(out),
               "--fid-weights", "none", "--lpips", "random", "--no-progress", "--grid", "2")
    header = next(line for line in proc.stdout.splitlines() if line.startswith("| task"))
    assert "tiny-swiglu-rms" in header and "tiny-mlp-ln-qknorm" in header
    payload = json.loads((out / "results.json").read_text())
    assert [m["name"] for m in payload["models"]] == ["tiny-swiglu-rms", "tiny-mlp-ln-qknorm"]
    qk = {e["name"]: e for e in payload["results"]["tiny-mlp-ln-qknorm"]}
    sw = {e["name"]: e for e in payload["results"]["tiny-swiglu-rms"]}
    # the qk-norm fixture's 1024-token text tower cannot take BPE ids: its text tasks are skipped, with the reason
    assert "fewer than the 49408" in qk["zeroshot/shape"]["skipped"] and "skipped" in qk["retrieval"]
    assert "metrics" in sw["zeroshot/shape"] and "metrics" in qk["knn/shape"] and "metrics" in qk["recon"]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| zeroshot/shape") and "top-1" in line)
    assert row.rstrip(" |").endswith("skipped")
    with Image.open(out / "comparison.png") as im:
        assert im.size[0] > 300 and im.size[1] > 200
    for name in ("tiny-swiglu-rms", "tiny-mlp-ln-qknorm"):
        assert (out / f"recon_{name}.png").is_file()
    md = (out / "results.md").read_text()
    assert "comparison.png" in md and "## Protocols" in md and "tiny-mlp-ln-qknorm" in md


@pytest.fixture
def no_text_model(tmp_path):
    cfg = VTPConfig.from_json_file(CONFORMANCE / "tiny-swiglu-rms" / "config.json")
    cfg.train_clip = False
    VTPModel(cfg).save_pretrained(tmp_path / "ae")
    return str(tmp_path / "ae")


@pytest.mark.parametrize("args,needle", [
    (("eval", "/nonexistent/model", "--data", "embedded"), "model not found: /nonexistent/model"),
    (("eval", SWIGLU, "--data", "embedded", "--tasks", "zeroshot,segment"), "unknown task 'segment'"),
    (("eval", SWIGLU, "--data", "/nonexistent/data"), "--data /nonexistent/data: not found"),
    (("eval", "{ae}", "--data", "embedded", "--tasks", "zeroshot"), "cannot run zeroshot: model has no text tower"),
    (("eval", SWIGLU, "--data", "embedded", "--preprocess", "recon"), "--preprocess expects GROUP=METHOD"),
    (("eval", SWIGLU, "--data", "embedded", "--size", "40"), "not a multiple of the patch size 16"),
    (("eval", SWIGLU, "--data", "embedded", "--fid-weights", "/nonexistent/w.pth"), "--fid-weights: file not found"),
    (("eval", SWIGLU, "--data", "embedded", "--device", "gpu"), "--device 'gpu': not a device"),
    (("fid", "/nonexistent/a", "/nonexistent/b"), "not a folder of images or an .npz"),
    (("fid", "{tmp}"), "give two image sets"),
])
def test_user_errors_are_one_line_exit_1(args, needle, no_text_model, tmp_path, capsys):
    args = [a.replace("{ae}", no_text_model).replace("{tmp}", str(tmp_path)) for a in args]
    assert main([*args, *(["--out", str(tmp_path / "out")] if args[0] == "eval" else [])]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "out").exists()


def _folder(path, seed, n, smooth=False):
    gen = torch.Generator().manual_seed(seed)
    path.mkdir(parents=True)
    images = []
    for i in range(n):
        if smooth:
            x = torch.randint(0, 256, (3, 4, 4), generator=gen, dtype=torch.uint8).repeat_interleave(8, 1)
            x = x.repeat_interleave(8, 2)
        else:
            x = torch.randint(0, 256, (3, 32, 32), generator=gen, dtype=torch.uint8)
        Image.fromarray(x.permute(1, 2, 0).numpy()).save(path / f"{i}.png")
        images.append(x)
    return torch.stack(images)


def fid_json(capsys, *args):
    assert main(["fid", *args, "--fid-weights", "random", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow  # two scipy sqrtm of 2048 x 2048 matrices and a random-weight Inception on CPU
def test_fid_command_folders_and_stats(tmp_path, capsys):
    from openvtp.eval.fid import InceptionFeatures

    a, b = _folder(tmp_path / "a", 0, 6), _folder(tmp_path / "b", 1, 5, smooth=True)
    (tmp_path / "a" / "broken.png").write_bytes(b"not an image")
    stats = tmp_path / "a_stats.npz"
    # folder vs itself: FID(a, a) ~ 0, and a's statistics written on the way
    res = fid_json(capsys, str(tmp_path / "a"), str(tmp_path / "a"), "--save-stats", str(stats))
    assert res["sides"][0] == {"path": str(tmp_path / "a"), "images": 6, "skipped_images": 1} and stats.is_file()
    assert abs(res["fid"]) < 1e-3
    # folder vs statistics file against a direct computation on the same features: Tr sqrt(Sa Sb) = ||A B^T||_* /
    # sqrt((na - 1)(nb - 1)) with centred features A, B (no sqrtm involved)
    res = fid_json(capsys, str(tmp_path / "b"), str(stats))
    assert res["sides"][1] == {"path": str(stats), "statistics": True}
    inception = InceptionFeatures("random", device="cpu", progress=False)
    fa, fb = inception(a).numpy(), inception(b).numpy()
    ca, cb = fa - fa.mean(0), fb - fb.mean(0)
    tr = np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / np.sqrt(5 * 4)
    direct = ((fa.mean(0) - fb.mean(0)) ** 2).sum() + (ca**2).sum() / 5 + (cb**2).sum() / 4 - 2 * tr
    assert direct > 0 and abs(res["fid"] - direct) / direct < 1e-6


@pytest.mark.slow  # rFID: random Inception on 2 x 6 images and one 2048 x 2048 sqrtm
def test_eval_recon_rfid_with_random_inception(tmp_path):
    from openvtp.demo.scenes import CaptionedScenes
    from openvtp.data.image_io import quantize
    from openvtp.eval.fid import InceptionFeatures

    out = tmp_path / "out"
    assert main(["eval", SWIGLU, "--data", "embedded", "--tasks", "recon", "--limit", "6", "--fid-weights", "random",
                 "--lpips", "none", "--out", str(out), "--no-progress"]) == 0
    recon = json.loads((out / "results.json").read_text())["results"]["tiny-swiglu-rms"][0]
    assert "(random: meaningless)" in recon["protocol"]["rfid"]
    model = VTPModel.from_pretrained(SWIGLU).eval()
    x = torch.stack([CaptionedScenes("heldout", size=64, length=6, seed=0)[i]["image"] for i in range(6)])
    with torch.inference_mode():
        rec = quantize(model.decode(model.encode(x.float() / 255)))
    inception = InceptionFeatures("random", device="cpu", progress=False)
    fa, fb = inception(x).numpy(), inception(rec).numpy()
    ca, cb = fa - fa.mean(0), fb - fb.mean(0)
    tr = np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / 5
    direct = ((fa.mean(0) - fb.mean(0)) ** 2).sum() + (ca**2).sum() / 5 + (cb**2).sum() / 5 - 2 * tr
    assert abs(recon["metrics"]["rfid"] - direct) / direct < 1e-6


@pytest.mark.slow  # two processes under torchrun (gloo on CPU)
def test_torchrun_extraction_equals_one_process(tmp_path):
    import os
    import socket

    args = ["eval", SWIGLU, "--data", "embedded", "--limit", "8", "--train-limit", "8", "--chunk-size", "4",
            "--batch-size", "4", "--tasks", "knn,recon", "--device", "cpu", "--fid-weights", "none", "--lpips", "none",
            "--no-progress"]
    run(*args, "--out", str(tmp_path / "one"))
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "tests.exit_probe", *args,
                          "--out", str(tmp_path / "two")], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).parents[1],
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("| task") == 1  # only rank 0 reports
    one_res, two_res = (json.loads((tmp_path / d / "results.json").read_text())["results"]["tiny-swiglu-rms"]
                        for d in ("one", "two"))
    assert [e["name"] for e in one_res] == [e["name"] for e in two_res] == ["knn/shape", "knn/colour", "recon"]
    for e1, e2 in zip(one_res, two_res):
        assert e1["metrics"] == pytest.approx(e2["metrics"], abs=1e-4)


def test_fid_offline_without_weights_is_one_line(tmp_path, monkeypatch, capsys):
    import urllib.error

    import openvtp.eval.weights as weights_mod

    def no_network(url, dst):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(weights_mod, "_download", no_network)
    _folder(tmp_path / "a", 0, 2)
    assert main(["fid", str(tmp_path / "a"), str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    target = tmp_path / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    assert len(err) == 1 and f"put it at {target}" in err[0]
