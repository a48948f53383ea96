"""Augmented views for the three objectives; all randomness from an explicit torch.Generator.

A view is a pure function of (image, size, generator). Generators come from
`sample_generator(seed, step, index, stream)`, so a sample's views do not depend on the
number of processes, workers or batch layout, and a resumed run reproduces them exactly.
Inputs are (3, H, W) uint8 or float in [0, 1]; outputs are float (3, h, w), ImageNet-normalised.
"""
from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from openvtp.constants import IMAGENET_MEAN, IMAGENET_STD
from openvtp.data.image_io import quantize
_BICUBIC = InterpolationMode.BICUBIC

# Stream ids, so objectives that see the same sample at the same step draw independent views.
STREAM_CLIP, STREAM_SSL, STREAM_RECON, STREAM_MASK = 0, 1, 2, 3


def sample_generator(seed: int, step: int, index: int, stream: int = 0) -> torch.Generator:
    """A CPU generator seeded by hashing (seed, step, index, stream); any signed 64-bit ints."""
    digest = hashlib.blake2b(struct.pack("<4q", seed, step, index, stream), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little"))


def _channels(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    """(3, 1, 1) constants on `like`'s device; copied asynchronously, so a GPU's queue is not waited on."""
    return torch.tensor(values, dtype=like.dtype).view(3, 1, 1).to(like.device, non_blocking=True)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB -> ImageNet-normalised; (..., 3, H, W)."""
    return (x - _channels(IMAGENET_MEAN, x)) / _channels(IMAGENET_STD, x)


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised -> [0, 1] RGB (unclamped); (..., 3, H, W)."""
    return x * _channels(IMAGENET_STD, x) + _channels(IMAGENET_MEAN, x)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised float -> uint8 pixels, e.g. for PNG grids of reconstructions."""
    return quantize(denormalize(x.float()))


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=gen).item()


def _coin(gen: torch.Generator, p: float) -> bool:
    return torch.rand((), generator=gen).item() < p


def _float01(img: torch.Tensor) -> torch.Tensor:
    return img.float() / 255.0 if img.dtype == torch.uint8 else img.float()


def _resized(img: torch.Tensor, box: tuple[int, int, int, int], size: tuple[int, int]) -> torch.Tensor:
    """Crop (top, left, h, w) and resize bicubic with antialias, in the image's dtype (uint8 is rounded)."""
    return TF.resized_crop(img, *box, size=list(size), interpolation=_BICUBIC, antialias=True)


def finish(x: torch.Tensor) -> torch.Tensor:
    """A rendered view (uint8, or float in [0, 1]) -> float, ImageNet-normalised."""
    return normalize(_float01(x).clamp(0, 1))  # not in place: a float view may share the batch's or image's memory


def random_resized_crop_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], gen: torch.Generator
) -> tuple[int, int, int, int]:
    """(top, left, h, w) covering `scale` of the area with aspect w/h in `ratio` (Inception-style)."""
    area = height * width
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(gen, *scale)
        r = math.exp(_uniform(gen, *log_r))
        w = round(math.sqrt(target * r))
        h = round(math.sqrt(target / r))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=gen))
            left = int(torch.randint(0, width - w + 1, (), generator=gen))
            return top, left, h, w
    # fallback: the whole image, trimmed to the nearest allowed aspect
    r = width / height
    w, h = width, height
    if r < ratio[0]:
        h = round(width / ratio[0])
    elif r > ratio[1]:
        w = round(height * ratio[1])
    return (height - h) // 2, (width - w) // 2, h, w


def center_box(height: int, width: int, size: tuple[int, int], frac: float = 1.0) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the largest centred box with the aspect of `size`, times `frac`."""
    aspect = size[1] / size[0]
    h = max(1, round(min(height, width / aspect) * frac))
    w = max(1, min(width, round(h * aspect)))
    return (height - h) // 2, (width - w) // 2, h, w


def center_view(img: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Deterministic eval view: scale the shorter side, centre crop, normalise."""
    hw = _hw(size)
    return finish(_resized(img, center_box(img.shape[-2], img.shape[-1], hw), hw))


def contrastive_crop(
    img: torch.Tensor,
    size: int | tuple[int, int],
    gen: torch.Generator | None,
    scale: tuple[float, float] = (0.9, 1.0),
    flip_p: float = 0.0,
) -> torch.Tensor:
    """The geometry of `contrastive_view`, in the image's dtype (uint8 stays uint8), not normalised."""
    hw = _hw(size)
    if gen is None:
        return _resized(img, center_box(img.shape[-2], img.shape[-1], hw), hw)
    a = hw[1] / hw[0]
    box = random_resized_crop_box(img.shape[-2], img.shape[-1], scale, (0.75 * a, a / 0.75), gen)
    x = _resized(img, box, hw)
    return TF.horizontal_flip(x) if _coin(gen, flip_p) else x


def contrastive_view(
    img: torch.Tensor,
    size: int | tuple[int, int],
    gen: torch.Generator | None,
    scale: tuple[float, float] = (0.9, 1.0),
    flip_p: float = 0.0,
) -> torch.Tensor:
    """CLIP view: random resized crop, optional flip; float (3, h, w), normalised.

    Defaults follow OpenCLIP's training transform (scale 0.9-1, aspect 3/4-4/3, bicubic, no
    flip): captions may name sides, and a gentle crop keeps every captioned object in view.
    gen=None gives `center_view`.
    """
    return finish(contrastive_crop(img, size, gen, scale, flip_p))


def reconstruction_crop(
    img: torch.Tensor,
    size: int | tuple[int, int],
    gen: torch.Generator | None,
    scale: tuple[float, float] = (0.8, 1.0),
    shift: float = 0.25,
    flip_p: float = 0.5,
) -> torch.Tensor:
    """The geometry of `reconstruction_view`, in the image's dtype, not normalised."""
    hw = _hw(size)
    H, W = img.shape[-2], img.shape[-1]
    if gen is None:
        return _resized(img, center_box(H, W, hw), hw)
    _, _, h, w = center_box(H, W, hw, _uniform(gen, *scale))
    top = round((H - h) / 2 * (1 + shift * _uniform(gen, -1, 1)))
    left = round((W - w) / 2 * (1 + shift * _uniform(gen, -1, 1)))
    x = _resized(img, (top, left, h, w), hw)
    return TF.horizontal_flip(x) if _coin(gen, flip_p) else x


def reconstruction_view(
    img: torch.Tensor,
    size: int | tuple[int, int],
    gen: torch.Generator | None,
    scale: tuple[float, float] = (0.8, 1.0),
    shift: float = 0.25,
    flip_p: float = 0.5,
) -> torch.Tensor:
    """Auto-encoder view: a centre-ish crop (side `scale` of the largest crop with the output
    aspect, centre moved by up to `shift` of the slack), optional flip; float (3, h, w), normalised.

    Crops stay large so the decoder learns whole images at training resolution; gen=None gives
    `center_view`.
    """
    return finish(reconstruction_crop(img, size, gen, scale, shift, flip_p))


@dataclass(frozen=True)
class CropPlan:
    """One multi-crop crop's random choices, drawn on the host before any pixel work.

    The per-sample path (`MultiCrop.__call__`) and the batched one (`openvtp.data.photometric`) apply
    the same plan, so both give the same crop whichever runs it, and where.
    """

    box: tuple[int, int, int, int]                       # (top, left, h, w) in the source image
    flip: bool
    jitter: tuple[float, float, float, float] | None     # brightness, contrast, saturation, hue factors
    order: tuple[int, ...]                               # the order the four jitter ops run in
    gray: bool
    blur: tuple[float, int] | None                       # (sigma, odd kernel size) in pixels of the crop
    solarize: bool


_JITTER_OPS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


class MultiCrop:
    """DINOv2's multi-crop augmentation, as its code runs it: global and local crops with photometric jitter.

    Per crop: random resized crop (bicubic) and flip; with p `jitter_p` colour jitter
    (brightness, contrast, saturation, hue strengths `jitter`, random order); grayscale with
    p `gray_p`; Gaussian blur with p `blur_p` = (first global, other globals, locals); solarise
    with p `solarize_p` on the globals after the first. DINOv2's GaussianBlur hands 1-p to
    RandomApply, so its stated (1.0, 0.1, 0.5) run as the default (0.0, 0.9, 0.5). The blur sigma
    and kernel are in pixels of DINOv2's crops (`blur_reference` = 224 global, 96 local) and scale
    with this crop's side, so a 32 px crop is blurred as much, relative to its size, as a 224 px one.
    Calling it returns (globals, locals): lists of float (3, s, s) normalised tensors. `plan` and
    `render` split that call into the random draws and the geometric part, for batched photometrics.
    """

    def __init__(
        self,
        global_size: int | tuple[int, int] = 224,
        local_size: int | tuple[int, int] = 96,
        n_global: int = 2,
        n_local: int = 8,
        global_scale: tuple[float, float] = (0.32, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.32),
        flip_p: float = 0.5,
        jitter_p: float = 0.8,
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1),
        gray_p: float = 0.2,
        blur_p: tuple[float, float, float] = (0.0, 0.9, 0.5),
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        blur_kernel: int = 9,
        blur_reference: tuple[int, int] = (224, 96),
        solarize_p: float = 0.2,
    ):
        assert n_global >= 1 and n_local >= 0, "need at least one global crop"
        assert blur_kernel % 2 == 1, "blur_kernel must be odd"
        self.global_size, self.local_size = _hw(global_size), _hw(local_size)
        self.n_global, self.n_local = n_global, n_local
        self.global_scale, self.local_scale = global_scale, local_scale
        self.flip_p, self.jitter_p, self.jitter, self.gray_p = flip_p, jitter_p, jitter, gray_p
        self.blur_p, self.blur_sigma, self.blur_kernel = blur_p, blur_sigma, blur_kernel
        self.blur_reference = blur_reference
        self.solarize_p = solarize_p

    def blur_size(self, side: int, reference: int) -> tuple[float, int]:
        """(sigma scale, odd kernel size) for a crop of `side` px blurred like a `reference` px one."""
        scale = side / reference
        half = max(1, round(self.blur_kernel // 2 * scale))
        return scale, min(2 * half + 1, 2 * side - 1)  # reflect padding needs pad < side

    def _plan_one(self, hw: tuple[int, int], size: tuple[int, int], scale, blur_p: float, reference: int,
                  solarize_p: float | None, gen: torch.Generator) -> CropPlan:
        """The draws of one crop, in the order the per-sample path has always made them."""
        a = size[1] / size[0]
        box = random_resized_crop_box(hw[0], hw[1], scale, (0.75 * a, a / 0.75), gen)
        flip = _coin(gen, self.flip_p)
        jitter, order = None, ()
        if _coin(gen, self.jitter_p):
            b, c, s, h = self.jitter
            jitter = (_uniform(gen, max(0.0, 1 - b), 1 + b), _uniform(gen, max(0.0, 1 - c), 1 + c),
                      _uniform(gen, max(0.0, 1 - s), 1 + s), _uniform(gen, -h, h))
            order = tuple(torch.randperm(4, generator=gen).tolist())
        gray = _coin(gen, self.gray_p)
        blur = None
        if _coin(gen, blur_p):
            sigma_scale, k = self.blur_size(min(size), reference)
            blur = (_uniform(gen, *self.blur_sigma) * sigma_scale, k)
        solarize = solarize_p is not None and _coin(gen, solarize_p)
        return CropPlan(box, flip, jitter, order, gray, blur, solarize)

    def plan(self, hw: tuple[int, int], gen: torch.Generator) -> tuple[list[CropPlan], list[CropPlan]]:
        """(global, local) crop plans for an image of size hw = (H, W)."""
        globals_ = [self._plan_one(hw, self.global_size, self.global_scale, self.blur_p[0 if i == 0 else 1],
                                   self.blur_reference[0], None if i == 0 else self.solarize_p, gen)
                    for i in range(self.n_global)]
        locals_ = [self._plan_one(hw, self.local_size, self.local_scale, self.blur_p[2], self.blur_reference[1],
                                  None, gen) for _ in range(self.n_local)]
        return globals_, locals_

    @staticmethod
    def render(img: torch.Tensor, plan: CropPlan, size: tuple[int, int]) -> torch.Tensor:
        """The geometric part of a crop: resized and flipped, in the image's dtype (uint8 stays uint8)."""
        x = _resized(img, plan.box, size)
        return TF.horizontal_flip(x) if plan.flip else x

    @staticmethod
    def photometric(x: torch.Tensor, plan: CropPlan) -> torch.Tensor:
        """The photometric part of one rendered crop, then normalisation: float (3, s, s)."""
        x = _float01(x).clamp(0, 1)  # not in place: an unresized crop of a float image is a view of it
        if plan.jitter is not None:
            for k in plan.order:
                x = _JITTER_OPS[k](x, plan.jitter[k])
        if plan.gray:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        if plan.blur is not None:
            sigma, k = plan.blur
            x = TF.gaussian_blur(x, [k, k], [sigma, sigma])
        if plan.solarize:
            x = TF.solarize(x, 0.5)
        return normalize(x.clamp(0, 1))

    def __call__(self, img: torch.Tensor, gen: torch.Generator) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        globals_, locals_ = self.plan(img.shape[-2:], gen)
        return ([self.photometric(self.render(img, p, self.global_size), p) for p in globals_],
                [self.photometric(self.render(img, p, self.local_size), p) for p in locals_])
