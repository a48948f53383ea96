"""Extraction -> statistics -> DiT training (and exact resume) -> sampling -> gFID, on a tiny config."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from openvtp.config.load import load_config
from openvtp.demo.scenes import CaptionedScenes
from openvtp.errors import OpenVTPError
from openvtp.eval.fid import InceptionFeatures
from openvtp.demo.judge import generation_quality, render, train_attribute_probe
from openvtp.generation.config import GenerationConfig, SampleConfig
from openvtp.generation.gfid import gfid
from openvtp.generation.latents import (LatentDataset, compute_latent_stats, extract_latents,
                                        load_latent_stats)
from openvtp.generation.sample import load_dit, sample
from openvtp.generation.train import StepBatches, train_dit
from openvtp.models.config import VTPConfig
from openvtp.models.vtp import VTPModel

N_IMAGES, SHARD = 24, 10


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    torch.manual_seed(0)
    vtp = VTPModel(VTPConfig.preset("vtp-tiny")).eval()
    data = CaptionedScenes("train", 64, N_IMAGES)
    latents = extract_latents(vtp, data, root / "latents", batch_size=8, shard_size=SHARD, stats_num=1000,
                              progress=False)
    return {"root": root, "vtp": vtp, "data": data, "latents": latents}


def dit_config(setup, run: str, *extra: str) -> GenerationConfig:
    return load_config(GenerationConfig, "dit-demo", [
        "model.arch=dit-tiny-1", f"data.latents_dir={setup['latents']}", "data.num_classes=7",
        f"train.out_dir={setup['root'] / run}", "train.steps=6", "train.batch=8", "train.ema_decay=0.9",
        "train.log_every=2", "train.ckpt_every=0", "train.tensorboard=false", "train.progress=false",
        "sample.num_samples=6", "sample.batch=4", "sample.num_steps=4", "sample.grid_images=6", *extra])


def test_extraction_layout(setup):
    out, vtp, data = setup["latents"], setup["vtp"], setup["data"]
    index = json.loads((out / "index.json").read_text())
    assert index["num_images"] == N_IMAGES and index["num_shards"] == 3 and index["latent_shape"] == [8, 4, 4]
    shard = load_file(out / "latents_00001.safetensors")
    assert shard["latents"].shape == (SHARD, 8, 4, 4) and shard["latents_flip"].shape == (SHARD, 8, 4, 4)
    assert shard["labels"].tolist() == [data[i]["label"] for i in range(SHARD, 2 * SHARD)]
    image = data[SHARD]["image"][None].float() / 255
    with torch.no_grad():
        assert torch.allclose(shard["latents"][0], vtp.encode(image)[0], atol=1e-5)
        assert torch.allclose(shard["latents_flip"][0], vtp.encode(image.flip(-1))[0], atol=1e-5)
    captions = json.loads((out / "captions_00002.json").read_text())
    assert len(captions) == N_IMAGES - 2 * SHARD and captions[0] == data[2 * SHARD]["caption"]


def test_stats_released_layout(setup):
    out = setup["latents"]
    raw = torch.load(out / "latents_stats.pt", weights_only=True)
    assert set(raw) == {"mean", "std"} and raw["mean"].shape == (1, 8, 1, 1) and raw["std"].shape == (1, 8, 1, 1)
    every = torch.cat([load_file(out / f"latents_{k:05d}.safetensors")["latents"] for k in range(3)])
    assert torch.allclose(raw["mean"], every.mean(dim=(0, 2, 3), keepdim=True), atol=1e-5)
    assert torch.allclose(raw["std"], every.std(dim=(0, 2, 3), keepdim=True), atol=1e-5)
    sub = compute_latent_stats(out, num=5, seed=3)  # a random subset differs from all latents
    assert not torch.allclose(sub["mean"], raw["mean"])
    compute_latent_stats(out, num=1000)  # restore for the other tests
    assert json.loads((out / "latents_stats.json").read_text())["num"] == N_IMAGES


def test_extraction_resumes(setup):
    out = setup["latents"]
    before = load_file(out / "latents_00001.safetensors")
    stamp = (out / "latents_00000.safetensors").stat().st_mtime_ns
    (out / "latents_00001.safetensors").unlink()
    extract_latents(setup["vtp"], setup["data"], out, batch_size=8, shard_size=SHARD, stats_num=1000, progress=False)
    assert (out / "latents_00000.safetensors").stat().st_mtime_ns == stamp  # complete shards are skipped
    after = load_file(out / "latents_00001.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(OpenVTPError):  # another layout must not mix with these shards
        extract_latents(setup["vtp"], setup["data"], out, shard_size=7, progress=False)


def test_latent_dataset_normalises(setup):
    ds = LatentDataset(setup["latents"])
    stats = load_latent_stats(setup["latents"])
    raw = load_file(setup["latents"] / "latents_00002.safetensors")
    z, y = ds[(2 * SHARD + 1, True)]
    assert torch.allclose(z, (raw["latents_flip"][1] - stats["mean"][0]) / stats["std"][0], atol=1e-6)
    assert y.item() == raw["labels"][1].item()
    z, _ = ds[(2 * SHARD + 1, False)]
    assert torch.allclose(z, (raw["latents"][1] - stats["mean"][0]) / stats["std"][0], atol=1e-6)


def test_step_batches_are_a_function_of_the_step():
    a = StepBatches(10, 4, seed=0, start_step=0, steps=8)
    b = StepBatches(10, 4, seed=0, start_step=5, steps=8)
    assert list(a)[5:] == list(b)
    ranks = [StepBatches(10, 4, 0, 0, 8, rank=r, world=2).batch(3) for r in range(2)]
    assert ranks[0] + ranks[1] == a.batch(3)
    epoch = [i for s in range(5) for i, _ in a.batch(s)][:10]  # first 10 positions: one permutation
    assert sorted(epoch) == list(range(10))


class FirstDims:
    """The random-weight FID Inception with its features cut to 64 dims: the whole Inception path runs, but
    the Frechet distance needs a 64x64 matrix square root instead of a 2048x2048 one (20 s on a busy core)."""

    def __init__(self, inner, dims=64):
        self.inner, self.dims = inner, dims

    def extract(self, batches, total=None):
        return self.inner.extract(batches, total)[:, : self.dims]


class Stop(Exception):
    pass


def test_killed_and_resumed_training_continues_with_the_same_losses(setup):
    straight = train_dit(dit_config(setup, "straight"))
    assert len(straight) == 6 and all(np.isfinite(straight))

    def kill(step, terms):
        if step == 4:
            raise Stop

    with pytest.raises(Stop):
        train_dit(dit_config(setup, "killed", "train.ckpt_every=3"), callback=kill)
    resumed = train_dit(dit_config(setup, "killed", "train.ckpt_every=3", "train.resume=latest"))
    assert len(resumed) == 3  # steps 4..6, after the checkpoint at step 3
    assert straight[3:] == resumed
    a, _, _ = load_dit(setup["root"] / "straight", use_ema=True)
    b, _, _ = load_dit(setup["root"] / "killed", use_ema=True)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_sample_and_gfid_end_to_end(setup):
    run = setup["root"] / "straight"
    if not (run / "checkpoints").is_dir():
        train_dit(dit_config(setup, "straight"))
    out = sample(run, setup["root"] / "samples", tokenizer=setup["vtp"], progress=False)
    arr = np.load(out)["arr_0"]
    assert arr.shape == (6, 64, 64, 3) and arr.dtype == np.uint8
    assert len(list((setup["root"] / "samples" / "samples").glob("*.png"))) == 6
    assert (setup["root"] / "samples" / "grid.png").is_file()
    # the same sampler settings give the same images whatever the batch size (up to float rounding)
    again = sample(run, setup["root"] / "samples_b1", SampleConfig(num_samples=6, batch=1, num_steps=4,
                   save_png=False, grid_images=0), tokenizer=setup["vtp"], progress=False)
    assert np.abs(np.load(again)["arr_0"].astype(int) - arr).max() <= 1

    ref = setup["root"] / "reference"
    ref.mkdir()
    for i in range(6):
        Image.fromarray(setup["data"][i]["image"].permute(1, 2, 0).numpy()).save(ref / f"{i}.png")
    extractor = FirstDims(InceptionFeatures("random", "cpu", progress=False))
    result = gfid(run, ref, num_samples=6, tokenizer=setup["vtp"], extractor=extractor,
                  save_npz=setup["root"] / "gfid.npz", progress=False)
    assert result["num_samples"] == 6 and np.isfinite(result["fid"]) and result["fid"] >= 0
    assert np.array_equal(np.load(setup["root"] / "gfid.npz")["arr_0"], arr)


def test_attribute_probe_api():
    probe = train_attribute_probe(size=32, num_train=32, steps=2, batch_size=8, width=8, num_val=8, progress=False)
    assert set(probe.val_acc) == {"shape", "colour"}
    real = render("train", 32, 12, seed=5)
    images = real["images"].float() / 255
    q = generation_quality(probe, images, real["shape"], real["colour"], reference01=images.flip(-1))
    assert 0 <= q["shape_acc"] <= 1 and 0 <= q["colour_acc"] <= 1 and q["frechet_probe"] >= 0
    assert generation_quality(probe, images, real["shape"], reference01=images)["colour_acc"] is None
