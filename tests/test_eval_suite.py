"""The evaluation suite in-process: numbers against direct computations, data forms, skips, resume, bad input."""
import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import openvtp.eval.suite as suite_mod
from openvtp.demo.scenes import COLOURS, SHAPES, CaptionedScenes, colour_prompts
from openvtp.data.shards import write_shards
from openvtp.errors import OpenVTPError
from openvtp.eval.datasets import open_data
from openvtp.data.image_io import quantize
from openvtp.eval.suite import EvalOptions, evaluate, model_names, probe_batch_size
from openvtp.eval.zero_shot import build_zero_shot_classifier
from openvtp.models import VTPConfig, VTPModel

from .conftest import CONFORMANCE

MODEL = str(CONFORMANCE / "tiny-swiglu-rms")
QUIET = dict(progress=False, fid_weights="none", grid=4)


def by_name(payload, model):
    return {e["name"]: e for e in payload["results"][model]}


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("embedded")
    opts = EvalOptions(limit=12, train_limit=24, lpips="random", **QUIET)
    payload, table = evaluate([MODEL], "embedded", opts, out)
    return out, payload, table


def test_embedded_every_task_with_protocols(embedded_run):
    out, payload, table = embedded_run
    res = by_name(payload, "tiny-swiglu-rms")
    expected = {"zeroshot/shape", "zeroshot/colour", "knn/shape", "knn/colour", "retrieval", "recon",
                *(f"linprobe/{a}/{p}" for a in ("shape", "colour") for p in ("cls", "latent", "dinov2"))}
    assert set(res) == expected
    for e in res.values():
        assert "skipped" not in e and e["metrics"], e
        proto = e["protocol"]
        assert proto["dataset"] == "embedded" and proto["images"] == 12 and proto["resolution"] == 64
        assert proto["skipped_images"] == 0 and proto["preprocessing"] == "none: scenes rendered at 64 px"
        assert "features" in proto or e["task"] == "recon"
    assert res["zeroshot/shape"]["protocol"]["template_list"] == ["a photo of a {}.", "a {} shape.",
                                                                  "a drawing of a {}.", "an image of a {}."]
    assert res["knn/shape"]["protocol"]["train_images"] == 24 and res["knn/shape"]["protocol"]["k"] == 20
    assert res["linprobe/shape/dinov2"]["protocol"]["blocks_available"] == 2  # a depth-2 trunk: cls1 variants only
    assert set(res["linprobe/shape/dinov2"]["protocol"]["variants"]) == {"cls1", "cls1_avgpool"}
    assert set(res["retrieval"]["metrics"]) == {f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}
    assert res["recon"]["skipped_metrics"] == {"rfid": "turned off (--fid-weights none)"}
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["results"] == json.loads(json.dumps(payload["results"]))
    assert "| zeroshot/shape" in table and "| recon" in (out / "results.md").read_text()
    with Image.open(out / "recon_tiny-swiglu-rms.png") as im:  # 4 pairs of 64 px images in one row, 2 px padding
        assert im.size == (8 * 66 + 2, 66 + 2)


def test_embedded_numbers_match_direct_computation(embedded_run):
    _, payload, _ = embedded_run
    res = by_name(payload, "tiny-swiglu-rms")
    model = VTPModel.from_pretrained(MODEL).eval()
    items = [CaptionedScenes("heldout", size=64, length=12, seed=0)[i] for i in range(12)]
    x = torch.stack([it["image"] for it in items]).float() / 255
    with torch.inference_mode():
        rec = quantize(model.decode(model.encode(x))).float() / 255
        psnr = (-10 * torch.log10((x - rec).pow(2).flatten(1).mean(1))).mean().item()
        img = model.encode_image(x)
        names, templates = colour_prompts()
        clf = build_zero_shot_classifier(model.get_clip_text_feature, names, templates, model.tokenize)
    assert res["recon"]["metrics"]["psnr"] == pytest.approx(psnr, abs=1e-4)
    colours = torch.tensor([it["colour"] for it in items])
    top1 = 100 * ((img @ clf).argmax(1) == colours).float().mean().item()
    assert res["zeroshot/colour"]["metrics"]["top1"] == pytest.approx(top1, abs=1e-6)
    assert len(SHAPES) == len(COLOURS) == 7 and set(res["zeroshot/colour"]["metrics"]) == {"top1", "top5"}


def test_feature_cache_resumes_and_skips_done_chunks(tmp_path, monkeypatch):
    seen = []
    real = suite_mod.pass_compute

    def counting(*args, **kwargs):
        compute = real(*args, **kwargs)

        def wrapped(images):
            seen.append(len(images))
            return compute(images)

        return wrapped

    monkeypatch.setattr(suite_mod, "pass_compute", counting)
    opts = EvalOptions(tasks=("knn",), limit=10, train_limit=10, chunk_size=4, batch_size=4, **QUIET)
    first, _ = evaluate([MODEL], "embedded", opts, tmp_path)
    assert sum(seen) == 20
    chunks = sorted((tmp_path / "cache" / "tiny-swiglu-rms").glob("*/chunk_*.safetensors"))
    assert len(chunks) == 6  # 3 chunks of 4, 4, 2 images per split
    seen.clear()
    chunks[1].unlink()  # as if the run had been killed before writing it
    again, _ = evaluate([MODEL], "embedded", opts, tmp_path)
    assert seen == [4]
    assert by_name(again, "tiny-swiglu-rms")["knn/shape"]["metrics"] == by_name(first, "tiny-swiglu-rms")["knn/shape"][
        "metrics"]


def _image(colour, size=(40, 30)):
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[:] = colour
    return Image.fromarray(arr)


@pytest.fixture
def imagenet_like(tmp_path):
    colours = {"n01440764": (200, 30, 30), "n01443537": (30, 200, 30)}
    for split, n in (("train", 4), ("val", 2)):
        for syn, c in colours.items():
            (tmp_path / "inet" / split / syn).mkdir(parents=True)
            for i in range(n):
                _image(c).save(tmp_path / "inet" / split / syn / f"{i}.png")
    (tmp_path / "inet" / "val" / "n01440764" / "broken.png").write_bytes(b"not an image")
    return tmp_path / "inet"


def test_imagenet_folder_unreadable_images_counted(imagenet_like, tmp_path):
    data = open_data(str(imagenet_like), 64)
    assert data.test.labelsets["class"].classnames == ["tench", "goldfish"]  # OpenCLIP names of the synsets
    assert len(data.test.labelsets["class"].templates) == 80
    assert (len(data.test), len(data.train)) == (5, 8)
    opts = EvalOptions(tasks=("zeroshot", "knn", "recon"), lpips="none", **QUIET)
    payload, _ = evaluate([MODEL], str(imagenet_like), opts, tmp_path / "out")
    res = by_name(payload, "tiny-swiglu-rms")
    for name in ("zeroshot/class", "knn/class", "recon"):
        assert res[name]["protocol"]["images"] == 4 and res[name]["protocol"]["skipped_images"] == 1
    assert res["zeroshot/class"]["protocol"]["preprocessing"].startswith("squash")
    assert res["knn/class"]["protocol"]["preprocessing"].startswith("resize short side to size/crop_pct 0.875")
    assert res["recon"]["protocol"]["preprocessing"].startswith("ADM centre crop")
    assert "1 unreadable image(s) skipped in split val" in (tmp_path / "out" / "results.md").read_text()


def test_caption_file_groups_captions_and_limit_is_a_fixed_subset(tmp_path):
    for name, c in (("red", (200, 0, 0)), ("green", (0, 200, 0)), ("blue", (0, 0, 200))):
        _image(c).save(tmp_path / f"{name}.png")
    with open(tmp_path / "caps.csv", "w", newline="") as f:
        csv.writer(f).writerows([("file", "caption"), ("red.png", "a red one"), ("green.png", "a green one"),
                                 ("red.png", "something red"), ("blue.png", "a blue one")])
    data = open_data(str(tmp_path / "caps.csv"), 64)
    assert data.test.captions == [["a red one", "something red"], ["a green one"], ["a blue one"]]
    sub = data.test.subset(2)
    assert sub.keys == data.test.subset(2).keys and len(sub) == 2
    assert [data.test.keys.index(k) for k in sub.keys] == sorted(data.test.keys.index(k) for k in sub.keys)
    assert data.train is None and not data.test.labelsets


def test_shards_are_indexed_for_random_access(tmp_path):
    samples = [{"image": np.asarray(_image((40 * i, 0, 0))), "caption": f"shade {i}", "key": f"k{i}"} for i in range(5)]
    samples.append({"image": np.asarray(_image((0, 0, 0))), "caption": None, "key": "nocaption"})
    write_shards(samples, str(tmp_path / "s-%03d.tar"), maxcount=3)
    data = open_data(str(tmp_path / "s-{000..001}.tar"), 64)
    assert len(data.test) == 5 and data.test.unusable == 1
    assert data.test.captions[3] == ["shade 3"]
    img = data.test.load(3, 32, "squash")
    assert img.shape == (3, 32, 32) and int(img[0].float().mean()) == 120


def test_bad_inputs_are_clear_errors(tmp_path, imagenet_like):
    with pytest.raises(OpenVTPError, match="unknown task 'segmentation'"):
        EvalOptions(tasks=("segmentation",))
    with pytest.raises(OpenVTPError, match="--preprocess"):
        EvalOptions(preprocess={"recon": "stretch"})
    with pytest.raises(OpenVTPError, match="not found"):
        open_data(str(tmp_path / "nowhere"), 64)
    (tmp_path / "mismatch" / "train" / "a").mkdir(parents=True)
    (tmp_path / "mismatch" / "val" / "b").mkdir(parents=True)
    _image((1, 2, 3)).save(tmp_path / "mismatch" / "train" / "a" / "x.png")
    _image((1, 2, 3)).save(tmp_path / "mismatch" / "val" / "b" / "x.png")
    with pytest.raises(OpenVTPError, match="different class folders"):
        open_data(str(tmp_path / "mismatch"), 64)
    data = open_data(str(imagenet_like), 64)
    with pytest.raises(OpenVTPError, match="preprocessing 'none' needs 64x64"):
        data.test.load(0, 64, "none")
    (tmp_path / "names.txt").write_text("one\n")
    with pytest.raises(OpenVTPError, match="has 1 names"):
        open_data(str(imagenet_like), 64, classnames=str(tmp_path / "names.txt"))


def test_skips_and_explicit_tasks(tmp_path):
    cfg = VTPConfig.from_json_file(CONFORMANCE / "tiny-swiglu-rms" / "config.json")
    cfg.train_clip = False
    VTPModel(cfg).save_pretrained(tmp_path / "ae")
    # default task list: what the model cannot do is skipped with the reason
    opts = EvalOptions(tasks=("zeroshot", "retrieval", "knn"), limit=6, train_limit=6, **QUIET)
    payload, table = evaluate([str(tmp_path / "ae")], "embedded", opts, tmp_path / "out")
    res = by_name(payload, "ae")
    assert res["zeroshot/shape"]["skipped"] == "model has no text tower (train_clip is false)"
    assert res["retrieval"]["skipped"].startswith("model has no text tower") and "metrics" in res["knn/shape"]
    # named explicitly, a task no model can run is an error before any work
    opts = EvalOptions(tasks=("zeroshot", "knn"), explicit_tasks=True, **QUIET)
    with pytest.raises(OpenVTPError, match="cannot run zeroshot: model has no text tower"):
        evaluate([str(tmp_path / "ae")], "embedded", opts, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_model_names_and_probe_batch():
    assert model_names(["runs/a/tokenizer", "runs/b/tokenizer"]) == ["a-tokenizer", "b-tokenizer"]
    assert model_names(["x/vtp", "y/ae"]) == ["vtp", "ae"]
    with pytest.raises(OpenVTPError, match="distinct"):
        model_names(["a", "b"], ["same", "same"])
    assert probe_batch_size(1_281_167, None) == 1024 and probe_batch_size(1000, None) == 50
    assert probe_batch_size(10, None) == 10 and probe_batch_size(1000, 256) == 256


def test_normalised_clip_features_are_stored(embedded_run):
    out, _, _ = embedded_run
    from openvtp.eval.features import FeatureCache

    folder = next(p for p in (out / "cache" / "tiny-swiglu-rms").iterdir() if p.name.startswith("heldout"))
    feats, positions = FeatureCache(folder).load()
    assert positions.tolist() == list(range(12))
    assert torch.allclose(F.normalize(feats["clip"], dim=-1), feats["clip"], atol=1e-5)
    assert feats["cls_blocks"].shape == (12, 2, 64) and feats["cls_blocks"].dtype == torch.float16


@pytest.fixture
def offline(tmp_path, monkeypatch):
    import urllib.error

    import openvtp.eval.weights as weights_mod

    def no_network(url, dst):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(weights_mod, "_download", no_network)
    return tmp_path / "hub" / "checkpoints"


def test_offline_recon_reports_missing_weights_and_keeps_the_rest(tmp_path, offline):
    opts = EvalOptions(tasks=("recon",), limit=4, progress=False, grid=0)  # fid_weights and lpips "auto"
    payload, table = evaluate([MODEL], "embedded", opts, tmp_path / "out")
    recon = payload["results"]["tiny-swiglu-rms"][0]
    assert set(recon["metrics"]) == {"psnr", "ssim", "psnr_patch_mean_baseline"}
    rfid, lp = recon["skipped_metrics"]["rfid"], recon["skipped_metrics"]["lpips"]
    assert str(offline / "weights-inception-2015-12-05-6726825d.pth") in rfid and "--fid-weights PATH" in rfid
    assert str(offline / "alexnet-owt-7be5be79.pth") in lp
    assert "| recon" in table and "skipped" in table


def test_class_folders_train_data_and_own_names(imagenet_like, tmp_path):
    (tmp_path / "names.txt").write_text("red fish\n# a comment\ngreen fish\n")
    (tmp_path / "templates.txt").write_text("a photo of a {}.\nart of a {}.\n")
    data = open_data(str(imagenet_like / "val"), 64, train_spec=str(imagenet_like / "train"),
                     classnames=str(tmp_path / "names.txt"), templates=str(tmp_path / "templates.txt"))
    ls = data.test.labelsets["class"]
    assert ls.classnames == ["red fish", "green fish"] and ls.templates == ["a photo of a {}.", "art of a {}."]
    assert ls.names_source.startswith("class names from") and ls.templates_source.startswith("2 templates from")
    assert (data.test.split, data.train.split, len(data.train)) == ("test", "train", 8)
    (tmp_path / "bad.txt").write_text("no placeholder\n")
    with pytest.raises(OpenVTPError, match="exactly one"):
        open_data(str(imagenet_like / "val"), 64, templates=str(tmp_path / "bad.txt"))
    with pytest.raises(OpenVTPError, match="already has a train split"):
        open_data(str(imagenet_like), 64, train_spec=str(imagenet_like / "train"))
    folder = open_data(str(imagenet_like / "val" / "n01443537"), 64)  # images only: unlabelled, recon only
    assert folder.kind == "image folder (unlabelled)" and len(folder.test) == 2 and not folder.test.labelsets
