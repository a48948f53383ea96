"""Reading and writing single image files for the CLI, with user errors that name the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from openvtp.errors import OpenVTPError

from .images import decode_image


def read_image(path: str | Path, size: int | tuple[int, int] | None = None, mode: str = "crop") -> torch.Tensor:
    """RGB uint8 (3, H, W), optionally resized (see `decode_image`); OpenVTPError if missing or unreadable."""
    path = Path(path)
    if path.is_dir():
        raise OpenVTPError(f"{path} is a folder, not an image file")
    if not path.is_file():
        raise OpenVTPError(f"image not found: {path}")
    try:
        return decode_image(path, size, mode)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise OpenVTPError(f"cannot read image {path}: {e.__class__.__name__}") from None


def quantize(images01: torch.Tensor) -> torch.Tensor:
    """Floats in [0, 1] -> uint8 pixels, rounded as PNG writers do (the one rule every saved or measured image uses)."""
    return (images01.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


def to_uint8(images01: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) or (3, H, W) floats in [0, 1] -> uint8 NHWC / HWC array."""
    x = quantize(images01).cpu()
    return x.permute(*range(x.ndim - 3), -2, -1, -3).numpy()


def save_image(images01: torch.Tensor, path: str | Path) -> None:
    """Save one (3, H, W) image in [0, 1] as PNG (or the suffix's format)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(images01)).save(path)
