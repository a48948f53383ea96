"""The FID Inception path end to end (random weights, offline) and its weight handling."""

import urllib.error

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import openvtp.eval.weights as weights_mod
from openvtp.errors import OpenVTPError
from openvtp.eval.fid import INCEPTION_URL, InceptionFeatures, fid_from_images


@pytest.fixture(scope="module")
def inception():
    return InceptionFeatures("random", device="cpu", batch_size=16, progress=False)


class Recording:
    """Passes batches to the real extractor and keeps the features it returned."""

    def __init__(self, extractor):
        self.extractor, self.features = extractor, []

    def extract(self, batches, total=None):
        feats = self.extractor.extract(batches, total)
        self.features.append(feats)
        return feats


@pytest.mark.slow  # one scipy sqrtm of a 2048 x 2048 matrix: ~10 s on 2 idle cores
def test_fid_path_matches_direct_computation(inception):
    gen = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (12, 3, 64, 64), dtype=torch.uint8, generator=gen)
    smooth = torch.rand(12, 3, 8, 8, generator=gen).repeat_interleave(8, -1).repeat_interleave(8, -2)
    smooth = (smooth * 255).round() / 255  # float [0, 1] input, exactly representable in 8 bits
    rec = Recording(inception)
    fid = fid_from_images(noise, smooth, rec)

    fa, fb = (f.numpy() for f in rec.features)
    assert fa.shape == fb.shape == (12, 2048) and fa.dtype == np.float64
    assert np.isfinite(fa).all() and fa.std(0).max() > 0
    # independent of scipy's sqrtm: with centred features A, B, Tr sqrt(S_a S_b) = ||A B^T||_* / (n - 1)
    a, b = fa - fa.mean(0), fb - fb.mean(0)
    tr_sqrt = np.linalg.svd(a @ b.T, compute_uv=False).sum() / 11
    direct = ((fa.mean(0) - fb.mean(0)) ** 2).sum() + (a**2).sum() / 11 + (b**2).sum() / 11 - 2 * tr_sqrt
    assert fid > 0
    assert abs(fid - direct) / direct < 1e-6


def test_float_and_uint8_inputs_agree(inception):
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(inception(images), inception(images.float() / 255), rtol=0, atol=0)


def test_local_weights_file_loads(inception, tmp_path):
    path = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in inception.model.state_dict().items()}, str(path))
    loaded = InceptionFeatures(path, device="cpu", progress=False)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(loaded(images), inception(images))

    wrong = tmp_path / "wrong.safetensors"
    save_file({"fc.weight": torch.zeros(2, 2)}, str(wrong))
    with pytest.raises(OpenVTPError, match="not the FID Inception"):
        InceptionFeatures(wrong, device="cpu")
    with pytest.raises(OpenVTPError, match="not found"):
        InceptionFeatures(tmp_path / "absent.pth", device="cpu")


def test_missing_weights_offline_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_network(url, dst):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(weights_mod, "_download", no_network)
    expected = tmp_path / "hub" / "checkpoints" / INCEPTION_URL.rsplit("/", 1)[-1]
    with pytest.raises(OpenVTPError) as err:
        InceptionFeatures("auto", device="cpu")
    assert str(expected) in str(err.value) and INCEPTION_URL in str(err.value)
