"""Real photographs that ship inside scikit-image and scikit-learn, with hand-written captions.

No download: only images bundled with the installed packages are used (scikit-image's
pooch-fetched ones are left out); any that fail to load are skipped. Served as random
crops, a pure function of (seed, split, index), so they add natural-image statistics to the
procedural scenes at no I/O cost.
"""
from __future__ import annotations

import functools
import logging
import warnings

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from openvtp.data.indexing import checked_index
from openvtp.errors import OpenVTPError

log = logging.getLogger(__name__)

# (name, loader spec, caption). Loader spec: "skimage:<function>" or "sklearn:<file name>".
PHOTOS = (
    ("astronaut", "skimage:astronaut", "a portrait of a smiling astronaut in an orange suit in front of a flag"),
    ("coffee", "skimage:coffee", "a cup of coffee on a red saucer on a wooden table"),
    ("chelsea", "skimage:chelsea", "a close-up photo of a tabby cat's face"),
    ("rocket", "skimage:rocket", "a rocket on a launch pad at dusk"),
    ("motorcycle", "skimage:stereo_motorcycle", "a red motorcycle parked in a garage"),
    ("hubble", "skimage:hubble_deep_field", "a telescope image of many distant galaxies in space"),
    ("tissue", "skimage:immunohistochemistry", "a microscope image of stained tissue"),
    ("retina", "skimage:retina", "a medical photo of the back of a human eye"),
    ("camera", "skimage:camera", "a black and white photo of a man with a camera on a tripod"),
    ("coins", "skimage:coins", "a black and white photo of rows of old coins"),
    ("moon", "skimage:moon", "a black and white photo of the surface of the moon"),
    ("grass", "skimage:grass", "a black and white close-up of grass"),
    ("gravel", "skimage:gravel", "a black and white close-up of gravel"),
    ("brick", "skimage:brick", "a black and white photo of a brick wall"),
    ("china", "sklearn:china.jpg", "a chinese pagoda on a hill above a lake"),
    ("flower", "sklearn:flower.jpg", "an orange dahlia flower against dark green leaves"),
)
_SPLITS = {"train": 0, "heldout": 1}


def _load(spec: str) -> np.ndarray:
    source, name = spec.split(":", 1)
    if source == "skimage":
        import skimage.data

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = getattr(skimage.data, name)()
        if isinstance(arr, tuple):  # stereo pairs: keep the left view
            arr = arr[0]
    else:
        from sklearn.datasets import load_sample_image

        arr = load_sample_image(name)
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise ValueError(f"{spec}: expected uint8, got {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr[..., :3])


@functools.lru_cache(maxsize=1)
def photo_list() -> tuple[tuple[str, np.ndarray, str], ...]:
    """(name, (H, W, 3) uint8 array, caption) for every bundled photo that loads offline."""
    out = []
    for name, spec, caption in PHOTOS:
        try:
            out.append((name, _load(spec), caption))
        except Exception as exc:  # a package version without this file: skip it, never fetch
            log.warning("photos: skipping %s (%s): %s", name, spec, exc)
    return tuple(out)


def _crop_box(rng: np.random.Generator, H: int, W: int, h: int, w: int, min_frac: float) -> tuple[float, ...]:
    """A box with the output aspect ratio covering min_frac..1 of the largest such box."""
    aspect = w / h
    ch_max = min(H, W / aspect)
    ch = ch_max * rng.uniform(min_frac, 1.0)
    cw = ch * aspect
    top = rng.uniform(0, H - ch)
    left = rng.uniform(0, W - cw)
    return (left, top, left + cw, top + ch)


class NaturalPhotos(Dataset):
    """Random crops of the bundled photographs with their captions.

    Args:
        size: output side, or (height, width).
        length: number of samples (crops); the photos repeat.
        min_frac: smallest crop side as a fraction of the largest crop with the output aspect.
        split: "train" or "heldout": disjoint random streams over the same photos.
    """

    def __init__(
        self,
        size: int | tuple[int, int] = 64,
        length: int = 10_000,
        seed: int = 0,
        split: str = "train",
        min_frac: float = 0.35,
    ):
        if split not in _SPLITS:
            raise OpenVTPError(f"photos: split must be one of {sorted(_SPLITS)}, got {split!r}")
        if seed < 0 or length <= 0:
            raise OpenVTPError(f"photos: need seed >= 0 and length > 0, got seed={seed} length={length}")
        if not 0.0 < min_frac <= 1.0:
            raise OpenVTPError(f"photos: min_frac must be in (0, 1], got {min_frac}")
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.length, self.seed, self.split, self.min_frac = int(length), int(seed), split, float(min_frac)
        self.photos = photo_list()
        if not self.photos:
            raise OpenVTPError("photos: none of the bundled scikit-image/scikit-learn photos could be loaded")
        self.classes = [name for name, _, _ in self.photos]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        index = checked_index(index, self.length, "photo")
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], index])
        label = int(rng.integers(len(self.photos)))
        name, arr, caption = self.photos[label]
        h, w = self.size
        box = _crop_box(rng, arr.shape[0], arr.shape[1], h, w, self.min_frac)
        crop = Image.fromarray(arr).resize((w, h), Image.BICUBIC, box=box, reducing_gap=3.0)
        pixels = np.asarray(crop, dtype=np.uint8)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))),  # (3, H, W)
            "caption": caption,
            "key": f"photo-{self.split}-{self.seed}-{index:08d}-{name}",
            "label": label,
        }
