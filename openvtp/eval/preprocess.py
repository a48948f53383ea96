"""The released evaluation protocols' image preprocessing, on PIL images.

Each function returns a uint8 tensor (3, H, W): lossless, what FID's Inception takes, and what the model side turns
into ImageNet-normalised floats with `x.float() / 255` then mean/std.
"""

import math

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image


def _to_tensor(pil: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).permute(2, 0, 1)  # (3, H, W)


def adm_center_crop(pil: Image.Image, size: int) -> torch.Tensor:
    """ADM / DiT / LightningDiT centre crop (reconstruction and generation protocols).

    Halve with BOX filtering while the short side is >= 2 * size (cheap antialiasing), BICUBIC-resize so the short
    side is exactly `size`, then crop the centre (offsets rounded down).
    """
    pil = pil.convert("RGB")
    while min(pil.size) >= 2 * size:
        pil = pil.resize((pil.width // 2, pil.height // 2), resample=Image.BOX)
    scale = size / min(pil.size)
    pil = pil.resize((round(pil.width * scale), round(pil.height * scale)), resample=Image.BICUBIC)
    top, left = (pil.height - size) // 2, (pil.width - size) // 2
    return _to_tensor(pil.crop((left, top, left + size, top + size)))


def squash_resize(pil: Image.Image, size: int, resample: int = Image.BICUBIC) -> torch.Tensor:
    """Resize to size x size ignoring the aspect ratio (zero-shot: ImageNet val at 256). VTP's script uses
    torchvision's Resize((size, size)), i.e. PIL BILINEAR; openvtp's default is BICUBIC."""
    return _to_tensor(pil.convert("RGB").resize((size, size), resample=resample))


def resize_center_crop(pil: Image.Image, size: int, crop_pct: float = 0.875) -> torch.Tensor:
    """Resize the short side to floor(size / crop_pct), BICUBIC, then centre-crop size x size.

    crop_pct 0.875 is the classic ImageNet ratio (256 -> 224, DINOv2's linear eval; at 256 the resize is to 292);
    crop_pct 1.0 makes it a plain short-side resize + crop. Crop offsets follow torchvision's CenterCrop.
    """
    pil = TF.resize(pil.convert("RGB"), math.floor(size / crop_pct), interpolation=TF.InterpolationMode.BICUBIC)
    return _to_tensor(TF.center_crop(pil, [size, size]))


def random_resized_crop_flip(pil: Image.Image, size: int, seed: int, scale: tuple[float, float] = (0.08, 1.0),
                             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """torchvision's RandomResizedCrop(size, BICUBIC) then RandomHorizontalFlip, as DINOv2's and VTP's linear-probe
    training transform, with every draw taken from a generator seeded by `seed` (not torch's global one)."""
    pil = pil.convert("RGB")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        top, left, h, w = T.RandomResizedCrop.get_params(pil, list(scale), list(ratio))
        flip = torch.rand(1).item() < 0.5
    pil = TF.resized_crop(pil, top, left, h, w, [size, size], interpolation=TF.InterpolationMode.BICUBIC)
    return _to_tensor(TF.hflip(pil) if flip else pil)
