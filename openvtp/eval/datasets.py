"""What `openvtp eval --data` evaluates on: labelled and captioned image sets with a test split and, for the probes,
a train split.

`--data` forms (`open_data` decides which by looking at the path):
- `embedded`: the procedural scenes. Test = held-out scenes of the (shape, colour) pairs never seen in training;
  train (probes, kNN) = train-split scenes. Label sets `shape` and `colour`, each with its zero-shot class names and
  prompt templates; one caption per image for retrieval. Scenes are rendered at the evaluation resolution.
- a folder with `train/` and `val/` (or `test/`) class sub-folders (ImageNet layout): test = val, train = train.
  Synset folder names (n01440764, ...) map to OpenCLIP's ImageNet class names; other folder names are the class
  names (underscores as spaces). Templates: the 80 OpenAI ImageNet ones.
- a folder of class sub-folders: a labelled test set (`--train-data` adds a train split for the probes).
- a folder of images without sub-folders: unlabelled (reconstruction only).
- a `.csv` (`file,caption[,label]`) or `.jsonl` caption file: a captioned test set; rows naming the same file are one
  image with several captions (COCO style).
- webdataset shards (`.tar` path, brace pattern or `::` list; `key.jpg|png|webp` + `key.txt`, optional `key.cls`):
  a captioned test set read by random access into the (uncompressed, local) tars.

Images are read lazily; one that cannot be read is skipped by the reader and counted in the results.
`--limit N` keeps a fixed random subset (seed 0) of N images per split, in the original order.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from openvtp.data.registry import provider
from openvtp.errors import OpenVTPError

from .options import DEFAULT_PREPROCESS, PREPROCESS_METHODS, check_data_spec, is_shards
from .preprocess import adm_center_crop, resize_center_crop, squash_resize

READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_SYNSET = re.compile(r"^n\d{8}$")


@dataclass
class LabelSet:
    """Integer labels of one attribute (ImageNet class, scene shape, ...) and, for zero-shot, names and templates."""

    name: str
    labels: torch.Tensor  # (N,) long, one per image of the set
    classnames: list[str] | None = None
    templates: list[str] | None = None
    names_source: str = ""  # where names and templates come from, for the protocol
    templates_source: str = ""


@dataclass
class EvalSet:
    """One split: keys that `read` turns into an image (PIL or uint8 (3, H, W)), label sets and captions."""

    name: str
    split: str
    keys: list
    read: Callable[[object], Image.Image | torch.Tensor]
    labelsets: dict[str, LabelSet] = field(default_factory=dict)
    captions: list[list[str]] | None = None
    fingerprint: str = ""
    class_dirs: list[str] | None = None  # class folders, compared between splits
    unusable: int = 0  # samples of the source dropped when indexing (no image or no caption)

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, limit: int | None, seed: int = 0) -> EvalSet:
        """A fixed random subset of `limit` images in the original order (all of them when limit is None or larger)."""
        if limit is None or limit >= len(self):
            return self
        if limit <= 0:
            raise OpenVTPError(f"--limit must be positive, got {limit}")
        keep = np.sort(np.random.default_rng(seed).choice(len(self), size=limit, replace=False))
        idx = torch.from_numpy(keep)
        return replace(
            self,
            keys=[self.keys[i] for i in keep],
            labelsets={k: replace(ls, labels=ls.labels[idx]) for k, ls in self.labelsets.items()},
            captions=[self.captions[i] for i in keep] if self.captions is not None else None,
            fingerprint=digest(self.fingerprint, f"subset {limit} seed {seed}"),
        )

    def where(self, pos: int) -> str:
        key = self.keys[pos]
        return f"{key[0]}:{key[1]}" if isinstance(key, tuple) else str(key)  # shards: tar and sample key

    def pil(self, pos: int) -> Image.Image:
        """Image `pos` as a PIL image; raises one of READ_ERRORS when it cannot be read."""
        img = self.read(self.keys[pos])
        return Image.fromarray(np.ascontiguousarray(img.permute(1, 2, 0).numpy())) if isinstance(img, torch.Tensor) \
            else img

    def load(self, pos: int, size: int, method: str, crop_pct: float = 0.875) -> torch.Tensor:
        """Image `pos` preprocessed to uint8 (3, size, size); raises one of READ_ERRORS when it cannot be read."""
        if method == "none":
            img = self.read(self.keys[pos])
            if not isinstance(img, torch.Tensor):
                img = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)
            t = img
            if tuple(t.shape[-2:]) != (size, size):
                raise OpenVTPError(f"{self.where(pos)} is {t.shape[-2]}x{t.shape[-1]}; preprocessing 'none' needs "
                                   f"{size}x{size} images (choose adm, squash or crop)")
            return t.contiguous()
        pil = self.pil(pos)
        if method == "adm":
            return adm_center_crop(pil, size)
        if method == "squash":
            return squash_resize(pil, size)
        if method == "squash-bilinear":
            return squash_resize(pil, size, Image.BILINEAR)
        if method == "crop":
            return resize_center_crop(pil, size, crop_pct)
        raise OpenVTPError(f"unknown preprocessing {method!r}; choose from {', '.join(PREPROCESS_METHODS)}")


@dataclass
class EvalData:
    """The evaluated data: a test split, an optional train split (probes, kNN) and how it was found."""

    name: str
    kind: str
    test: EvalSet
    train: EvalSet | None = None
    default_preprocess: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_PREPROCESS))

    def describe(self) -> dict:
        out = {"name": self.name, "kind": self.kind, "test": {"split": self.test.split, "images": len(self.test)}}
        if self.train is not None:
            out["train"] = {"split": self.train.split, "images": len(self.train)}
        return out


def digest(*parts: object) -> str:
    return hashlib.sha1("\n".join(map(str, parts)).encode()).hexdigest()[:16]


def read_file(path: str | os.PathLike) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def read_lines_file(path: str | os.PathLike, what: str) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise OpenVTPError(f"{what} file not found: {path}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise OpenVTPError(f"{what} file {path} is empty")
    return lines


# ---------------------------------------------------------------------------- folders


def imagenet_synsets() -> list[str] | None:
    """The 1000 ImageNet-1k synsets in class-index order (from timm, installed with open_clip), or None."""
    try:
        from timm.data import ImageNetInfo

        return list(ImageNetInfo().label_names())
    except Exception:  # timm missing or changed: folder names are used instead
        return None


def class_names_for(dirs: Sequence[str]) -> tuple[list[str], str]:
    """OpenCLIP ImageNet names for synset folders, else the folder names with underscores as spaces."""
    from .zero_shot import imagenet_classnames

    if dirs and all(_SYNSET.match(d) for d in dirs):
        synsets = imagenet_synsets()
        names = imagenet_classnames()
        if synsets is not None and all(d in synsets for d in dirs):
            index = {s: i for i, s in enumerate(synsets)}
            return [names[index[d]] for d in dirs], "OpenCLIP ImageNet class names (synset folders)"
        if synsets is None and len(dirs) == 1000:
            return names, "OpenCLIP ImageNet class names (1000 synset folders, sorted)"
    return [d.replace("_", " ") for d in dirs], "folder names"


def _class_folder(root: Path, split: str) -> EvalSet:
    from openvtp.data.folders import ClassFolder

    folder = ClassFolder(root, verify=False)  # unreadable files are skipped and counted when read
    paths = [p for p, _, _, _ in folder.items]
    labels = torch.tensor([label for _, _, label, _ in folder.items])
    names, source = class_names_for(folder.class_dirs)
    from .zero_shot import imagenet_templates

    ls = LabelSet("class", labels, names, imagenet_templates(), source, "80 OpenAI ImageNet templates")
    return EvalSet(str(root), split, paths, read_file, {"class": ls}, None, digest("classfolder", root, *paths),
                   class_dirs=list(folder.class_dirs))


def _has_subdirs(root: Path) -> bool:
    return any(d.is_dir() and not d.name.startswith(".") for d in root.iterdir())


def _image_folder(root: Path) -> EvalSet:
    paths = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in _IMAGE_EXTS)
    if not paths:
        raise OpenVTPError(f"no images ({', '.join(_IMAGE_EXTS)}) in {root}")
    return EvalSet(str(root), "all", paths, read_file, {}, None, digest("imagefolder", root, *paths))


def _folder_data(root: Path) -> EvalData:
    test_dir = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        test, train = _class_folder(test_dir, test_dir.name), _class_folder(root / "train", "train")
        if test.class_dirs != train.class_dirs:
            only = sorted(set(test.class_dirs) ^ set(train.class_dirs))[:3]
            raise OpenVTPError(f"{root}: train/ and {test_dir.name}/ have different class folders (e.g. {only}); "
                               "the probes need the same classes in both")
        return EvalData(str(root), "imagenet-style class folders", test, train)
    if any(p.suffix.lower() in _IMAGE_EXTS for p in root.iterdir() if p.is_file()) or not _has_subdirs(root):
        return EvalData(str(root), "image folder (unlabelled)", _image_folder(root))
    return EvalData(str(root), "class folders", _class_folder(root, "test"))


# ---------------------------------------------------------------------------- captions


def _caption_file(path: Path) -> EvalSet:
    from openvtp.data.folders import CaptionFolder

    folder = CaptionFolder(path, verify=False)
    order: dict[str, int] = {}
    captions: list[list[str]] = []
    labels: list[int | None] = []
    for file, caption, label, _ in folder.items:
        if file not in order:
            order[file] = len(captions)
            captions.append([])
            labels.append(label)
        captions[order[file]].append(caption)
    labelsets = {}
    if all(label is not None for label in labels):
        labelsets["label"] = LabelSet("label", torch.tensor(labels))
    return EvalSet(str(path), "test", list(order), read_file, labelsets, captions,
                   digest("captions", path, path.stat().st_mtime_ns, len(order)))


def _index_shards(spec: str) -> EvalSet:
    """Local uncompressed webdataset tars, indexed: per sample the image's (tar, offset, size), caption, optional
    class; samples without an image or a caption are counted as unusable."""
    from openvtp.data.shards import IMAGE_KEYS, expand_urls, index_tars, read_member

    urls = expand_urls(spec)
    keys, captions, classes, skipped = [], [], [], 0
    for t, key, members in index_tars(urls, "evaluation"):
        image = next((members[e] for e in IMAGE_KEYS if e in members), None)
        text = {e: read_member(urls[t], members[e]).decode("utf-8", "replace").strip()
                for e in ("txt", "cls") if e in members}
        if image is None or not text.get("txt"):
            skipped += 1
            continue
        keys.append((urls[t], key, *image))
        captions.append([text["txt"]])
        classes.append(text.get("cls"))
    if not keys:
        raise OpenVTPError(f"shards: no samples with an image and a caption in {spec}")
    labelsets = {}
    if all(c is not None and c.lstrip("-").isdigit() for c in classes):
        labelsets["label"] = LabelSet("label", torch.tensor([int(c) for c in classes]))
    stamp = [f"{u}:{os.path.getsize(u)}:{os.path.getmtime(u)}" for u in urls]
    return EvalSet(spec, "test", keys, _read_shard_image, labelsets, captions, digest("shards", *stamp),
                   unusable=skipped)


def _read_shard_image(key: tuple) -> Image.Image:
    from openvtp.data.shards import read_member

    url, _, offset, size = key
    return read_file(io.BytesIO(read_member(url, (offset, size))))


# ---------------------------------------------------------------------------- entry point


def open_data(
    spec: str,
    size: int,
    train_spec: str | None = None,
    limit: int | None = None,
    train_limit: int | None = None,
    classnames: str | None = None,
    templates: str | None = None,
    seed: int = 0,
) -> EvalData:
    """Turn `--data` (and `--train-data`, `--classnames`, `--templates`) into an EvalData.

    Args:
        size: resolution the embedded scenes are rendered at (file data is resized by the task's preprocessing).
        limit / train_limit: images kept per split (train_limit defaults to limit).
        classnames / templates: files with one class name (in label order) / one "{}" template per line.
    """
    check_data_spec(spec, train_spec, classnames)
    train_limit = limit if train_limit is None else train_limit
    if spec == "embedded":
        data = provider("embedded").eval_data(size, limit, train_limit, seed)
    else:
        path = Path(spec)
        if path.is_dir():
            data = _folder_data(path)
        elif is_shards(spec):
            data = EvalData(spec, "webdataset shards", _index_shards(spec))
        else:
            data = EvalData(str(path), "captioned images", _caption_file(path))
        if train_spec:
            if data.train is not None:
                raise OpenVTPError(f"--data {spec} already has a train split; drop --train-data")
            data.train = _class_folder(Path(train_spec), "train")
            if data.test.class_dirs is not None and data.test.class_dirs != data.train.class_dirs:
                raise OpenVTPError(f"--train-data {train_spec} and --data {spec} have different class folders")
        data.test = data.test.subset(limit, seed)
        if data.train is not None:
            data.train = data.train.subset(train_limit, seed)
    _apply_names(data, classnames, templates)
    return data


def _apply_names(data: EvalData, classnames: str | None, templates: str | None) -> None:
    names = read_lines_file(classnames, "--classnames") if classnames else None
    temps = read_lines_file(templates, "--templates") if templates else None
    if temps:
        bad = [t for t in temps if t.count("{}") != 1]
        if bad:
            raise OpenVTPError(f"--templates {templates}: each line needs exactly one '{{}}', not {bad[0]!r}")
    for es in (data.test, data.train):
        if es is None:
            continue
        for ls in es.labelsets.values():
            if names is not None:
                if int(ls.labels.max()) >= len(names):
                    raise OpenVTPError(f"--classnames {classnames} has {len(names)} names but labels go up to "
                                       f"{int(ls.labels.max())}")
                ls.classnames, ls.names_source = names, f"class names from {classnames}"
                if ls.templates is None:
                    from .zero_shot import imagenet_templates

                    ls.templates, ls.templates_source = imagenet_templates(), "80 OpenAI ImageNet templates"
            if temps is not None:
                ls.templates, ls.templates_source = temps, f"{len(temps)} templates from {templates}"
