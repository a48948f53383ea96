"""`openvtp study --data` / `demo --data`: a labelled set (class folders, webdataset shards, sklearn-digits) read
into train and held-out splits, settings chosen from it, a killed study resumed, unreadable images counted, bad
input refused in one line."""
import io
import json
import signal
import tarfile
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from openvtp.cli import main
from openvtp.demo.labelled import DIGITS, LabelledRequest, read_labelled
from openvtp.demo.labelled_settings import DataPlan, data_overrides, default_size, tier_for
from openvtp.demo.scenes import SHAPES, CaptionedScenes
from openvtp.errors import OpenVTPError

from .test_cli_demo import GENERATION, STAGE2
from .test_train import TINY, _cli

SET_BY_DATA = ("model.image_size=", "model.vision_patch_size=", "ssl.global_size=", "ssl.local_size=",
               "data.photo_fraction=")
TINY_DATA = [o for o in TINY if not o.startswith(SET_BY_DATA)] + ["eval.images=8", *STAGE2, *GENERATION]
GRID = ["--variants", "ae,vtp", "--tokenizer-steps", "2,3", "--seeds", "0"]


def _png(image: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="PNG")
    return buf.getvalue()


def _scenes(n_per_class: int, classes: int = 3, size: int = 16, seed: int = 0) -> list[tuple[int, torch.Tensor]]:
    """(shape, image) pairs from the embedded renderer, n_per_class of each of the first `classes` shapes."""
    ds, out, counts = CaptionedScenes("train", size, 10_000, seed), [], [0] * classes
    for i in range(10_000):
        item = ds[i]
        if item["shape"] < classes and counts[item["shape"]] < n_per_class:
            counts[item["shape"]] += 1
            out.append((item["shape"], item["image"]))
        if min(counts) == n_per_class:
            return out
    raise AssertionError("the renderer drew too few scenes")


def _class_folder(root: Path, n_per_class: int = 10, corrupt: bool = True) -> Path:
    for k, (shape, image) in enumerate(_scenes(n_per_class)):
        folder = root / SHAPES[shape]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{k:03d}.png").write_bytes(_png(image))
    if corrupt:
        (root / SHAPES[0] / "broken.png").write_bytes(b"not a png at all")
    return root


def _shards(path: Path) -> None:
    """Two shards of scenes with .cls and .txt; one sample without a label, one with a corrupt image."""
    scenes = _scenes(6)
    for t in range(2):
        with tarfile.open(path / f"part-{t}.tar", "w") as tar:
            for k, (shape, image) in enumerate(scenes[t::2]):
                members = {"png": _png(image), "cls": str(shape).encode(), "txt": f"a {SHAPES[shape]}".encode()}
                if t == 0 and k == 0:
                    members.pop("cls")
                if t == 1 and k == 0:
                    members["png"] = b"corrupt"
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"s{t}{k:03d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


@pytest.mark.slow
def test_a_killed_study_on_a_class_folder_resumes_and_reports_the_datas_figures(tmp_path):
    data, out = _class_folder(tmp_path / "shapes"), tmp_path / "study"
    args = ["study", "--data", str(data), "--heldout-fraction", "0.3", "--out", str(out), *GRID, *TINY_DATA]
    first = out / "cells" / "vtp-3-s0" / "cell.json"  # the grid's first cell
    killed = _cli(*args, "--jobs", "1")
    while not first.exists():
        assert killed.poll() is None, killed.communicate()[1][-3000:]
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    before = first.stat().st_mtime_ns

    proc = _cli(*args, "--jobs", "2")
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert "4 cells, 1 already done, 3 to run" in stderr and first.stat().st_mtime_ns == before

    study = json.loads((out / "study.json").read_text())
    assert sorted(c["cell"] for c in study["cells"]) == ["ae-2-s0", "ae-3-s0", "vtp-2-s0", "vtp-3-s0"]
    assert (out / "study.md").read_text() in stdout and (out / "study.png").stat().st_size > 10_000
    meta = study["data"]
    assert meta["classes"] == 3 and meta["classnames"] == list(SHAPES[:3]) and meta["size"] == 16
    assert (meta["train_images"], meta["heldout_images"]) == (21, 9)  # 3 of each class's 10 held out
    assert meta["skipped"] == {"bad_image": 1} and "unreadable images skipped: 1 (1 bad_image)" in stdout
    assert meta["captions"] == "templates" and "made from the class names" in stdout
    assert study["settings"]["data"]["request"]["heldout_fraction"] == 0.3
    for c in study["cells"]:
        g = c["generation"]
        assert c["complete"] and 0 <= g["judge_heldout_acc"] <= 100 and g["dit_steps"] == 12
        assert all(isinstance(g[f"frechet_{row}"], float) for row in ("generated", "reconstructed", "real"))
        assert g["fid_inception"].startswith("skipped") and c["reconstruction"]["ssim"] is not None
        assert (c["understanding"]["zeroshot_class"] is None) == (c["variant"] == "ae")
    assert len(list((out / "judge").glob("judge-*.safetensors"))) == 1  # one judge, trained once


def test_shards_and_the_imagenet_layout_are_read_with_their_splits_labels_and_captions(tmp_path):
    _shards(tmp_path)
    shards = read_labelled(LabelledRequest(str(tmp_path / "part-{0..1}.tar"), classnames="disc,box,wedge"),
                           default_size)
    assert shards.skipped == {"bad_image": 1, "missing_label": 1}
    assert len(shards.train_labels) + len(shards.heldout_labels) == 16 and shards.captions == "data"
    assert shards.classnames == ["disc", "box", "wedge"] and shards.size == 16
    assert set(shards.train_captions) <= {f"a {s}" for s in SHAPES[:3]}
    folder = read_labelled(LabelledRequest(str(tmp_path), classnames="disc,box,wedge"), default_size)  # of .tar
    assert folder.digest == shards.digest
    assert read_labelled(LabelledRequest(str(tmp_path)), default_size).classnames == ["class 0", "class 1", "class 2"]

    root = tmp_path / "imagenet"
    _class_folder(root / "train", 4, corrupt=False)
    _class_folder(root / "val", 2, corrupt=False)
    (root / "names.txt").write_text("disc\nbox\nwedge\n")
    s = read_labelled(LabelledRequest(str(root), size=8, classnames=str(root / "names.txt")), default_size)
    assert (len(s.train_labels), len(s.heldout_labels), s.size) == (12, 6, 8) and "val/ held out" in s.split
    assert s.train_images.shape[1:] == (3, 8, 8) and s.captions == "templates"
    assert s.train_captions[0].endswith(f"{s.classnames[int(s.train_labels[0])]}.")
    with pytest.raises(OpenVTPError, match="--classnames gives 2 names for the 3 classes"):
        read_labelled(LabelledRequest(str(root), classnames="a,b"), default_size)


def test_digits_need_no_download_and_get_the_smallest_band(tmp_path):
    a = read_labelled(LabelledRequest(DIGITS), default_size)
    assert (a.size, a.num_classes, len(a.train_labels), len(a.heldout_labels)) == (8, 10, 1438, 359)
    assert a.classnames[3] == "three" and a.train_images.dtype == torch.uint8
    assert read_labelled(LabelledRequest(DIGITS), default_size).digest == a.digest  # seeded
    assert read_labelled(LabelledRequest(DIGITS, split_seed=1), default_size).digest != a.digest
    rules = data_overrides(DataPlan(a, tmp_path))
    for expected in ("model.image_size=8", "model.vision_patch_size=2", "ssl.local_size=4", "ssl.flip_p=0",
                     "decoder.gan.disc_layers=1", "dit.model.patch_size=1", "dit.data.flip=false",
                     "generation.num_images=1438", "generation.condition=class"):
        assert expected in rules
    assert [tier_for(s).patch for s in (8, 16, 17, 32, 64, 224)] == [2, 2, 4, 4, 8, 16]
    assert [default_size(s) for s in (8, 28, 30, 500)] == [8, 28, 32, 496]


def _one_class(root: Path) -> Path:
    folder = root / "one" / "circle"
    folder.mkdir(parents=True)
    (folder / "a.png").write_bytes(_png(torch.zeros(3, 16, 16, dtype=torch.uint8)))
    return root / "one"


@pytest.mark.parametrize("flags, message", [
    (["--data", "{tmp}/nowhere"], "--data {tmp}/nowhere: no such folder or file"),
    (["--data", "{tmp}/one"], "1 class folder (circle): a labelled set needs at least 2 classes"),
    (["--data", "imagenet-tiny"], "not a folder of class folders, webdataset shards or a known name (sklearn-digits)"),
    (["--size", "16"], "--size needs --data"),
    (["--data", "sklearn-digits", "--size", "9"], "--size 9 is not a multiple of its patch size 2"),
    (["--data", "sklearn-digits", "--heldout-fraction", "1"], "--heldout-fraction must be in (0, 1)"),
])
def test_bad_data_is_refused_in_one_line_before_any_work(tmp_path, capsys, flags, message):
    _one_class(tmp_path)
    out = tmp_path / "study"
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    assert main(["study", *flags, "--out", str(out), *GRID, *TINY_DATA]) == 1
    err = capsys.readouterr().err
    assert message.replace("{tmp}", str(tmp_path)) in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and not out.exists()


def test_inception_fid_rows_use_the_fid_code_and_the_reference(monkeypatch):
    """With --fid-weights each row's Inception FID is the project's Frechet distance of its features to the
    reference's (a fake extractor stands in for the Inception here)."""
    import openvtp.demo.labelled_generation as lg
    from openvtp.eval.fid import feature_statistics, frechet_distance

    class Fake:
        def __init__(self, weights, device, progress):
            assert weights == "w.pth"

        def extract(self, batches):
            return torch.cat([b.flatten(2).mean(-1).double() for b in batches])

    monkeypatch.setattr(lg, "InceptionFeatures", Fake)
    gen = torch.Generator().manual_seed(0)
    ref, rows = torch.rand(20, 3, 8, 8, generator=gen), {"generated": torch.rand(20, 3, 8, 8, generator=gen)}
    fid = lg.inception_fids("w.pth", rows, ref)
    stats = [feature_statistics(x.flatten(2).mean(-1).double().numpy()) for x in (rows["generated"], ref)]
    assert fid["generated"] == pytest.approx(frechet_distance(*stats[0], *stats[1]))
