"""PSNR / SSIM / LPIPS accumulation, the flat-patch baseline, and LPIPS weight handling offline."""

import math
import urllib.error

import pytest
import torch

import openvtp.eval.weights as weights_mod
from openvtp.errors import OpenVTPError
from openvtp.eval.recon_metrics import ReconMetrics, build_lpips, patch_mean_baseline, psnr


def test_psnr_hand_value():
    x = torch.zeros(2, 3, 4, 4)
    y = x.clone()
    y[0] += 0.1  # mse 0.01 -> 20 dB
    y[1, :, :2] += 0.5  # half the pixels off by 0.5: mse 0.125 -> 10 log10(8) dB
    torch.testing.assert_close(psnr(x, y), torch.tensor([20.0, 10 * math.log10(8)]))
    assert psnr(x, x)[0] == pytest.approx(100.0)  # identical: capped


def test_patch_mean_baseline():
    img = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4) / 96
    flat = patch_mean_baseline(img, 2)
    assert flat.shape == img.shape
    torch.testing.assert_close(flat[0, 0, :2, :2], img[0, 0, :2, :2].mean().expand(2, 2))
    torch.testing.assert_close(flat.mean((2, 3)), img.mean((2, 3)))
    assert psnr(img, flat).min() > psnr(img, torch.zeros_like(img)).max()
    with pytest.raises(OpenVTPError, match="divide"):
        patch_mean_baseline(img, 3)


def test_recon_metrics_accumulate_over_batches():
    gen = torch.Generator().manual_seed(0)
    orig = torch.rand(6, 3, 32, 32, generator=gen)
    recon = (orig + 0.05 * torch.randn(6, 3, 32, 32, generator=gen)).clamp(0, 1)
    metrics = ReconMetrics(lpips_backbone="random", device="cpu")
    metrics.update(orig[:4], recon[:4])
    metrics.update(orig[4:], recon[4:])
    out = metrics.compute()
    assert out["num_images"] == 6
    assert out["psnr"] == pytest.approx(psnr(orig, recon).mean().item(), rel=1e-6)
    assert 0 < out["ssim"] < 1 and out["lpips"] > 0

    metrics.reset()
    metrics.update(orig, orig)
    same = metrics.compute()
    assert same["ssim"] == pytest.approx(1.0, abs=1e-4) and same["lpips"] == pytest.approx(0.0, abs=1e-6)

    no_lpips = ReconMetrics(lpips_backbone=None, device="cpu")
    no_lpips.update(orig, recon)
    assert "lpips" not in no_lpips.compute()
    with pytest.raises(OpenVTPError, match="differ"):
        no_lpips.update(orig, recon[:, :, :16])
    with pytest.raises(OpenVTPError, match="no reconstruction"):
        ReconMetrics(lpips_backbone=None, device="cpu").compute()


def test_random_lpips_is_seeded_and_leaves_global_rng():
    state = torch.get_rng_state()
    a, b = build_lpips("random", seed=3), build_lpips("random", seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_pretrained_lpips_offline_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_network(url, dst):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(weights_mod, "_download", no_network)
    with pytest.raises(OpenVTPError) as err:
        build_lpips("pretrained", net="alex")
    assert str(tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth") in str(err.value)


def test_pretrained_lpips_loads_trunk_from_cache(tmp_path, monkeypatch):
    """A cached torchvision trunk file lands in lpips' slices under the original layer indices."""
    import torchvision

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    trunk = torchvision.models.alexnet().state_dict()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(trunk, tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth")
    model = build_lpips("pretrained", net="alex")
    torch.testing.assert_close(model.net.slice2.get_submodule("3").weight, trunk["features.3.weight"])
    torch.testing.assert_close(model.net.slice5.get_submodule("10").bias, trunk["features.10.bias"])
