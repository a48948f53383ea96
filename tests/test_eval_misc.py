"""Protocol preprocessing, the resumable feature cache and the PNG outputs."""

import numpy as np
import pytest
import torch
from PIL import Image

from openvtp.errors import OpenVTPError
from openvtp.eval.features import FeatureCache
from openvtp.eval.plots import image_grid, plot_results
from openvtp.eval.preprocess import adm_center_crop, resize_center_crop, squash_resize

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def thirds(width, height, vertical=True):
    """Three flat colour bands (red, green, blue), left to right or top to bottom."""
    arr = np.zeros((height, width, 3), np.uint8)
    n = width if vertical else height
    for i, colour in enumerate((RED, GREEN, BLUE)):
        sl = slice(i * n // 3, (i + 1) * n // 3 if i < 2 else n)
        if vertical:
            arr[:, sl] = colour
        else:
            arr[sl] = colour
    return Image.fromarray(arr)


def colour_at(img, y, x):
    return tuple(int(v) for v in img[:, y, x])


def test_adm_center_crop_wide_image():
    # 1000x600 -> BOX halve to 500x300 (300 < 512 stops) -> bicubic to 427x256 -> centre columns 85..340
    out = adm_center_crop(thirds(1000, 600), 256)
    assert out.shape == (3, 256, 256) and out.dtype == torch.uint8
    # in the 427-wide image the bands switch near 142 and 285, i.e. output columns ~57 and ~200
    assert colour_at(out, 128, 20) == RED and colour_at(out, 128, 128) == GREEN and colour_at(out, 128, 240) == BLUE
    assert colour_at(out, 128, 50) == RED and colour_at(out, 128, 64) == GREEN
    assert colour_at(out, 128, 193) == GREEN and colour_at(out, 128, 207) == BLUE


def test_adm_center_crop_tall_image_and_box_halving():
    out = adm_center_crop(thirds(300, 600, vertical=False), 256)  # -> 256x512, rows 128..383 kept
    assert out.shape == (3, 256, 256)
    assert colour_at(out, 10, 128) == RED and colour_at(out, 128, 128) == GREEN and colour_at(out, 250, 128) == BLUE

    # 512x512 at size 256: exactly one BOX halving (a 2x2 mean) and no further resampling
    arr = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    out = adm_center_crop(Image.fromarray(arr), 256)
    expected = arr.reshape(256, 2, 256, 2, 3).astype(np.float64).mean((1, 3))
    assert np.abs(out.permute(1, 2, 0).numpy() - expected).max() <= 1


def test_squash_and_resize_center_crop():
    img = Image.new("RGB", (100, 50), GREEN)
    out = squash_resize(img, 32)
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8 and colour_at(out, 5, 5) == GREEN
    out = resize_center_crop(thirds(400, 300), 224)  # short side -> 256 (341x256), centre 224 kept
    assert out.shape == (3, 224, 224)
    assert colour_at(out, 100, 2) == RED and colour_at(out, 100, 112) == GREEN and colour_at(out, 100, 221) == BLUE
    gray = Image.new("L", (64, 64), 9)
    assert resize_center_crop(gray, 64, crop_pct=1.0).shape == (3, 64, 64)


def test_feature_cache_resumes_and_loads(tmp_path):
    computed = []

    def compute(i):
        computed.append(i)
        n = 3 if i < 3 else 1
        feats = {"cls": torch.full((n, 4), float(i)), "patch_mean": torch.full((n, 2), -float(i))}
        return feats, torch.full((n,), i)

    meta = {"checkpoint": "runs/a", "split": "train"}
    cache = FeatureCache(tmp_path / "feats", meta)
    cache.fill(2, compute, progress=False)
    assert computed == [0, 1]
    with pytest.raises(OpenVTPError, match="incomplete"):
        cache.load(num_chunks=4)

    resumed = FeatureCache(tmp_path / "feats", meta)  # e.g. after the process was killed
    resumed.fill(4, compute, progress=False)
    assert computed == [0, 1, 2, 3]
    feats, labels = resumed.load()
    assert feats["cls"].shape == (10, 4) and feats["patch_mean"].shape == (10, 2)
    torch.testing.assert_close(labels, torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3]))
    torch.testing.assert_close(feats["cls"][:, 0], labels.float())
    assert not list((tmp_path / "feats").glob("*.tmp"))

    with pytest.raises(OpenVTPError, match="was made for"):
        FeatureCache(tmp_path / "feats", {"checkpoint": "runs/b", "split": "train"})
    assert FeatureCache(tmp_path / "feats").meta == meta  # no meta given: reuse the stored one
    with pytest.raises(OpenVTPError, match="reserved"):
        resumed.write_chunk(9, {"labels": torch.zeros(1)}, torch.zeros(1))
    with pytest.raises(OpenVTPError, match="incomplete"):
        FeatureCache(tmp_path / "empty").load()


def test_image_grid_layout(tmp_path):
    orig = torch.zeros(3, 3, 8, 8)
    recon = torch.ones(3, 3, 8, 8) * 0.5
    path = image_grid(orig, recon, tmp_path / "grid" / "recon.png", nrow=2)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (2 * 10 + 2, 4 * 10 + 2, 3)  # 2 rows x (2 pairs = 4 tiles), 2 px padding
    assert grid[5, 5, 0] == 0 and grid[5, 15, 0] == 128  # original, then its reconstruction
    assert grid[15, 5, 0] == 0 and grid[15, 25, 0] == 255  # second row: third pair, then empty padding
    with pytest.raises(OpenVTPError):
        image_grid(orig, recon[:2], tmp_path / "x.png")


def test_plot_results(tmp_path):
    results = {
        "vtp-s": {"protocol": "dinov2-linear", "top1": 70.1, "psnr": 24.0, "rfid": 1.2},
        "ae": {"top1": 10.5, "psnr": 27.5},
    }
    path = plot_results(results, tmp_path / "plots" / "compare.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100
    with pytest.raises(OpenVTPError, match="numeric"):
        plot_results({"a": {"protocol": "x"}}, tmp_path / "none.png")
