"""`openvtp eval --protocol vtp`: VTP's tools/ scripts (zero-shot, linear probe, reconstruction) beside openvtp's."""
import json

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

from openvtp.cli import main
from openvtp.demo.scenes import CaptionedScenes, colour_prompts
from openvtp.data.image_io import quantize
from openvtp.eval.preprocess import random_resized_crop_flip
from openvtp.eval.suite import EvalOptions, Suite, evaluate
from openvtp.eval.vtp_protocol import (probe_crop_size, probe_epoch_length, probe_stream, recon_compute,
                                       truncate_uint8, vtp_denormalize)
from openvtp.eval.zero_shot import build_zero_shot_classifier
from openvtp.models import VTPModel

from .conftest import CONFORMANCE

MODEL = str(CONFORMANCE / "tiny-swiglu-rms")
NAME = "tiny-swiglu-rms"


@pytest.fixture(scope="module")
def vtp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vtp")
    opts = EvalOptions(tasks=("zeroshot", "linprobe", "recon"), protocol="vtp", limit=8, train_limit=16,
                       probe_epochs=3, probe_batch=8, progress=False, fid_weights="none", lpips="none", grid=0)
    payload, _ = evaluate([MODEL], "embedded", opts, out)
    return out, payload


def test_embedded_entries_name_the_vtp_protocol(vtp_run):
    out, payload = vtp_run
    res = {e["name"]: e for e in payload["results"][NAME]}
    assert set(res) == {"zeroshot/shape", "zeroshot/colour", "linprobe/shape/vtp", "linprobe/colour/vtp", "recon"}
    assert payload["protocol"] == "vtp"
    assert all(e["protocol"]["eval_protocol"] == "vtp" for e in res.values())
    assert json.loads((out / "results.json").read_text())["protocol"] == "vtp"
    assert res["zeroshot/shape"]["protocol"]["precision"] == "float32"
    assert res["zeroshot/shape"]["protocol"]["preprocessing"].startswith("squash resize (bilinear")
    assert Suite("embedded", EvalOptions(protocol="vtp"), out).lpips_net == "vgg"  # VTP's script: LPIPS-VGG
    assert Suite("embedded", EvalOptions(), out).lpips_net == "alex"
    assert Suite("embedded", EvalOptions(protocol="vtp", lpips_net="alex"), out).lpips_net == "alex"
    probe = res["linprobe/colour/vtp"]["protocol"]
    assert probe["resolution"] == 48 and probe["variants"] == ["cls1_avgpool"]  # depth-2 trunk: 1 block only
    assert probe["epoch_length"] == 2 and len(probe["epoch_top1"]) == 3  # 16 train images, batch 8
    # the best epoch is reported, not the last
    assert res["linprobe/colour/vtp"]["metrics"]["top1"] == max(probe["epoch_top1"])
    assert probe["epoch_top1"][probe["best_epoch"]] == max(probe["epoch_top1"])
    assert probe["last_epoch_top1"] == probe["epoch_top1"][-1]


def test_embedded_numbers_match_vtp_scripts(vtp_run):
    _, payload = vtp_run
    res = {e["name"]: e for e in payload["results"][NAME]}
    model = VTPModel.from_pretrained(MODEL).eval()
    items = [CaptionedScenes("heldout", size=64, length=8, seed=0)[i] for i in range(8)]
    x = torch.stack([it["image"] for it in items]).float() / 255
    with torch.inference_mode():
        xn = model.normalize(x)
        rec = vtp_denormalize(model.get_latents_decoded_images(model.get_reconstruction_latents(xn))).clamp(0, 1)
        names, templates = colour_prompts()
        clf = build_zero_shot_classifier(model.get_clip_text_feature, names, templates, model.tokenize)
        img = model.get_clip_image_feature(xn)
    mse = ((x * 255 - rec * 255) ** 2).flatten(1).mean(1)
    psnr_float = (20 * torch.log10(255 / mse.sqrt())).mean().item()
    psnr_8bit = (-10 * torch.log10((x - quantize(rec).float() / 255).pow(2).flatten(1).mean(1))).mean().item()
    # VTP scores the float reconstructions, openvtp the saved 8-bit ones (far apart only for good reconstructions)
    assert res["recon"]["metrics"]["psnr"] == pytest.approx(psnr_float, abs=5e-6)
    assert abs(res["recon"]["metrics"]["psnr"] - psnr_8bit) > 2e-5
    colours = torch.tensor([it["colour"] for it in items])
    top1 = 100 * ((img @ clf).argmax(1) == colours).float().mean().item()
    assert res["zeroshot/colour"]["metrics"]["top1"] == pytest.approx(top1, abs=1e-6)


def test_vtp_recon_feeds_pytorch_fid_truncated_images():
    model = VTPModel.from_pretrained(MODEL).eval()
    seen = []

    class Recorder:
        def pool_features_pytorch_fid(self, images):
            seen.append(images)
            return images.flatten(1)[:, :4].double()

    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = recon_compute(model, torch.device("cpu"), torch.autocast("cpu", enabled=False), None, Recorder())(images)
        rec01 = vtp_denormalize(model.get_latents_decoded_images(
            model.get_reconstruction_latents(model.normalize(images.float() / 255)))).clamp(0, 1)
    assert seen[0].dtype == torch.uint8 and seen[1].dtype == torch.uint8
    assert torch.equal(seen[1], (rec01 * 255).to(torch.uint8))  # truncated, as (x * 255).astype(np.uint8)
    assert not torch.equal(seen[1], quantize(rec01))
    assert (seen[0].int() - images.int()).abs().max() <= 1  # originals survive the round trip up to truncation
    assert set(out) == {"psnr", "psnr_patch_mean", "ssim", "inception_orig", "inception_recon"}
    assert torch.equal(truncate_uint8(torch.tensor([[0.99999, 0.5, 0.00001]])), torch.tensor([[254, 127, 0]],
                                                                                              dtype=torch.uint8))


def test_probe_augmentation_is_torchvisions_and_seeded():
    pil = Image.fromarray(torch.randint(0, 256, (40, 56, 3), dtype=torch.uint8,
                                        generator=torch.Generator().manual_seed(1)).numpy())
    a, b = random_resized_crop_flip(pil, 16, seed=5), random_resized_crop_flip(pil, 16, seed=5)
    assert a.shape == (3, 16, 16) and torch.equal(a, b)
    assert not torch.equal(a, random_resized_crop_flip(pil, 16, seed=6))
    torch.manual_seed(5)  # torchvision's own transforms with the same draws give the same crop
    tv = T.Compose([T.RandomResizedCrop(16, interpolation=T.InterpolationMode.BICUBIC), T.RandomHorizontalFlip(),
                    T.PILToTensor()])
    assert torch.equal(tv(pil), a)


def test_probe_stream_and_geometry():
    stream = probe_stream(5, 4, 3, seed=0)  # 12 draws: two full permutations of 5, then 2 of a third
    order = [pos for batch in stream for pos, _ in batch]
    assert sorted(order[:5]) == sorted(order[5:10]) == list(range(5)) and order[:5] != order[5:10]
    assert stream == probe_stream(5, 4, 3, seed=0) and stream != probe_stream(5, 4, 3, seed=1)
    assert len({s for batch in stream for _, s in batch}) == 12
    assert probe_crop_size(256, 16) == 224 and probe_crop_size(64, 16) == 48 and probe_crop_size(16, 16) == 16
    assert probe_epoch_length(1_281_167, 128) == 1250 and probe_epoch_length(100, 8) == 12
    assert probe_epoch_length(100, 8, requested=3) == 3


def _class_folders(root, size_by_split):
    gen = torch.Generator().manual_seed(0)
    for split, n in size_by_split.items():
        for label, colour in enumerate(("red", "blue")):
            d = root / split / colour
            d.mkdir(parents=True)
            for i in range(n):
                x = torch.randint(0, 60, (3, 50 + 7 * i, 70), generator=gen, dtype=torch.uint8)
                x[label * 2] += 180
                Image.fromarray(x.permute(1, 2, 0).numpy()).save(d / f"{i}.png")


@pytest.mark.slow  # three passes and a probe over files
def test_cli_protocol_vtp_on_an_image_folder(tmp_path, capsys):
    _class_folders(tmp_path / "data", {"train": 4, "val": 2})
    out = tmp_path / "out"
    assert main(["eval", MODEL, "--data", str(tmp_path / "data"), "--protocol", "vtp", "--probe-epochs", "2",
                 "--fid-weights", "none", "--lpips", "none", "--out", str(out), "--no-progress", "--workers", "0",
                 "--grid", "0"]) == 0
    payload = json.loads((out / "results.json").read_text())
    res = {e["name"]: e for e in payload["results"][NAME]}
    assert set(res) == {"zeroshot/class", "linprobe/class/vtp", "recon"} and payload["protocol"] == "vtp"
    assert all(e["protocol"]["eval_protocol"] == "vtp" and "metrics" in e for e in res.values())
    assert res["zeroshot/class"]["protocol"]["class_name_list"] == ["blue", "red"]
    assert res["linprobe/class/vtp"]["protocol"]["train_images"] == 8
    assert res["linprobe/class/vtp"]["protocol"]["preprocessing"].startswith("resize short side")
    assert res["recon"]["protocol"]["preprocessing"].startswith("ADM centre crop")
    # kNN asked for explicitly keeps openvtp's protocol, and says so
    assert main(["eval", MODEL, "--data", str(tmp_path / "data"), "--protocol", "vtp", "--tasks", "knn",
                 "--out", str(tmp_path / "knn"), "--no-progress", "--workers", "0", "--grid", "0"]) == 0
    knn = json.loads((tmp_path / "knn" / "results.json").read_text())["results"][NAME][0]
    assert knn["name"] == "knn/class" and knn["protocol"]["eval_protocol"] == "openvtp"
    capsys.readouterr()


def test_vtp_probe_reports_the_best_epoch_not_the_last():
    from openvtp.eval.datasets import EvalSet
    from openvtp.eval.vtp_protocol import linear_probe_vtp

    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(16) % 2
    images = (torch.rand(16, 3, 24, 24, generator=gen) * 100 + 120 * labels.view(-1, 1, 1, 1)).to(torch.uint8)
    train = EvalSet("two tones", "train", list(range(16)), images.__getitem__)

    def features(batch):  # brightness, centred: the classes separate along it
        return {"v": torch.stack([batch.float().mean((1, 2, 3)) / 100 - 1.1, torch.ones(len(batch))], 1)}

    # scored against flipped labels, the probes get worse the more they learn: the first epoch is the best
    res = linear_probe_vtp(features, train, labels, features(images), 1 - labels, num_classes=2, crop=16, epochs=4,
                           batch_size=8, lrs=(0.5,), progress=False)
    assert res["best_epoch"] == 0 and res["top1"] == res["epoch_top1"][0] > res["last_epoch_top1"]
    assert res["last_epoch_top1"] == res["epoch_top1"][-1] and res["steps"] == 8 and res["epoch_length"] == 2
