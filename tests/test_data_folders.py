"""Image folder datasets: CSV/JSONL captions, class folders, unreadable files."""
import json

import pytest
import torch
from PIL import Image

from openvtp.data.folders import CaptionFolder, ClassFolder
from openvtp.data.images import decode_image, encode_image
from openvtp.errors import OpenVTPError


def _img(path, colour, size=(20, 12)):
    Image.new("RGB", size, colour).save(path)


@pytest.fixture()
def caption_root(tmp_path):
    (tmp_path / "imgs").mkdir()
    _img(tmp_path / "imgs" / "a.png", (255, 0, 0))
    _img(tmp_path / "imgs" / "b.jpg", (0, 0, 255))
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not an image at all")
    noise = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = encode_image(noise)
    (tmp_path / "imgs" / "trunc.png").write_bytes(data[: len(data) // 2])  # header fine, fails at decode
    return tmp_path


def test_csv(caption_root):
    ann = caption_root / "ann.csv"
    ann.write_text(
        "file,caption,label\n"
        "imgs/a.png,a red thing,3\n"
        'imgs/b.jpg,"a blue thing, flat",\n'
        "imgs/missing.png,gone,\n"
        "imgs/broken.png,broken,\n"
        "imgs/a.png,,\n"
    )
    ds = CaptionFolder(ann)
    assert len(ds) == 2
    assert ds.skipped == {"missing_file": 1, "bad_image": 1, "empty_caption": 1}
    a, b = ds[0], ds[1]
    assert a["caption"] == "a red thing" and a["label"] == 3 and a["key"] == "imgs/a.png"
    assert "label" not in b and b["caption"] == "a blue thing, flat"
    assert a["image"].shape == (3, 12, 20) and a["image"].dtype == torch.uint8
    assert a["image"][0].float().mean() > 250 and b["image"][2].float().mean() > 240
    assert CaptionFolder(ann, size=8)[0]["image"].shape == (3, 8, 8)


def test_jsonl_and_decode_failure_falls_through(caption_root):
    ann = caption_root / "ann.jsonl"
    rows = [{"file": "imgs/trunc.png", "caption": "green"}, {"file": "imgs/b.jpg", "caption": "blue"}]
    ann.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ds = CaptionFolder(ann, root=caption_root)
    assert len(ds) == 2  # the truncated file passes the header check
    item = ds[0]
    assert item["caption"] == "blue" and ds.load_failures == 1


def test_annotation_errors(caption_root):
    with pytest.raises(OpenVTPError, match="not found"):
        CaptionFolder(caption_root / "nope.csv")
    bad = caption_root / "bad.csv"
    bad.write_text("path,text\nimgs/a.png,x\n")
    with pytest.raises(OpenVTPError, match="caption"):
        CaptionFolder(bad)
    bad = caption_root / "bad.jsonl"
    bad.write_text('{"file": "imgs/a.png", "caption": "x"}\n{oops\n')
    with pytest.raises(OpenVTPError, match="bad.jsonl:2"):
        CaptionFolder(bad)


def test_class_folder(tmp_path):
    for cls, colour in (("golden_retriever", (200, 160, 60)), ("tabby_cat", (90, 90, 90))):
        (tmp_path / cls / "sub").mkdir(parents=True)
        _img(tmp_path / cls / "1.png", colour)
        _img(tmp_path / cls / "sub" / "2.JPG", colour)
        (tmp_path / cls / "notes.txt").write_text("ignored")
    (tmp_path / "tabby_cat" / "bad.jpg").write_bytes(b"\x00" * 10)
    ds = ClassFolder(tmp_path, size=(6, 10))
    assert ds.classes == ["golden retriever", "tabby cat"]
    assert ds.class_dirs == ["golden_retriever", "tabby_cat"]
    assert len(ds) == 4 and ds.skipped == {"bad_image": 1}
    items = [ds[i] for i in range(len(ds))]
    assert [i["label"] for i in items] == [0, 0, 1, 1]
    assert [i["caption"] for i in items] == ["golden retriever"] * 2 + ["tabby cat"] * 2
    assert all(i["image"].shape == (3, 6, 10) for i in items)


def test_class_folder_bad_root(tmp_path):
    with pytest.raises(OpenVTPError, match="not a directory"):
        ClassFolder(tmp_path / "nope")
    with pytest.raises(OpenVTPError, match="no class sub-folders"):
        ClassFolder(tmp_path)


def test_decode_modes():
    img = torch.zeros(3, 30, 60, dtype=torch.uint8)
    img[:, :, 20:40] = 255  # white centre band
    data = encode_image(img)
    crop = decode_image(data, 16, "crop")
    squash = decode_image(data, 16, "squash")
    assert crop.shape == squash.shape == (3, 16, 16)
    assert crop.float().mean() > squash.float().mean()  # crop keeps mostly the centre band
    assert torch.equal(decode_image(data), img)


@pytest.mark.parametrize("size", [16, (12, 20), (40, 30)])
def test_the_torch_resampler_is_pils_within_a_few_levels(size, tmp_path):
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 9, generator=g), size=(45, 70), mode="bicubic")
    data = encode_image((smooth[0].clamp(0, 1) * 255).round().to(torch.uint8), "jpg")
    for mode in ("crop", "squash"):
        pil, fast = decode_image(data, size, mode), decode_image(data, size, mode, resampler="torch")
        assert fast.shape == pil.shape and fast.dtype == torch.uint8 and fast.is_contiguous()
        diff = (fast.float() - pil.float()).abs()
        assert diff.mean() < 2.0 and diff.max() <= 24, (mode, diff.mean(), diff.max())
    # an image of one colour stays that colour; folders pass the choice through
    _img(tmp_path / "one.png", (200, 40, 90), (33, 21))
    (tmp_path / "c").mkdir()
    _img(tmp_path / "c" / "x.png", (200, 40, 90), (33, 21))
    assert torch.equal(decode_image(tmp_path / "one.png", size, resampler="torch"),
                       torch.tensor([200, 40, 90], dtype=torch.uint8).view(3, 1, 1).expand(3, *pil.shape[1:]))
    assert ClassFolder(tmp_path, size=size, resampler="torch")[0]["image"].shape == pil.shape
