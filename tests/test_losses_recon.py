"""ReconstructionLoss with a random LPIPS trunk (no weights are fetched) and its weight loading."""

import os

import pytest
import torch
from safetensors.torch import save_file

from openvtp.errors import OpenVTPError
from openvtp.losses import recon
from openvtp.losses.recon import ReconstructionLoss


@pytest.fixture(scope="module")
def loss():
    torch.manual_seed(0)
    return ReconstructionLoss(l1_weight=1.0, lpips_weight=0.5, lpips_backbone="random")


def test_recon_finite_with_gradient_to_prediction(loss):
    torch.manual_seed(0)
    target = torch.randn(2, 3, 32, 32)
    pred = torch.randn(2, 3, 32, 32, requires_grad=True)
    out = loss(pred, target)
    assert set(out) == {"l1", "lpips", "loss"}
    assert all(torch.isfinite(v) for v in out.values())
    assert out["lpips"] > 0
    assert out["loss"].item() == pytest.approx(out["l1"].item() + 0.5 * out["lpips"].item(), rel=1e-6)
    out["loss"].backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_recon_identical_inputs(loss):
    x = torch.randn(1, 3, 32, 32)
    out = loss(x, x.clone())
    assert out["l1"].item() == 0.0
    assert out["lpips"].item() == pytest.approx(0.0, abs=1e-6)


def test_recon_l1_in_normalised_space(loss):
    a = torch.zeros(1, 3, 16, 16)  # VGG's 4 poolings need at least 16 px
    assert loss(a + 0.5, a)["l1"].item() == pytest.approx(0.5)
    # LPIPS sees [-1, 1]: mean/std of ImageNet map 0 (normalised) to 2 * mean - 1
    assert torch.allclose(loss.to_lpips_range(a)[0, :, 0, 0], 2 * torch.tensor(recon.IMAGENET_MEAN) - 1)


def test_lpips_is_frozen_and_not_in_params_or_state_dict(loss):
    assert loss.lpips is not None and not loss.lpips.training
    assert all(not p.requires_grad for p in loss.lpips.parameters())
    assert list(loss.parameters()) == []
    assert list(loss.state_dict()) == []
    task = torch.nn.Sequential(torch.nn.Linear(2, 2), loss)
    task.train()
    assert not loss.lpips.training  # train() on the parent does not reach it
    assert len(list(task.parameters())) == 2
    loss.to(torch.float64)  # moves/casts follow the module
    assert next(loss.lpips.parameters()).dtype == torch.float64
    loss.to(torch.float32)


def test_lpips_weight_zero_builds_nothing(monkeypatch):
    monkeypatch.setattr(recon, "build_lpips", lambda *a, **k: pytest.fail("LPIPS built"))
    loss = ReconstructionLoss(lpips_weight=0.0)
    out = loss(torch.ones(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))
    assert loss.lpips is None and out["lpips"].item() == 0.0 and out["loss"].item() == pytest.approx(1.0)


def _torchvision_style_trunk(loss, offset: float) -> dict[str, torch.Tensor]:
    """A VGG16 `features.<i>.*` state dict built from the random trunk, shifted so a load is visible."""
    state = {}
    for name, t in loss.lpips.net.state_dict().items():
        _, layer, param = name.split(".", 2)
        state[f"features.{layer}.{param}"] = t + offset
    state["classifier.0.weight"] = torch.zeros(2, 2)  # ignored
    return state


def test_backbone_from_local_safetensors_and_hub_cache(loss, tmp_path, monkeypatch):
    state = _torchvision_style_trunk(loss, offset=1.0)
    path = tmp_path / "vgg16.safetensors"
    save_file(state, str(path))
    built = recon.build_lpips("vgg", str(path))
    trunk = built.net.state_dict()
    assert torch.equal(trunk["slice1.0.weight"], state["features.0.weight"])
    assert torch.equal(trunk["slice5.28.bias"], state["features.28.bias"])
    assert not any(p.requires_grad for p in built.parameters())
    # "pretrained" reads torchvision's file from the torch hub cache without any network access
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(state, hub / "checkpoints" / "vgg16-397923af.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("network access"))
    built = recon.build_lpips("vgg", "pretrained")
    assert torch.equal(built.net.state_dict()["slice3.10.weight"], state["features.10.weight"])


def test_backbone_errors_are_user_errors(tmp_path, monkeypatch):
    with pytest.raises(OpenVTPError, match="no file"):
        ReconstructionLoss(lpips_backbone=str(tmp_path / "missing.pth"))
    with pytest.raises(OpenVTPError, match="lpips_net"):
        ReconstructionLoss(lpips_net="resnet", lpips_backbone="random")
    bad = tmp_path / "bad.safetensors"
    save_file({"features.0.weight": torch.zeros(1)}, str(bad))
    with pytest.raises(OpenVTPError, match="shape"):
        ReconstructionLoss(lpips_backbone=str(bad))

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(OpenVTPError) as err:
        ReconstructionLoss(lpips_backbone="pretrained")
    msg = str(err.value)
    assert "\n" not in msg and os.path.join("empty_hub", "checkpoints", "vgg16-397923af.pth") in msg
    assert "lpips_backbone" in msg
