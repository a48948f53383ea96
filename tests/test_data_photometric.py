"""Batched multi-crop photometrics (`data.photometric=batch|device`) against the per-sample path."""
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from openvtp.config.load import load_config
from openvtp.config.schema import PretrainConfig, validate
from openvtp.data import photometric as P
from openvtp.data.views import MultiCrop, sample_generator
from openvtp.demo.scenes import CaptionedScenes
from openvtp.errors import OpenVTPError
from openvtp.train.data import build_loader, finish_views
from openvtp.train.loop import split_batch

ATOL = 2e-5  # normalised units (about 5e-6 of the [0, 1] range): float rounding, no pixel moves


def _images():
    scenes = CaptionedScenes(size=(48, 56), seed=1)
    noise = torch.randint(0, 256, (3, 40, 52), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    flat = torch.full((3, 36, 36), 0.5)  # grey: every pixel has max == min, the hue's edge case
    return [scenes[i]["image"] for i in range(3)] + [noise, noise.float() / 255, flat]


def _batched(mc: MultiCrop, img: torch.Tensor, gen: torch.Generator):
    globals_, locals_ = mc.plan(img.shape[-2:], gen)
    out = []
    for plans, size in ((globals_, mc.global_size), (locals_, mc.local_size)):
        crops = torch.stack([mc.render(img, p, size) for p in plans])
        out.append(list(P.photometric_batch(crops, P.plan_rows(plans))))
    return out


@pytest.mark.parametrize("settings", [
    {},  # DINOv2's rates
    dict(jitter_p=1.0, jitter=(0.8, 0.8, 0.8, 0.5), gray_p=0.3, blur_p=(1.0, 1.0, 1.0), solarize_p=0.5),
    dict(blur_sigma=(0.1, 0.12), blur_p=(1.0, 1.0, 1.0)),  # tiny sigmas: taps far below float32's range
])
def test_batched_crops_equal_the_per_sample_ones(settings):
    mc = MultiCrop(32, 16, n_global=2, n_local=3, blur_reference=(32, 16), **settings)
    touched = 0
    for i, img in enumerate(_images()):
        for step in range(4):
            ref_g, ref_l = mc(img, sample_generator(0, step, i, 1))
            got_g, got_l = _batched(mc, img, sample_generator(0, step, i, 1))
            for ref, got in zip(ref_g + ref_l, got_g + got_l):
                assert got.shape == ref.shape
                torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
                touched += 1
    assert touched == 6 * 4 * 5


@pytest.mark.parametrize("shift", [-0.5, -0.3, -0.05, 0.0, 0.1, 0.25, 0.49])
def test_hue_rotation_is_torchvisions(shift):
    x = torch.rand(2, 3, 17, 19)
    x[:, :, :3] = x[:, :1, :3]  # grey rows: hue undefined
    x[:, 1, 5] = x[:, 0, 5]  # ties between channel maxima
    got = P._hue(x, torch.full((2, 1, 1, 1), shift))
    torch.testing.assert_close(got, TF.adjust_hue(x, shift), atol=2e-6, rtol=0)


@pytest.mark.parametrize("sigma,k", [(0.1, 9), (0.5, 3), (1.3, 9), (2.0, 5)])
def test_separable_blur_is_torchvisions(sigma, k):
    x = torch.rand(3, 3, 12, 14)
    got = P._blur(x, torch.tensor([sigma, 1.0, sigma]), k)
    for i, s in enumerate((sigma, 1.0, sigma)):
        torch.testing.assert_close(got[i], TF.gaussian_blur(x[i], [k, k], [s, s]), atol=2e-6, rtol=0)


def test_jitter_ops_are_torchvisions():
    x = torch.rand(2, 3, 9, 11)
    f = torch.tensor([0.6, 1.4]).view(2, 1, 1, 1)
    for k, op in enumerate((TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)):
        got = P._jitter_op(k, x, f)
        for i, factor in enumerate((0.6, 1.4)):
            torch.testing.assert_close(got[i], op(x[i], factor), atol=1e-6, rtol=0)


def _config(mode: str, *extra: str) -> PretrainConfig:
    cfg = load_config(PretrainConfig, "demo", ["train.steps=3", f"data.photometric={mode}", *extra])
    validate(cfg, 1)
    return cfg


def test_every_place_gives_the_per_sample_batches():
    cpu = torch.device("cpu")
    extra = ("ssl.jitter_p=1", "ssl.blur_p=[1,1,1]", "ssl.solarize_p=0.5", "ssl.gray_p=0.3")
    ref = [finish_views(b, cpu) for b in build_loader(_config("sample", *extra), 0, 1, 0)]
    for mode in ("batch", "device"):
        got = list(build_loader(_config(mode, *extra), 0, 1, 0))
        if mode == "device":  # the loader hands over uint8 geometry and the crops' plans
            assert got[0]["ssl_globals_raw"].dtype == torch.uint8 and "ssl_globals_plan" in got[0]
            assert "ssl_globals" not in got[0]
            got = [finish_views(b, cpu) for b in got]
        assert len(got) == len(ref) == 3
        for a, b in zip(ref, got):
            assert a.keys() == b.keys()
            for key in a:
                if a[key].is_floating_point():
                    torch.testing.assert_close(b[key], a[key], atol=ATOL, rtol=0)
                else:
                    assert torch.equal(a[key], b[key]), key


def test_device_batches_do_not_depend_on_workers_ranks_or_accumulation():
    one = next(iter(build_loader(_config("device"), 0, 1, 0)))
    workers = next(iter(build_loader(_config("device", "data.workers=2"), 0, 1, 0)))
    assert all(torch.equal(one[k], workers[k]) for k in one)
    ranks = [next(iter(build_loader(_config("device"), r, 2, 0))) for r in (0, 1)]
    for key in ("clip_images_raw", "rec_images_raw"):
        assert torch.equal(torch.cat([r[key] for r in ranks]), one[key])
    for key in ("ssl_globals_raw", "ssl_globals_plan", "ssl_locals_raw"):
        assert torch.equal(torch.cat([r[key] for r in ranks], dim=1), one[key])
    cpu = torch.device("cpu")
    whole = finish_views(split_batch(one, 1)[0], cpu)
    halves = [finish_views(mb, cpu) for mb in split_batch(one, 2)]
    for key in ("ssl_globals", "ssl_locals", "clip_images"):
        dim = 1 if key.startswith("ssl") else 0
        torch.testing.assert_close(torch.cat([h[key] for h in halves], dim=dim), whole[key], atol=ATOL, rtol=0)
    g = whole["ssl_globals"].shape[0]
    assert torch.equal(torch.cat([h["ssl_masks"].view(g, -1, h["ssl_masks"].shape[-1]) for h in halves], dim=1),
                       whole["ssl_masks"].view(g, -1, whole["ssl_masks"].shape[-1]))


@pytest.mark.parametrize("override,message", [("data.photometric=gpu", r"data.photometric.*sample, batch, device"),
                                              ("data.resampler=cv2", r"data.resampler.*pil, torch")])
def test_an_unknown_choice_is_one_line(override, message):
    with pytest.raises(OpenVTPError, match=message):
        validate(load_config(PretrainConfig, "demo", [override]), 1)
