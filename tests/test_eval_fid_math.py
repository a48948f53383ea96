"""Frechet distance maths, statistics files and image-set plumbing (a tiny fake extractor stands in for Inception)."""

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from openvtp.errors import OpenVTPError
from openvtp.eval.fid import (
    ImageSet,
    feature_statistics,
    fid_folder_vs_folder,
    fid_folder_vs_stats,
    fid_from_images,
    frechet_distance,
    load_stats,
    save_stats,
    to_uint8,
)


class ChannelStats:
    """Fake extractor: per-channel mean and std of each image (6-d), so FIDs are cheap and hand-checkable."""

    def extract(self, batches, total=None):
        feats = []
        for images in batches:
            x = to_uint8(images).double() / 255
            feats.append(torch.cat([x.mean((2, 3)), x.std((2, 3))], 1))
        return torch.cat(feats)


def _nuclear_fid(fa, fb):
    """FID from features via Tr sqrt(S_a S_b) = ||A B^T||_* / sqrt((n_a - 1)(n_b - 1)), A, B centred."""
    a, b = fa - fa.mean(0), fb - fb.mean(0)
    na, nb = len(fa) - 1, len(fb) - 1
    tr = np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt(na * nb)
    return ((fa.mean(0) - fb.mean(0)) ** 2).sum() + (a**2).sum() / na + (b**2).sum() / nb - 2 * tr


def test_frechet_hand_values():
    # 1-d: (0 - 1)^2 + 1 + 4 - 2 sqrt(1 * 4) = 2
    assert frechet_distance(np.zeros(1), np.eye(1), np.ones(1), 4 * np.eye(1)) == pytest.approx(2.0, abs=1e-12)
    # diagonal: sum_i (sqrt(a_i) - sqrt(b_i))^2 = (1 - 3)^2 + (2 - 2)^2 = 4
    assert frechet_distance(np.zeros(2), np.diag([1.0, 4.0]), np.zeros(2), np.diag([9.0, 4.0])) == pytest.approx(4.0)


def test_rank_deficient_covariances_stay_finite_and_real():
    rng = np.random.default_rng(0)
    fa, fb = rng.normal(size=(5, 32)), rng.normal(size=(7, 32)) + 0.3  # fewer samples than dimensions
    fid = frechet_distance(*feature_statistics(fa), *feature_statistics(fb))
    assert isinstance(fid, float) and np.isfinite(fid)
    assert fid == pytest.approx(_nuclear_fid(fa, fb), rel=1e-6)
    mu, sigma = feature_statistics(fa)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * np.trace(sigma)


def test_non_finite_sqrtm_retries_with_offset(monkeypatch):
    calls = []
    real_sqrtm = scipy.linalg.sqrtm

    def flaky(m):
        calls.append(m.copy())
        return np.full_like(m, np.nan) if len(calls) == 1 else real_sqrtm(m)

    monkeypatch.setattr(scipy.linalg, "sqrtm", flaky)
    s = np.diag([1.0, 0.0])
    fid = frechet_distance(np.zeros(2), s, np.zeros(2), s, eps=1e-6)
    assert len(calls) == 2 and np.allclose(calls[1], (s + 1e-6 * np.eye(2)) @ (s + 1e-6 * np.eye(2)))
    assert np.isfinite(fid) and abs(fid) < 1e-5


def test_large_imaginary_part_raises(monkeypatch):
    monkeypatch.setattr(scipy.linalg, "sqrtm", lambda m: np.eye(len(m)) * (1 + 0.5j))
    with pytest.raises(OpenVTPError, match="imaginary"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2))


def test_mismatched_statistics_raise():
    with pytest.raises(OpenVTPError, match="do not match"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(OpenVTPError, match="at least 2"):
        feature_statistics(np.zeros((1, 4)))


def test_stats_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    mu, sigma = feature_statistics(rng.normal(size=(10, 4)))
    save_stats(tmp_path / "ref.npz", mu, sigma)
    mu2, sigma2 = load_stats(tmp_path / "ref.npz")
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)
    np.savez(tmp_path / "junk.npz", x=np.zeros(3))
    with pytest.raises(OpenVTPError, match="neither"):
        load_stats(tmp_path / "junk.npz")
    with pytest.raises(OpenVTPError, match="not found"):
        load_stats(tmp_path / "absent.npz")


def _images(seed, n, size=16, offset=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 200, (n, 3, size, size), generator=gen) + offset).to(torch.uint8)


def _write_folder(folder, images, ext=".png"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}{ext}")


def test_folder_vs_folder_and_stats(tmp_path):
    a, b = _images(0, 6), _images(1, 5, offset=40)
    _write_folder(tmp_path / "a", a)
    _write_folder(tmp_path / "b" / "sub", b)  # nested folders are searched
    (tmp_path / "a" / "broken.png").write_bytes(b"not an image")
    (tmp_path / "a" / "notes.txt").write_text("ignored")
    ex = ChannelStats()
    expected = fid_from_images(a, b, ex)

    res = fid_folder_vs_folder(tmp_path / "a", tmp_path / "b", ex, batch_size=4)
    assert res["fid"] == pytest.approx(expected, rel=1e-9)
    assert (res["num_a"], res["num_b"], res["skipped_a"], res["skipped_b"]) == (6, 5, 1, 0)

    save_stats(tmp_path / "b.npz", *feature_statistics(ex.extract([b])))
    res = fid_folder_vs_stats(tmp_path / "a", tmp_path / "b.npz", ex)
    assert res["fid"] == pytest.approx(expected, rel=1e-9) and res["skipped"] == 1 and res["num"] == 6

    # ADM reference-batch layout: images only (uint8 NHWC under arr_0), as an image set and as "stats"
    np.savez(tmp_path / "adm.npz", arr_0=b.permute(0, 2, 3, 1).numpy())
    assert fid_folder_vs_folder(tmp_path / "a", tmp_path / "adm.npz", ex)["fid"] == pytest.approx(expected, rel=1e-9)
    assert fid_folder_vs_stats(tmp_path / "a", tmp_path / "adm.npz", ex)["fid"] == pytest.approx(expected, rel=1e-9)
    with pytest.raises(OpenVTPError, match="extractor"):
        load_stats(tmp_path / "adm.npz")


def test_image_set_formats_sizes_and_errors(tmp_path):
    folder = tmp_path / "mixed"
    _write_folder(folder, _images(0, 2, size=16), ".png")
    _write_folder(folder / "jpg", _images(1, 2, size=24), ".jpg")
    _write_folder(folder / "webp", _images(2, 1, size=16), ".webp")
    Image.new("L", (16, 16), 7).save(folder / "gray.png")  # converted to RGB
    images = ImageSet(folder, batch_size=8)
    batches = list(images)
    assert len(images) == 6 and images.skipped == 0
    assert sum(len(b) for b in batches) == 6
    assert all(b.dtype == torch.uint8 and b.shape[1] == 3 for b in batches)
    assert {tuple(b.shape[-2:]) for b in batches} == {(16, 16), (24, 24)}

    (tmp_path / "empty").mkdir()
    with pytest.raises(OpenVTPError, match="no images"):
        fid_folder_vs_folder(tmp_path / "empty", folder, ChannelStats())
    with pytest.raises(OpenVTPError, match="not found"):
        ImageSet(tmp_path / "nowhere")
