"""Generation commands end to end on a tiny config, SIGKILL + resume of DiT training, bad input, and the demo half."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from openvtp.cli import main
from openvtp.config.load import load_config
from openvtp.generation.config import GenerationConfig, dit_kwargs, validate
from openvtp.generation.latents import load_latent_stats
from openvtp.models.config import VTPConfig
from openvtp.models.vtp import VTPModel
from openvtp.runtime.checkpoint import list_checkpoints, load_checkpoint

TINY = ["model.arch=dit-tiny-1", "data.num_classes=7", "train.batch=8", "train.ema_decay=0.9",
        "train.log_every=2", "train.tensorboard=false", "train.progress=false"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A random-weight vtp-tiny tokenizer (64 px, 8 x 4 x 4 latents) and latents of 24 embedded scenes, via the CLI."""
    root = tmp_path_factory.mktemp("gencli")
    torch.manual_seed(0)
    VTPModel(VTPConfig.preset("vtp-tiny")).eval().save_pretrained(root / "tok")
    rc = main(["extract-latents", str(root / "tok"), "--data", "embedded", "--num", "24", "--out", str(root / "lat"),
               "--shard-size", "10", "--batch-size", "8"])
    assert rc == 0
    return root


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_extract_train_sample_gfid(work, capsys, monkeypatch):
    lat = work / "lat"
    index = json.loads((lat / "index.json").read_text())
    assert (index["num_images"], index["num_shards"], index["num_classes"]) == (24, 3, 7)
    assert index["latent_shape"] == [8, 4, 4]
    raw = torch.load(lat / "latents_stats.pt", weights_only=True)  # the released layout, no unpickling
    assert set(raw) == {"mean", "std"} and raw["mean"].shape == raw["std"].shape == (1, 8, 1, 1)
    assert json.loads((lat / "latents_stats.json").read_text())["num"] == 24

    run = work / "dit"
    rc, out, _ = run_cli(capsys, "train-dit", "--config", "dit-demo", *TINY, f"data.latents_dir={lat}",
                         f"train.out_dir={run}", "train.steps=4")
    assert rc == 0 and "trained 4 steps" in out
    assert [p.name for p in list_checkpoints(run)] == ["step_0000004"]

    rc, out, _ = run_cli(capsys, "sample", run, "--tokenizer", work / "tok", "--out", work / "s", "--per-class", 2,
                         "sample.num_steps=3", "sample.batch=5")  # overrides after options
    assert rc == 0, out
    npz = np.load(work / "s" / "samples.npz")
    assert npz["arr_0"].shape == (14, 64, 64, 3) and npz["arr_0"].dtype == np.uint8
    assert npz["labels"].tolist() == [k for k in range(7) for _ in range(2)]
    grid = Image.open(work / "s" / "grid.png")
    assert grid.size == (2 * 66 + 2, 7 * 66 + 2)  # one row per class, 2 px padding
    assert len(list((work / "s" / "samples").glob("*.png"))) == 14

    # gFID against a folder of real scenes: the random-weight Inception runs whole, its features cut to 64 dims so
    # the Frechet distance needs a 64 x 64 matrix square root rather than a 2048 x 2048 one
    from openvtp.eval import fid as fid_module
    from openvtp.generation import gfid as gfid_module

    class FirstDims(fid_module.InceptionFeatures):
        def extract(self, batches, total=None):
            return super().extract(batches, total)[:, :64]

        def extract_all(self, images):
            out = super().extract_all(images)
            return out | {"pool": out["pool"][:, :64], "spatial": out["spatial"][:, :64]}

    monkeypatch.setattr(gfid_module, "InceptionFeatures", FirstDims)
    ref = work / "ref"
    ref.mkdir()
    from openvtp.demo.scenes import CaptionedScenes

    scenes = CaptionedScenes("heldout", 64, 8)
    for i in range(8):
        Image.fromarray(scenes[i]["image"].permute(1, 2, 0).numpy()).save(ref / f"{i}.png")
    rc, out, err = run_cli(capsys, "gfid", run, "--tokenizer", work / "tok", "--reference", ref, "--fid-weights",
                           "random", "--num-samples", 7, "--out", work / "gfid.json", "--save-npz",
                           work / "gfid.npz", "sample.num_steps=3")
    assert rc == 0, err
    result = json.loads((work / "gfid.json").read_text())
    assert result["num_samples"] == 7 and np.isfinite(result["fid"]) and result["fid"] > 0
    assert f"gFID-7 {result['fid']:.3f}, sFID {result['sfid']:.3f}, IS {result['inception_score']:.3f}" in out
    assert result["inception_score"] > 1 - 1e-9 and 0 <= result["precision"] <= 1 and 0 <= result["recall"] <= 1
    assert result["sfid"] > 0 and result["labels"] == "balanced" and "balanced labels" in out
    assert np.load(work / "gfid.npz")["arr_0"].shape == (7, 64, 64, 3)


def _jpeg(size, colour) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


def test_extract_from_class_folders_and_shards(work, capsys):
    """Class sub-folders (label = sorted folder index) and webdataset tars (`.cls`, `.txt`), non-square images."""
    import io
    import tarfile

    from safetensors.torch import load_file

    root = work / "folder"
    for k, name in enumerate(["b_cat", "a_dog"]):
        (root / name).mkdir(parents=True)
        for i in range(2):
            (root / name / f"{i}.jpg").write_bytes(_jpeg((80 + 10 * i, 70), (200 * k, 50, 50)))
    rc, out, err = run_cli(capsys, "extract-latents", work / "tok", "--data", root, "--out", work / "lat_folder")
    assert rc == 0, err
    shard = load_file(work / "lat_folder" / "latents_00000.safetensors")
    assert shard["labels"].tolist() == [0, 0, 1, 1] and shard["latents"].shape == (4, 8, 4, 4)
    assert json.loads((work / "lat_folder" / "index.json").read_text())["num_classes"] == 2
    assert json.loads((work / "lat_folder" / "captions_00000.json").read_text())[0] == "a dog"

    tar_path = work / "shard-000.tar"
    with tarfile.open(tar_path, "w") as tar:
        for i in range(3):
            for ext, data in (("jpg", _jpeg((64, 96), (10, 20 * i, 30))), ("cls", str(5 - i).encode()),
                              ("txt", f"picture {i}".encode())):
                info = tarfile.TarInfo(f"s{i:03d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    rc, out, err = run_cli(capsys, "extract-latents", work / "tok", "--data", work / "shard-{000..000}.tar",
                           "--out", work / "lat_tar")
    assert rc == 0, err
    shard = load_file(work / "lat_tar" / "latents_00000.safetensors")
    assert shard["labels"].tolist() == [5, 4, 3] and shard["latents_flip"].shape == (3, 8, 4, 4)
    assert json.loads((work / "lat_tar" / "captions_00000.json").read_text()) == ["picture 0", "picture 1", "picture 2"]


def test_sigkilled_training_resumes_with_the_same_losses(work, one_thread):
    from openvtp.generation.train import train_dit

    def overrides(run, *extra):
        return [*TINY, f"data.latents_dir={work / 'lat'}", f"train.out_dir={work / run}", "train.steps=8",
                "train.ckpt_every=3", *extra]

    def cfg(run, *extra):
        return load_config(GenerationConfig, "dit-demo", overrides(run, *extra))

    straight = train_dit(cfg("straight"))
    # a process that SIGKILLs itself after step 5: the checkpoint of step 3 is the last one on disk
    script = (
        "import os, signal, sys\n"
        "from openvtp.config.load import load_config\n"
        "from openvtp.generation.config import GenerationConfig\n"
        "from openvtp.generation.train import train_dit\n"
        "cfg = load_config(GenerationConfig, 'dit-demo', sys.argv[1:])\n"
        "train_dit(cfg, callback=lambda step, terms: os.kill(os.getpid(), signal.SIGKILL) if step == 5 else None)\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, *overrides("killed")],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert [p.name for p in list_checkpoints(work / "killed")] == ["step_0000003"]
    resumed = train_dit(cfg("killed", "train.resume=latest"))
    assert len(resumed) == 5 and resumed == straight[3:]  # steps 4..8 again, bit for bit
    a = load_checkpoint(list_checkpoints(work / "straight")[-1])
    b = load_checkpoint(list_checkpoints(work / "killed")[-1])
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    moments = [(s["exp_avg"], s["exp_avg_sq"]) for s in a["optimizer"]["state"].values()]
    again = [(s["exp_avg"], s["exp_avg_sq"]) for s in b["optimizer"]["state"].values()]
    assert all(torch.equal(x, y) for m, n in zip(moments, again) for x, y in zip(m, n))


def test_published_presets():
    xl = load_config(GenerationConfig, "dit-xl-1-vtp")
    validate(xl)
    k = dit_kwargs(xl.model)
    assert (k["hidden_size"], k["depth"], k["num_heads"], k["patch_size"]) == (1152, 28, 16, 1)  # LightningDiT-XL/1
    assert (xl.train.steps, xl.train.batch, xl.optim.lr, xl.optim.beta2, xl.train.ema_decay) == \
        (100_000, 1024, 2e-4, 0.95, 0.9999)
    assert (xl.sample.method, xl.sample.num_steps, xl.sample.timestep_shift, xl.sample.cfg_scale) == \
        ("euler", 250, 0.075, 1.0)
    assert (xl.model.class_dropout_prob, xl.flow.timestep_sampling, xl.flow.cos_weight) == (0.1, "logit_normal", 1.0)
    b = load_config(GenerationConfig, "dit-b-1-ablation")
    validate(b)
    k = dit_kwargs(b.model)
    assert (k["hidden_size"], k["depth"], k["patch_size"], b.sample.method, b.sample.num_samples) == \
        (768, 12, 1, "dopri5", 10_000)


def test_stats_written_in_the_released_layout_load(work, tmp_path):
    stats = load_latent_stats(work / "lat")
    torch.save({"mean": stats["mean"], "std": stats["std"]}, tmp_path / "latents_stats.pt")
    again = torch.load(tmp_path / "latents_stats.pt", weights_only=True)
    assert torch.equal(again["mean"], stats["mean"]) and again["std"].shape == (1, 8, 1, 1)


@pytest.mark.parametrize("argv, message", [
    (["extract-latents", "{tmp}/missing_tok", "--data", "embedded", "--out", "{tmp}/o"], "model not found"),
    (["extract-latents", "{tok}", "--data", "{tmp}/no_such_folder", "--out", "{tmp}/o"], "no such file or folder"),
    (["train-dit", "--config", "dit-demo", "data.latents_dir={tmp}/no_latents"], "does not exist"),
    (["train-dit", "--config", "dit-xl-1-vtp", "train.stepz=3"], "stepz"),
    (["train-dit", "--config", "dit-demo", "model.patch_size=3"], "model.patch_size"),
    (["sample", "{run}", "--tokenizer", "{tmp}/missing_tok", "--out", "{tmp}/o"], "model not found"),
    (["sample", "{tmp}/no_run", "--tokenizer", "{tok}", "--out", "{tmp}/o"], "no DiT checkpoint"),
    (["sample", "{run}", "--tokenizer", "{tok}", "--out", "{tmp}/o", "train.steps=3"], "only sample.*"),
    (["gfid", "{run}", "--tokenizer", "{tok}", "--reference", "{tmp}/no_ref.npz"], "FID reference not found"),
    (["demo-generation", "{tmp}/missing_tok"], "tokenizer folder not found"),
])
def test_bad_input_is_one_line(work, tmp_path, capsys, argv, message):
    run = work / "dit"
    if not list_checkpoints(run):  # when run alone
        assert main(["train-dit", "--config", "dit-demo", *TINY, f"data.latents_dir={work / 'lat'}",
                     f"train.out_dir={run}", "train.steps=1"]) == 0
    argv = [a.format(tmp=tmp_path, tok=work / "tok", run=run) for a in argv]
    capsys.readouterr()
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 1 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.slow
def test_generation_demo_writes_its_files(work, tmp_path):
    from openvtp.demo.generation import run_generation_demo
    from openvtp.demo.generation_config import GenerationDemoConfig

    demo = GenerationDemoConfig(num_images=48, judge_steps=20, eval_samples=40, reference_images=64, grid_per_class=1)
    summary = run_generation_demo(work / "tok", tmp_path, demo, progress=False, dit_overrides=(
        "model.arch=dit-tiny-1", "model.hidden_size=0", "model.depth=0", "model.num_heads=0", "train.steps=7",
        "sample.num_steps=4"))
    gen = tmp_path / "generation"
    assert json.loads((gen / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert (gen / "samples_grid.png").is_file() and (gen / "reconstructions_grid.png").is_file()
    # the grid: one sample per (shape, colour) pair seen in training, then 2 per pair judged
    assert np.load(gen / "samples" / "samples.npz")["arr_0"].shape == (39 + 39 * 2, 64, 64, 3)
    assert Image.open(gen / "samples_grid.png").height == 14 + 7 * 66 + 2  # colour names above, a row per shape
    assert summary["complete"] and summary["dit"]["steps"] == 7 and summary["judge"]["steps"] == 20
    for row in ("generated", "reconstructed", "real"):
        figures = summary["figures"][row]
        assert 0 <= figures["shape_acc"] <= 1 and 0 <= figures["colour_acc"] <= 1 and figures["frechet_probe"] >= 0
    gap = summary["gap_to_reconstructed"]["frechet_probe"]
    assert gap == pytest.approx(summary["figures"]["generated"]["frechet_probe"]
                                - summary["figures"]["reconstructed"]["frechet_probe"], abs=1e-3)
