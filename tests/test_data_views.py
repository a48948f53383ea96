"""Augmented views: determinism from (seed, step, index), shapes, normalisation."""
import pytest
import torch

from openvtp.demo.scenes import CaptionedScenes
from openvtp.data.views import (IMAGENET_MEAN, IMAGENET_STD, MultiCrop, center_view, contrastive_view, denormalize,
                                 normalize, reconstruction_view, sample_generator, to_uint8)


@pytest.fixture(scope="module")
def img():
    return CaptionedScenes(size=(64, 80), seed=0)[3]["image"]


def test_sample_generator():
    a = torch.rand(4, generator=sample_generator(1, 2, 3))
    assert torch.equal(a, torch.rand(4, generator=sample_generator(1, 2, 3)))
    for other in ((1, 2, 4), (1, 3, 3), (2, 2, 3)):
        assert not torch.equal(a, torch.rand(4, generator=sample_generator(*other)))
    assert not torch.equal(a, torch.rand(4, generator=sample_generator(1, 2, 3, stream=1)))
    sample_generator(0, 0, -1)  # negative indices are fine


def test_normalize_round_trip():
    x = torch.rand(2, 3, 5, 5)
    assert torch.allclose(denormalize(normalize(x)), x, atol=1e-6)
    flat = normalize(torch.tensor(IMAGENET_MEAN).view(3, 1, 1).expand(3, 2, 2))
    assert flat.abs().max() < 1e-6
    assert torch.allclose(normalize(torch.ones(3, 1, 1)).flatten(),
                          (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD))
    u8 = torch.randint(0, 256, (3, 4, 4), dtype=torch.uint8)
    assert torch.equal(to_uint8(normalize(u8.float() / 255)), u8)


@pytest.mark.parametrize("view", [contrastive_view, reconstruction_view])
def test_views_deterministic(img, view):
    a = view(img, 32, sample_generator(0, 5, 7))
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, view(img, 32, sample_generator(0, 5, 7)))
    others = [view(img, 32, sample_generator(0, 5, i)) for i in range(8, 14)]
    assert any(not torch.equal(a, o) for o in others)
    assert view(img, (24, 40), sample_generator(0, 0, 0)).shape == (3, 24, 40)
    assert torch.equal(view(img, 32, None), center_view(img, 32))
    x01 = denormalize(a)
    assert x01.min() > -1e-4 and x01.max() < 1 + 1e-4
    # float input in [0, 1] gives the same view as uint8 up to rounding
    b = view(img.float() / 255, 32, sample_generator(0, 5, 7))
    assert (denormalize(a) - denormalize(b)).abs().max() < 0.02


def test_center_view_keeps_the_middle():
    img = torch.zeros(3, 40, 80, dtype=torch.uint8)
    img[:, :, 20:60] = 255
    x = denormalize(center_view(img, 16))
    assert x.min() > 0.95  # the centre 40x40 is all white


def test_multicrop(img):
    mc = MultiCrop(global_size=32, local_size=16, n_global=2, n_local=4)
    g, l = mc(img, sample_generator(0, 1, 2))
    assert len(g) == 2 and len(l) == 4
    assert all(x.shape == (3, 32, 32) for x in g) and all(x.shape == (3, 16, 16) for x in l)
    g2, l2 = mc(img, sample_generator(0, 1, 2))
    assert all(torch.equal(a, b) for a, b in zip(g + l, g2 + l2))
    g3, _ = mc(img, sample_generator(0, 1, 3))
    assert not torch.equal(g[0], g3[0])
    # with photometric augmentation off, crops of a scene stay in range and are not blurred
    plain = MultiCrop(32, 16, n_local=2, jitter_p=0, gray_p=0, blur_p=(0, 0, 0), solarize_p=0, flip_p=0)
    gp, lp = plain(img, sample_generator(0, 0, 0))
    for x in gp + lp:
        x01 = denormalize(x)
        assert x01.min() > -1e-4 and x01.max() < 1 + 1e-4
    # grayscale always on: channels equal
    gray = MultiCrop(32, 16, n_local=1, gray_p=1.0, solarize_p=0)
    gg, _ = gray(img, sample_generator(0, 0, 1))
    d = denormalize(gg[0])
    assert torch.allclose(d[0], d[1], atol=1e-5) and torch.allclose(d[1], d[2], atol=1e-5)
