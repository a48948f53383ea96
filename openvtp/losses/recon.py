"""Reconstruction loss: L1 in normalised pixel space plus LPIPS (frozen, kept out of checkpoints)."""

import os
import warnings
from pathlib import Path

import lpips
import torch
import torch.nn as nn
import torchvision
from safetensors.torch import load_file

from openvtp.errors import OpenVTPError

from openvtp.constants import IMAGENET_MEAN, IMAGENET_STD

# ImageNet weights of the torchvision trunk that lpips' `pnet_rand=False` would download
_TRUNK_WEIGHTS = {
    "vgg": torchvision.models.VGG16_Weights.IMAGENET1K_V1,
    "alex": torchvision.models.AlexNet_Weights.IMAGENET1K_V1,
    "squeeze": torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1,
}


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise OpenVTPError(f"LPIPS backbone weights: no file at {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path), device="cpu")
    if path.suffix not in (".pth", ".pt", ".bin"):
        raise OpenVTPError(f"LPIPS backbone weights: {path} must be a .safetensors or .pth state dict")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = str(e).replace("\n", " ")
        raise OpenVTPError(f"LPIPS backbone weights: cannot read {path} as a tensor state dict ({reason})") from e
    if not isinstance(state, dict):
        raise OpenVTPError(f"LPIPS backbone weights: {path} holds a {type(state).__name__}, not a state dict")
    return state


def _hub_trunk_state_dict(net: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet trunk from the torch hub cache, downloading it only if it is missing."""
    url = _TRUNK_WEIGHTS[net].url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if cached.is_file():
        return _read_state_dict(cached)
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, weights_only=True)
    except Exception as e:
        reason = f"{type(e).__name__}: {e}".replace("\n", " ")
        raise OpenVTPError(
            f"LPIPS '{net}' needs torchvision's ImageNet weights: {cached} is missing and downloading {url} "
            f"failed ({reason}); copy that file to {cached}, or set recon.lpips_backbone (openvtp pretrain) or "
            f"loss.lpips_backbone (openvtp finetune-decoder) to a local .pth/.safetensors state dict (random: tests)"
        ) from e


def _load_trunk(trunk: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a torchvision-format state dict (`features.<i>.*`, classifier ignored) or lpips' own
    trunk format (`slice<k>.<i>.*`, optionally under `net.`) into lpips' sliced trunk."""
    new_state = {}
    for name, ref in trunk.state_dict().items():
        _, layer, param = name.split(".", 2)  # slice<k>.<i>.<param>; <i> is the torchvision features index
        candidates = (f"features.{layer}.{param}", f"{layer}.{param}", name, f"net.{name}")
        key = next((k for k in candidates if k in state), None)
        if key is None:
            raise OpenVTPError(f"LPIPS backbone weights {source}: no tensor 'features.{layer}.{param}'")
        if state[key].shape != ref.shape:
            raise OpenVTPError(
                f"LPIPS backbone weights {source}: '{key}' has shape {tuple(state[key].shape)}, "
                f"expected {tuple(ref.shape)}"
            )
        new_state[name] = state[key]
    trunk.load_state_dict(new_state)


def build_lpips(net: str = "vgg", backbone: str = "pretrained") -> lpips.LPIPS:
    """A frozen, eval-mode `lpips.LPIPS` (v0.1 linear heads from the package) with the trunk from
    `backbone`: "pretrained" (torchvision ImageNet weights, torch hub cache), "random", or a path."""
    if net not in _TRUNK_WEIGHTS:
        raise OpenVTPError(f"lpips_net must be one of {sorted(_TRUNK_WEIGHTS)}, got '{net}'")
    state = None
    if backbone == "pretrained":
        state, source = _hub_trunk_state_dict(net), f"(torch hub, {net})"
    elif backbone != "random":
        state, source = _read_state_dict(Path(backbone)), str(backbone)
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=` argument
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(pretrained=False, net=net, pnet_rand=True, verbose=False)
    # the calibrated linear heads ship inside the package; loaded here so that unpickling is weights-only
    lin_path = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    lin_state = torch.load(lin_path, map_location="cpu", weights_only=True)
    result = model.load_state_dict(lin_state, strict=False)
    assert not result.unexpected_keys, f"unexpected LPIPS head keys {result.unexpected_keys}"
    assert all(k in lin_state for k in model.state_dict() if k.startswith("lin") and not k.startswith("lins")), (
        "LPIPS linear heads not fully loaded")
    if state is not None:
        _load_trunk(model.net, state, source)
    model.requires_grad_(False)
    return model.eval()


class ReconstructionLoss(nn.Module):
    """l1_weight * L1 + lpips_weight * LPIPS between prediction and target.

    Both inputs are (B, 3, H, W) in ImageNet-normalised pixel space (the encoder's input space and the
    decoder's output space). L1 is taken there; LPIPS sees them mapped to [-1, 1], unclamped so that
    out-of-range predictions still get a gradient.

    The LPIPS network is frozen, always in eval mode and deliberately not a registered submodule:
    it appears in neither parameters() (so no optimizer or DDP bucket sees it) nor state_dict()
    (checkpoints stay small; it is rebuilt from `lpips_net`/`lpips_backbone`). `.to()`/`.cuda()`
    still move it (see `_apply`). Access it as `.lpips` (None when lpips_weight == 0, in which case
    it is never built).

    Args:
        lpips_backbone: "pretrained" (torchvision ImageNet weights from the torch hub cache, downloaded
            if missing), "random" (untrained trunk, for tests), or a path to a .pth/.safetensors state
            dict of the torchvision trunk.
    """

    def __init__(
        self,
        l1_weight: float = 1.0,
        lpips_weight: float = 1.0,
        lpips_net: str = "vgg",
        lpips_backbone: str = "pretrained",
    ):
        super().__init__()
        self.l1_weight = l1_weight
        self.lpips_weight = lpips_weight
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        net = build_lpips(lpips_net, lpips_backbone) if lpips_weight > 0 else None
        object.__setattr__(self, "lpips", net)  # bypasses nn.Module registration on purpose

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.lpips is not None:
            self.lpips._apply(fn, recurse)
        return self

    def to_lpips_range(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised -> [-1, 1] (for inputs that were in [0, 1] before normalisation)."""
        return (x * self.std + self.mean) * 2 - 1

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """pred, target: (B, 3, H, W), normalised. Returns {"l1", "lpips", "loss"} scalars; "lpips"
        is 0 when disabled."""
        assert pred.shape == target.shape, f"pred {tuple(pred.shape)} vs target {tuple(target.shape)}"
        l1 = (pred - target).abs().mean()
        if self.lpips is not None:
            perceptual = self.lpips(self.to_lpips_range(pred), self.to_lpips_range(target)).float().mean()  # (B,1,1,1) -> ()
        else:
            perceptual = torch.zeros((), device=pred.device, dtype=l1.dtype)
        loss = self.l1_weight * l1 + self.lpips_weight * perceptual
        return {"l1": l1, "lpips": perceptual, "loss": loss}

    def extra_repr(self) -> str:
        lp = "off" if self.lpips is None else f"{self.lpips.pnet_type} (frozen, not in state_dict)"
        return f"l1_weight={self.l1_weight}, lpips_weight={self.lpips_weight}, lpips={lp}"
