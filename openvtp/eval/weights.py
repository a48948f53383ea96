"""Pretrained weights the metrics need (FID Inception, LPIPS backbones): found in the torch hub cache or fetched
once, then read without unpickling arbitrary objects.

Offline machines get one error naming the file to download and the exact place to put it.
"""

from pathlib import Path

import torch
from safetensors.torch import load_file

from openvtp.errors import OpenVTPError


def hub_checkpoint_dir() -> Path:
    """Where torch.hub (and so torch-fidelity and torchvision) caches weight files."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _download(url: str, dst: Path) -> None:
    # torch.hub writes to a temp file and renames, so an interrupted download leaves nothing behind
    torch.hub.download_url_to_file(url, str(dst), progress=True)


def cached_or_download(url: str, what: str, alternative: str) -> Path:
    """Path of the cached copy of `url`, downloading it when absent.

    Args:
        what: the weights' name for the error message.
        alternative: how else the user can supply them (e.g. "or pass that file with --fid-weights PATH").
    """
    path = hub_checkpoint_dir() / url.rsplit("/", 1)[-1]
    if path.is_file():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _download(url, path)
    except Exception as e:  # no network, proxy, disk: all end in the same instruction
        raise OpenVTPError(
            f"{what} weights not found at {path} and could not be downloaded ({type(e).__name__}: {e}); "
            f"download {url} and put it at {path}, {alternative}"
        ) from e
    return path


def load_weights(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a tensors-only torch file (weights_only=True: no arbitrary unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise OpenVTPError(f"{what} weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise OpenVTPError(f"cannot read {what} weights from {path}: {type(e).__name__}: {e}") from e
    if not isinstance(state, dict):
        raise OpenVTPError(f"{what} weights file {path} does not hold a state dict")
    return state
