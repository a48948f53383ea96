"""Procedural captioned scenes: the embedded, download-free training and evaluation data.

Each image shows 1-3 instances of one shape in one named colour on a contrasting background
(flat, linear gradient or noise texture); the caption names colour and shape in varied
wordings. Everything is a pure function of (seed, split, index, size), so a sample is the same
in every process, worker and run. A fixed set of (shape, colour) pairs, `UNSEEN_PAIRS`, never
occurs in the train split; the held-out split shows only those by default, which tests
compositional generalisation (a model must bind colour and shape words it has seen apart).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from openvtp.data.indexing import checked_index
from openvtp.errors import OpenVTPError

SHAPES = ("circle", "square", "triangle", "star", "cross", "heart", "ring")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "white")
# Canonical RGB of each colour name; each image jitters it slightly.
COLOUR_RGB = np.array(
    [
        (215, 35, 35),
        (245, 135, 20),
        (240, 215, 30),
        (40, 165, 60),
        (35, 85, 215),
        (135, 50, 185),
        (245, 245, 245),
    ],
    dtype=np.float32,
)
# 10 of the 49 pairs (~1/5): one per shape and colour (c = 3s mod 7) plus three more
# (c = 3s + 1 mod 7), so every shape and colour keeps >= 5 training partners.
UNSEEN_PAIRS = (
    ("circle", "red"),
    ("square", "green"),
    ("triangle", "white"),
    ("star", "yellow"),
    ("cross", "purple"),
    ("heart", "orange"),
    ("ring", "blue"),
    ("circle", "orange"),
    ("square", "blue"),
    ("triangle", "red"),
)
UNSEEN_IDS = frozenset((SHAPES.index(s), COLOURS.index(c)) for s, c in UNSEEN_PAIRS)
ALL_IDS = tuple((s, c) for s in range(len(SHAPES)) for c in range(len(COLOURS)))
SEEN_IDS = tuple(p for p in ALL_IDS if p not in UNSEEN_IDS)

SHAPE_TEMPLATES = ("a photo of a {}.", "a {} shape.", "a drawing of a {}.", "an image of a {}.")
COLOUR_TEMPLATES = ("a photo of a {} shape.", "a {} object.", "something {}.", "an image of a {} thing.")

BACKGROUNDS = ("flat", "gradient", "noise")
_SPLITS = {"train": 0, "heldout": 1}
_DEFAULT_LENGTH = {"train": 50_000, "heldout": 2_000}
_PLURAL = {"cross": "crosses"}
_COUNT_WORDS = {1: ("a", "one", "a single"), 2: ("two", "a pair of"), 3: ("three",)}
_BG_PHRASES = {
    "flat": ("on a plain background", "on a flat background", "on a solid background"),
    "gradient": ("on a gradient background", "over a smooth gradient", "on a shaded background"),
    "noise": ("on a noisy background", "over noisy texture", "on a textured background"),
}
_TEMPLATES = (
    "{np}",
    "{np} {bg}",
    "a photo of {np}",
    "a photo of {np} {bg}",
    "an image of {np}",
    "a picture showing {np} {bg}",
)
# Radius range (fraction of the shorter side) for 1, 2, 3 instances; size words use it too.
_RADIUS = {1: (0.16, 0.40), 2: (0.13, 0.28), 3: (0.11, 0.23)}
_SMALL, _LARGE = 0.16, 0.30


def shape_prompts() -> tuple[list[str], list[str]]:
    """Class names and prompt templates for a zero-shot shape classifier (label = shape index)."""
    return list(SHAPES), list(SHAPE_TEMPLATES)


def colour_prompts() -> tuple[list[str], list[str]]:
    """Class names and prompt templates for a zero-shot colour classifier (label = colour index)."""
    return list(COLOURS), list(COLOUR_TEMPLATES)


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 16 or w < 16:
        raise OpenVTPError(f"scenes: image size must be at least 16 px per side, got {size}")
    return h, w


# ---------------------------------------------------------------------------- colours


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, dtype=np.float32) * 255.0


def _nearest_colour(rgb: np.ndarray) -> int:
    return int(np.argmin(((COLOUR_RGB - rgb) ** 2).sum(1)))


def _background_colour(rng: np.random.Generator, obj: np.ndarray, colour: int, margin: float) -> np.ndarray:
    """A muted colour far from the object colour and never nearest to its name."""
    for _ in range(32):
        c = _hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.5), rng.uniform(0.08, 0.95))
        if np.linalg.norm(c - obj) >= 120.0 + margin and _nearest_colour(c) != colour:
            return c
    # Practically unreachable; a fixed choice keeps the function total.
    return np.full(3, 30.0 if obj.mean() > 127 else 225.0, dtype=np.float32)


def _background(rng: np.random.Generator, kind: str, h: int, w: int, obj: np.ndarray, colour: int) -> np.ndarray:
    """(H, W, 3) float32 background in 0..255."""
    if kind == "flat":
        c = _background_colour(rng, obj, colour, 0.0)
        return np.broadcast_to(c, (h, w, 3)).copy()
    if kind == "gradient":
        c0 = _background_colour(rng, obj, colour, 0.0)
        for _ in range(8):  # the whole ramp, not just its ends, must stay clear of the object colour
            c1 = _background_colour(rng, obj, colour, 0.0)
            t = np.clip(np.dot(obj - c0, c1 - c0) / max(float(np.dot(c1 - c0, c1 - c0)), 1e-6), 0.0, 1.0)
            if np.linalg.norm(c0 + t * (c1 - c0) - obj) >= 100.0:
                break
        else:
            c1 = c0
        theta = rng.uniform(0, 2 * math.pi)
        ys, xs = np.linspace(-0.5, 0.5, h, dtype=np.float32), np.linspace(-0.5, 0.5, w, dtype=np.float32)
        t = ys[:, None] * math.sin(theta) + xs[None, :] * math.cos(theta)  # (H, W)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        return c0 + (c1 - c0) * t[..., None]
    # noise: smooth low-frequency luminance blobs plus fine grain around one base colour
    amp = rng.uniform(20.0, 40.0)
    c = _background_colour(rng, obj, colour, amp)
    gh, gw = int(rng.integers(3, 9)), int(rng.integers(3, 9))
    coarse = rng.uniform(-1.0, 1.0, size=(gh, gw)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(coarse, mode="F").resize((w, h), Image.BICUBIC))  # (H, W)
    grain = rng.normal(0.0, 0.25, size=(h, w, 3)).astype(np.float32)
    return c + amp * (smooth[..., None] + grain)


# ---------------------------------------------------------------------------- shapes


def _rotate(pts: np.ndarray, angle: float) -> np.ndarray:
    ca, sa = math.cos(angle), math.sin(angle)
    return pts @ np.array([[ca, sa], [-sa, ca]], dtype=np.float64)


def _unit_outline(shape: str) -> np.ndarray:
    """Polygon (K, 2) in units of the instance radius, y pointing down, centred on its bbox."""
    if shape == "square":
        a = 0.78
        return np.array([(-a, -a), (a, -a), (a, a), (-a, a)])
    if shape == "triangle":
        ang = np.deg2rad([-90.0, 30.0, 150.0])
        pts = np.stack([np.cos(ang), np.sin(ang)], 1) * 1.1
        return pts + (0.0, 0.275)
    if shape == "star":
        ang = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        rad = np.where(np.arange(10) % 2 == 0, 1.05, 0.45)
        pts = np.stack([np.cos(ang) * rad, np.sin(ang) * rad], 1)
        return pts + (0.0, 0.1)
    if shape == "cross":
        a, b = 0.3, 0.92
        return np.array(
            [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)]
        )
    if shape == "heart":
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        pts = np.stack([x, y], 1)
        pts -= (pts.max(0) + pts.min(0)) / 2
        return pts / 17.0 * 1.02
    raise AssertionError(f"no outline for {shape}")


_OUTLINES = {s: _unit_outline(s) for s in SHAPES if s not in ("circle", "ring")}
_ROTATES = {"square", "triangle", "star", "cross", "heart"}


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float) -> None:
    if shape == "circle":
        r = 0.92 * r
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=255, width=max(1, round(0.34 * r)))
    else:
        pts = _rotate(_OUTLINES[shape], angle) * r + (cx, cy)
        draw.polygon([tuple(p) for p in pts], fill=255)


def _place(rng: np.random.Generator, count: int, h: int, w: int) -> tuple[np.ndarray, float]:
    """Centres (count, 2) as (x, y) and a shared base radius, all inside the image, little overlap."""
    side = min(h, w)
    lo, hi = _RADIUS[count]
    base = rng.uniform(lo, hi) * side
    radii = base * rng.uniform(0.9, 1.1, size=count)
    for _ in range(50):
        xs = rng.uniform(radii + 1, w - radii - 1)
        ys = rng.uniform(radii + 1, h - radii - 1)
        c = np.stack([xs, ys], 1)
        d = np.linalg.norm(c[:, None] - c[None], axis=-1)
        ok = (d >= 0.85 * (radii[:, None] + radii[None])) | np.eye(count, dtype=bool)
        if ok.all():
            return np.concatenate([c, radii[:, None]], 1), base
        radii *= 0.97
    return np.concatenate([c, radii[:, None]], 1), base


# ---------------------------------------------------------------------------- captions


def _caption(rng: np.random.Generator, shape: int, colour: int, count: int, rel_size: float, bg: str) -> str:
    words = [str(rng.choice(_COUNT_WORDS[count]))]
    if rel_size < _SMALL and rng.random() < 0.6:
        words.append("small")
    elif rel_size > _LARGE and rng.random() < 0.6:
        words.append("large")
    words.append(COLOURS[colour])
    noun = SHAPES[shape] if count == 1 else _PLURAL.get(SHAPES[shape], SHAPES[shape] + "s")
    words.append(noun)
    if words[0] == "a" and words[1][0] in "aeiou":
        words[0] = "an"
    template = str(rng.choice(_TEMPLATES))
    return template.format(np=" ".join(words), bg=str(rng.choice(_BG_PHRASES[bg])))


# ---------------------------------------------------------------------------- scenes


def _twin_shape(seed: int, split: str, index: int, shape: int, colour: int,
                pairs: tuple[tuple[int, int], ...]) -> int:
    """Another shape that `pairs` has in `colour` (the same shape if there is none)."""
    others = [s for s, c in pairs if c == colour and s != shape]
    if not others:
        return shape
    return others[int(np.random.default_rng([seed, _SPLITS[split], 3, index]).integers(len(others)))]


def render_scene(
    seed: int, split: str, index: int, size: int | tuple[int, int] = 64, pairs: tuple[tuple[int, int], ...] = SEEN_IDS,
    twin: bool = False,
) -> dict:
    """One scene as a sample dict; a pure function of its arguments.

    `pairs` are the (shape, colour) index pairs to draw from uniformly. With `twin`, the scene of
    `index` with its shape swapped for another of the same colour in `pairs`: the same layout,
    background and caption wording, so image and caption differ from the original in the shape only.
    """
    h, w = _hw(size)
    rng = np.random.default_rng([seed, _SPLITS[split], index])
    first_shape, colour = pairs[int(rng.integers(len(pairs)))]
    shape = _twin_shape(seed, split, index, first_shape, colour, pairs) if twin else first_shape
    rotates_first = SHAPES[first_shape] in _ROTATES
    twin_angles = np.random.default_rng([seed, _SPLITS[split], 4, index]) if twin else None
    count = int(rng.integers(1, 4))
    bg_kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]

    obj = np.clip(COLOUR_RGB[colour] + rng.uniform(-12, 12, size=3), 0, 255).astype(np.float32)
    img = _background(rng, bg_kind, h, w, obj, colour)  # (H, W, 3)

    # Shapes are drawn as a coverage mask at f-times resolution and box-downsampled: anti-aliasing.
    f = 4 if max(h, w) <= 128 else 2
    mask = Image.new("L", (w * f, h * f), 0)
    draw = ImageDraw.Draw(mask)
    inst, base = _place(rng, count, h, w)
    for cx, cy, r in inst:
        # angles are drawn as for the first shape, so nothing else in a twin depends on the swap
        angle = math.radians(rng.uniform(-20, 20)) if rotates_first else 0.0
        if SHAPES[shape] not in _ROTATES:
            angle = 0.0
        elif not rotates_first:
            angle = math.radians(twin_angles.uniform(-20, 20))
        _draw(draw, SHAPES[shape], cx * f, cy * f, r * f, angle)
    alpha = np.asarray(mask.reduce(f), dtype=np.float32)[..., None] * (1.0 / 255.0)  # (H, W, 1)
    img = img + (obj - img) * alpha
    pixels = np.clip(img + 0.5, 0, 255).astype(np.uint8)

    caption = _caption(rng, shape, colour, count, base / min(h, w), bg_kind)
    return {
        "image": torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))),  # (3, H, W) uint8
        "caption": caption,
        "key": f"scene-{split}-{seed}-{index:08d}" + ("-twin" if twin else ""),
        "label": shape,
        "shape": shape,
        "colour": colour,
        "count": count,
    }


class CaptionedScenes(Dataset):
    """Procedural image-caption pairs with shape and colour labels (see the module docstring).

    Args:
        split: "train" draws only pairs outside `UNSEEN_PAIRS`; "heldout" uses a disjoint
            random stream and, with `heldout_pairs="unseen"`, only `UNSEEN_PAIRS`.
        size: output side, or (height, width).
        length: number of samples; default 50k for train, 2k for heldout.
        heldout_pairs: "unseen" or "all" (every pair, still from the held-out stream).
        group_size, colours_per_group: with both > 0, consecutive blocks of `group_size` indices
            draw their pairs from `colours_per_group` random colours only. Read with the block
            equal to the contrastive batch, every batch then holds many objects of one colour
            and different shapes: hard negatives that colour alone cannot separate.
        shape_twins: item 2k + 1 is the shape twin of item 2k (see `render_scene`): read in
            order, every contrastive batch holds minimal pairs that only shape tells apart.
    """

    def __init__(
        self,
        split: str = "train",
        size: int | tuple[int, int] = 64,
        length: int | None = None,
        seed: int = 0,
        heldout_pairs: str = "unseen",
        group_size: int = 0,
        colours_per_group: int = 0,
        shape_twins: bool = False,
    ):
        if split not in _SPLITS:
            raise OpenVTPError(f"scenes: split must be one of {sorted(_SPLITS)}, got {split!r}")
        if heldout_pairs not in ("unseen", "all"):
            raise OpenVTPError(f"scenes: heldout_pairs must be 'unseen' or 'all', got {heldout_pairs!r}")
        if seed < 0:
            raise OpenVTPError(f"scenes: seed must be >= 0, got {seed}")
        self.split, self.seed = split, int(seed)
        self.size = _hw(size)
        self.length = _DEFAULT_LENGTH[split] if length is None else int(length)
        if self.length <= 0:
            raise OpenVTPError(f"scenes: length must be positive, got {length}")
        if split == "train":
            self.pairs = SEEN_IDS
        else:
            self.pairs = tuple(sorted(UNSEEN_IDS)) if heldout_pairs == "unseen" else ALL_IDS
        if group_size < 0 or not 0 <= colours_per_group <= len(COLOURS):
            raise OpenVTPError(f"scenes: need group_size >= 0 and 0 <= colours_per_group <= {len(COLOURS)}")
        self.group_size, self.colours_per_group = int(group_size), int(colours_per_group)
        self.shape_twins = bool(shape_twins)

    def pairs_for(self, index: int) -> tuple[tuple[int, int], ...]:
        """The (shape, colour) pairs item `index` draws from."""
        if not (self.group_size and self.colours_per_group):
            return self.pairs
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], 2, index // self.group_size])
        colours = set(rng.choice(len(COLOURS), self.colours_per_group, replace=False).tolist())
        return tuple(p for p in self.pairs if p[1] in colours)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        index = checked_index(index, self.length, "scene")
        if self.shape_twins and index % 2:
            return render_scene(self.seed, self.split, index - 1, self.size, self.pairs_for(index - 1), twin=True)
        return render_scene(self.seed, self.split, index, self.size, self.pairs_for(index))
