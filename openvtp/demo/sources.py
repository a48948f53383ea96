"""The embedded data as every stage sees it (`data.source=embedded`, `--data embedded`), reached by the library
through `openvtp.data.registry`: pre-training's source, evaluation's splits, latent extraction's labelled scenes,
and the held-out figures pre-training and stage 2 report."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from openvtp.config.schema import PretrainConfig
from openvtp.data.mixture import Mixture
from openvtp.errors import OpenVTPError
from openvtp.eval.datasets import EvalData, EvalSet, LabelSet, digest
from openvtp.eval.options import DEFAULT_PREPROCESS

from .heldout import embedded_eval, embedded_recon_examples, reconstruction_psnr, stack_scenes
from .photos import NaturalPhotos
from .scenes import COLOUR_TEMPLATES, COLOURS, SHAPE_TEMPLATES, SHAPES, CaptionedScenes

PRETRAIN_LENGTH = 10**9  # procedural scenes never repeat within a run
EVAL_TEST, EVAL_TRAIN = 500, 1000  # default evaluation split sizes: the whole suite in ~1 min on 2 cores
LABELS = ("shape", "shape_colour")  # latents: condition on shape (7) or on (shape, colour) (49)

__all__ = ["pretrain_source", "eval_data", "latent_source", "embedded_eval", "embedded_recon_examples",
           "reconstruction_psnr", "heldout_images"]


def pretrain_source(cfg: PretrainConfig) -> Dataset:
    """Train scenes (and photos, `data.photo_fraction`), read at index step * B + position, so a group of B indices
    is one step's batch."""
    d, size = cfg.data, cfg.model.image_size
    scenes = CaptionedScenes("train", size=size, length=PRETRAIN_LENGTH, seed=cfg.train.seed,
                             group_size=cfg.train.batch, colours_per_group=d.colours_per_batch,
                             shape_twins=d.shape_twins)
    if d.photo_fraction <= 0:
        return scenes
    photos = NaturalPhotos(size=size, length=100_000, seed=cfg.train.seed)
    return Mixture([scenes, photos], [1 - d.photo_fraction, d.photo_fraction], seed=cfg.train.seed,
                   length=PRETRAIN_LENGTH, keys=("image", "caption", "key"),
                   keep_index=d.colours_per_batch > 0 or d.shape_twins)


def eval_split(split: str, n: int, size: int, seed: int) -> EvalSet:
    """Scenes rendered at `size`; "test" = held-out scenes of unseen (shape, colour) pairs."""
    ds = CaptionedScenes("heldout" if split == "test" else "train", size=size, length=n, seed=seed)
    items = [ds[i] for i in range(n)]
    images = torch.stack([it["image"] for it in items])  # (N, 3, S, S) uint8
    labelsets = {
        "shape": LabelSet("shape", torch.tensor([it["shape"] for it in items]), list(SHAPES), list(SHAPE_TEMPLATES),
                          "scene shape names", f"{len(SHAPE_TEMPLATES)} scene shape templates"),
        "colour": LabelSet("colour", torch.tensor([it["colour"] for it in items]), list(COLOURS),
                           list(COLOUR_TEMPLATES), "scene colour names",
                           f"{len(COLOUR_TEMPLATES)} scene colour templates"),
    }
    what = "held-out scenes, unseen (shape, colour) pairs" if split == "test" else "train scenes"
    return EvalSet(f"embedded {what}, seed {seed}", ds.split, list(range(n)), images.__getitem__, labelsets,
                   [[it["caption"]] for it in items], digest("embedded", ds.split, seed, n, size))


def eval_data(size: int, limit: int | None, train_limit: int | None, seed: int) -> EvalData:
    """`openvtp eval --data embedded`: held-out scenes to test, train scenes for probes and kNN."""
    test = eval_split("test", limit or EVAL_TEST, size, seed)
    train = eval_split("train", train_limit or EVAL_TRAIN, size, seed + 1)
    return EvalData("embedded", "embedded scenes", test, train, {k: "none" for k in DEFAULT_PREPROCESS})


class _LabelledScenes(Dataset):
    """Train scenes with `label` = shape, or shape * 7 + colour."""

    def __init__(self, scenes: Dataset, labels: str):
        self.scenes, self.labels = scenes, labels

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> dict:
        item = self.scenes[index]
        if self.labels == "shape_colour":
            item["label"] = item["shape"] * len(COLOURS) + item["colour"]
        return item


def latent_source(image_size: int, num: int | None, seed: int, labels: str) -> tuple[Dataset, int]:
    """`extract-latents --data embedded`: `num` train scenes (default 50k) and the number of classes; labels "shape"
    (7 classes) or "shape_colour" (shape * 7 + colour, 49 classes, 39 of them occur)."""
    if labels not in LABELS:
        raise OpenVTPError(f"--labels must be one of {', '.join(LABELS)}, got {labels!r}")
    ds = _LabelledScenes(CaptionedScenes("train", image_size, num or None, seed), labels)
    return ds, len(SHAPES) * (len(COLOURS) if labels == "shape_colour" else 1)


def heldout_images(size: int, n: int, seed: int) -> torch.Tensor:
    """`n` held-out scenes (n, 3, size, size) in [0, 1]."""
    return stack_scenes(CaptionedScenes("heldout", size=size, length=n, seed=seed), n)["images"]
