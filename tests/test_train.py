"""Pre-training: objective combinations, lambda-0 branches, resume after SIGKILL, DDP equivalence, bad data."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from openvtp.config.load import load_config
from openvtp.config.schema import PretrainConfig
from openvtp.errors import OpenVTPError
from openvtp.models import VTPModel
from openvtp.train.data import build_loader
from openvtp.train.task import PretrainTask

# A model and batch small enough for a step in well under a second on one core.
TINY = [
    "model.image_size=32", "model.vision_patch_size=8", "model.vision_embed_dim=32", "model.vision_depth=2",
    "model.vision_num_heads=2", "model.vision_feature_bottleneck=8", "model.decoder_embed_dim=32",
    "model.decoder_depth=1", "model.decoder_num_heads=2", "model.text_embed_dim=32", "model.text_depth=1",
    "model.text_num_heads=2", "ssl.prototypes=64", "ssl.head_hidden=32", "ssl.head_bottleneck=16",
    "ssl.global_size=32", "ssl.local_size=16", "ssl.n_local=2", "ssl.batch=4", "recon.batch=4",
    "train.batch=8", "data.workers=0", "data.photo_fraction=0.25", "train.log_every=1", "train.image_every=0",
    "eval.images=16", "optim.warmup_steps=2",
]
VARIANTS = {"AE": ("0", "0"), "AE+CLIP": ("1", "0"), "AE+SSL": ("0", "1"), "VTP": ("1", "1")}


def tiny_config(tmp_path, *extra) -> PretrainConfig:
    return load_config(PretrainConfig, "demo", [*TINY, f"train.out_dir={tmp_path}", *extra])


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_trains_every_parameter_it_owns(tmp_path, variant):
    clip, ssl = VARIANTS[variant]
    cfg = tiny_config(tmp_path, f"clip.weight={clip}", f"ssl.weight={ssl}")
    task = PretrainTask(cfg, VTPModel(cfg.model))
    batch = next(iter(build_loader(cfg, 0, 1, 0)))
    # a branch with lambda 0 is not built and its views are not even made
    assert (task.clip is None) == (clip == "0") and ("clip_images" in batch) == (clip == "1")
    assert (task.ssl is None) == (ssl == "0") and ("ssl_globals" in batch) == (ssl == "1")
    terms = task(batch, 0)
    assert torch.isfinite(terms["loss"])
    terms["loss"].backward()
    trainable = [(n, p) for n, p in task.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None and n != "model.trunk.mask_token"]
    assert not missing, f"No gradient for {missing}"
    if clip == "0":
        assert not task.model.token_embedding.weight.requires_grad  # frozen, not silently trained


def test_lambda_zero_costs_no_trunk_compute(tmp_path):
    calls = {}
    for variant, (clip, ssl) in VARIANTS.items():
        cfg = tiny_config(tmp_path, f"clip.weight={clip}", f"ssl.weight={ssl}")
        task = PretrainTask(cfg, VTPModel(cfg.model))
        batch = next(iter(build_loader(cfg, 0, 1, 0)))
        images = []
        task.model.trunk.patch_embed.register_forward_hook(lambda m, i, o: images.append(i[0].shape[0]))
        task(batch, 0)
        calls[variant] = sum(images)
    # AE encodes only B_rec images; each enabled objective adds exactly its own images
    assert calls["AE"] == 4
    assert calls["AE+CLIP"] == 4 + 8
    assert calls["AE+SSL"] == 4 + 4 * 2 + 4 * 2  # globals (masked) and locals of B_ssl images
    assert calls["VTP"] == calls["AE+CLIP"] + calls["AE+SSL"] - calls["AE"]


def test_shape_twins_sit_side_by_side_in_the_batch(tmp_path):
    from openvtp.train.data import build_source

    source = build_source(tiny_config(tmp_path, "data.shape_twins=true"), 0, 1)  # item step * B + p
    items = [source[i] for i in range(32)]
    pairs = [(a, b) for a, b in zip(items[::2], items[1::2]) if a["source"] == b["source"] == 0]  # both scenes
    assert len(pairs) >= 4 and all(b["key"] == a["key"] + "-twin" for a, b in pairs)


def test_config_errors_before_work(tmp_path):
    from openvtp.config.schema import validate

    no_text = tiny_config(tmp_path, "model.train_clip=false")  # loads; the impossibility is caught by validate
    with pytest.raises(OpenVTPError, match="needs a text tower"):
        validate(no_text)
    with pytest.raises(OpenVTPError, match="divisible"):
        validate(tiny_config(tmp_path), world_size=3)
    with pytest.raises(OpenVTPError, match="nothing to train"):
        validate(tiny_config(tmp_path, "clip.weight=0", "ssl.weight=0", "recon.weight=0"))
    with pytest.raises(OpenVTPError, match="shape_twins.: needs an even batch"):
        validate(tiny_config(tmp_path, "data.shape_twins=true"), world_size=8)


def _cli(*args, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "openvtp", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, **kw)


def _losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


@pytest.mark.slow
def test_sigkill_and_resume_gives_the_same_losses(tmp_path):
    # killed at step 4 of 12, so that a loaded machine cannot finish the run between two polls
    args = ["pretrain", "--config", "demo", *TINY, "train.steps=12", "train.ckpt_every=2", "eval.images=8"]
    straight = _cli(*args, f"train.out_dir={tmp_path / 'a'}")
    assert straight.wait(timeout=300) == 0, straight.stderr.read()

    run = tmp_path / "b"
    killed = _cli(*args, f"train.out_dir={run}")
    deadline = time.time() + 600  # a hang guard only: the run is killed once its checkpoint exists
    while not (run / "checkpoints" / "step_0000004").exists():
        assert killed.poll() is None, "run ended before it could be killed"
        assert time.time() < deadline, "no checkpoint after 10 minutes"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert all(name.startswith("step_") for name in checkpoints), checkpoints  # no half-written ones
    resumed = _cli(*args, f"train.out_dir={run}", "train.resume=latest")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    a, b = _losses(tmp_path / "a"), _losses(run)
    assert sorted(a) == sorted(b) == list(range(1, 13))
    for step in a:
        assert abs(a[step] - b[step]) < 1e-5 * max(1.0, abs(a[step])), (step, a[step], b[step])
    assert (run / "tokenizer" / "model.safetensors").is_file()
    VTPModel.from_pretrained(run / "tokenizer")


def _torchrun(*args, module="tests.exit_probe"):
    """`python -m openvtp ARGS` as 2 gloo processes under torchrun; by default through tests/exit_probe.py, which
    also fails a rank that leaves a process group or a device mesh alive for interpreter shutdown."""
    import socket

    with socket.socket() as sock:  # a free port for the rendezvous (port 0 is not accepted there)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             "--master_addr=127.0.0.1", f"--master_port={port}", "-m", module, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1],
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_two_process_first_step_equals_one_process(tmp_path):
    # KoLeo over the gathered batch and iBOT over all global crops: DINOv2's per-rank KoLeo depends on the world
    # size by design, and so does iBOT divided by each rank's masked crops (the demo's setting)
    args = ["pretrain", "--config", "demo", *TINY, "train.steps=1", "eval.images=8", "ssl.drop_path=0",
            "ssl.koleo_batch=global", "ssl.ibot_normalize=all"]
    one = _cli(*args, f"train.out_dir={tmp_path / 'one'}")
    assert one.wait(timeout=300) == 0, one.stderr.read()
    two = _torchrun(*args, f"train.out_dir={tmp_path / 'two'}")
    assert two.wait(timeout=240) == 0, two.stderr.read()[-3000:]
    l1, l2 = _losses(tmp_path / "one")[1], _losses(tmp_path / "two")[1]
    assert abs(l1 - l2) < 1e-4, (l1, l2)


def _write_bad_shards(tmp_path) -> str:
    from openvtp.data.shards import write_shards

    rng = np.random.default_rng(0)
    samples = []
    for i in range(40):
        img = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
        caption = f"a noisy picture number {i}"
        if i in (3, 23):  # one of each in both shards, whichever the resampler draws first
            img = b"\x89PNG corrupt"
        if i in (5, 25):
            caption = "   "
        samples.append({"key": f"{i:05d}", "image": img, "caption": caption})
    paths = write_shards(samples, str(tmp_path / "shard-%03d.tar"), maxcount=20)
    assert len(paths) == 2
    return str(tmp_path / "shard-{000..001}.tar")


def test_shards_with_corrupt_sample_train_through(tmp_path):
    urls = _write_bad_shards(tmp_path)
    cfg = tiny_config(tmp_path / "run", "data.source=shards", f"data.path={urls}", "data.shuffle_buffer=0",
                      "train.steps=3")
    from openvtp.train.loop import pretrain

    summary = pretrain(cfg)
    assert summary["steps"] == 3
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped_samples"] >= 2
    assert all(np.isfinite(r["loss"]) for r in rows)


def test_image_folder_with_captions_trains(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    root = tmp_path / "imgs"
    root.mkdir()
    lines = ["file,caption"]
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(root / f"{i}.png")
        lines.append(f"{i}.png,a photo number {i}")
    (root / "broken.png").write_bytes(b"nope")
    lines.append("broken.png,a broken file")
    (tmp_path / "captions.csv").write_text("\n".join(lines) + "\n")
    from openvtp.train.loop import pretrain

    cfg = tiny_config(tmp_path / "run", "data.source=folder", f"data.path={root}",
                      f"data.captions={tmp_path / 'captions.csv'}", "train.steps=2")
    assert pretrain(cfg)["steps"] == 2


def test_teacher_update_is_an_ema_of_trunk_and_head(tmp_path):
    cfg = tiny_config(tmp_path)
    task = PretrainTask(cfg, VTPModel(cfg.model))
    ssl, model = task.ssl, task.model
    students = dict(model.trunk.named_parameters()) | {f"head.{k}": v for k, v in ssl.head.named_parameters()}
    with torch.no_grad():  # student and teacher start equal; move the student so the update shows
        for p in students.values():
            p.add_(torch.randn_like(p))
    teachers = dict(ssl.teacher["trunk"].named_parameters()) | {
        f"head.{k}": v for k, v in ssl.teacher["head"].named_parameters()}
    assert teachers.keys() == students.keys() and not any(p.requires_grad for p in teachers.values())
    before = {k: v.clone() for k, v in teachers.items()}
    ssl.update_teacher(model, 0.9)
    for k, t in teachers.items():
        assert torch.allclose(t, 0.9 * before[k] + 0.1 * students[k], atol=1e-6), k
    after = {k: v.clone() for k, v in teachers.items()}
    ssl.update_teacher(model, 1.0)
    assert all(torch.equal(teachers[k], after[k]) for k in teachers)
