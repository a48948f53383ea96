"""A labelled image set for `openvtp demo --data` and `openvtp study --data`, read once into train and held-out uint8
tensors at one square size, with class names, captions and a count of the images that could not be read.

`--data` forms: `sklearn-digits` (scikit-learn's bundled 8 x 8 handwritten digits, no download); a folder with
`train/` and `val/` folders of class folders (the ImageNet layout: held-out = val); a folder of class folders (a
seeded, per-class `heldout_fraction` is held out); webdataset shards (a `.tar`, a brace pattern or a folder of
`.tar` files; `key.jpg|jpeg|png|webp`, `key.cls` an integer class, optional `key.txt` caption), split like a folder
of class folders. Images are centre-cropped to the size (`openvtp.data.images.decode_image`); one that cannot be
decoded is left out and counted by reason. The train split is stored in a seeded random order: pre-training reads
a folder source in its file order, so that order makes its batches.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image

from openvtp.data.images import IMAGE_EXTENSIONS, decode_image, encode_image
from openvtp.errors import OpenVTPError

DIGITS = "sklearn-digits"
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# captions of data that has none, and the zero-shot prompts of every labelled set ("{}": the class name)
TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "a picture of the {}.", "an image of the {}.")
SIZE_SAMPLE = 1000  # headers read to find the data's size
TENSORS, META, CSV = "labelled.safetensors", "labelled.json", "train.csv"


@dataclass(frozen=True)
class LabelledRequest:
    """What the command line asked for; a prepared folder is reused only for the same request."""

    data: str
    size: int | None = None  # None: the data's own size, rounded to the patch (`labelled_settings.default_size`)
    heldout_fraction: float = 0.2
    split_seed: int = 0
    classnames: str | None = None  # a text file (one name a line) or a comma-separated list


@dataclass
class LabelledSet:
    request: LabelledRequest
    layout: str
    classnames: list[str]
    size: int
    native_size: int
    train_images: torch.Tensor  # (N, 3, S, S) uint8, in a seeded random order (the training order)
    train_labels: torch.Tensor  # (N,) long
    heldout_images: torch.Tensor  # in a seeded random order too: its first n are a random subset
    heldout_labels: torch.Tensor
    train_captions: list[str]
    captions: str  # "data" (the set's own .txt) or "templates" (class names in TEMPLATES)
    split: str
    skipped: dict[str, int] = field(default_factory=dict)
    digest: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def meta(self) -> dict:
        """What labelled.json, the summaries and study.json say about the data."""
        return {"request": asdict(self.request), "layout": self.layout, "classes": self.num_classes,
                "classnames": self.classnames, "size": self.size, "native_size": self.native_size,
                "train_images": len(self.train_labels), "heldout_images": len(self.heldout_labels),
                "split": self.split, "captions": self.captions, "caption_note": caption_note(self.captions),
                "templates": list(TEMPLATES), "skipped": dict(self.skipped),
                "skipped_total": sum(self.skipped.values()),
                "digest": self.digest}


def caption_note(captions: str) -> str:
    if captions == "data":
        return "captions: the data's own (.txt)"
    return "captions: the data has none; made from the class names with the templates " + \
        ", ".join(f"'{t.format('{name}')}'" for t in TEMPLATES) + " (one per image, in turn)"


@dataclass
class _Entry:
    """One image before decoding: how to read it, its class, its caption and split (None: split by the seed)."""

    read: Callable[[], bytes | str]
    label: int
    caption: str | None = None
    split: str | None = None


def _fail(request: LabelledRequest, message: str) -> OpenVTPError:
    return OpenVTPError(f"--data {request.data}: {message}")


def _class_dirs(root: Path) -> list[str]:
    return sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))


def _folder_entries(root: Path, classes: list[str], split: str | None) -> list[_Entry]:
    entries = []
    for label, name in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(root / name)):
            entries += [_Entry(lambda p=os.path.join(dirpath, f): p, label, None, split)
                        for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
    return entries


def _folders(request: LabelledRequest, root: Path) -> tuple[str, list[str], list[_Entry]]:
    if (root / "train").is_dir() and (root / "val").is_dir():
        classes = _class_dirs(root / "train")
        extra = sorted(set(_class_dirs(root / "val")) - set(classes))
        if extra:
            raise _fail(request, f"val/ has class folder '{extra[0]}' that train/ lacks")
        entries = _folder_entries(root / "train", classes, "train") + _folder_entries(root / "val", classes, "val")
        return "class folders, train/ and val/", classes, entries
    classes = _class_dirs(root)
    return "class folders", classes, _folder_entries(root, classes, None)


def _shards(request: LabelledRequest, urls: list[str]) -> tuple[str, list[str] | None, list[_Entry], Counter]:
    from openvtp.data.shards import IMAGE_KEYS, index_tars, read_member

    entries, skipped = [], Counter()
    for t, key, members in index_tars(urls, f"--data {request.data}"):
        ext = next((e for e in IMAGE_KEYS if e in members), None)
        if ext is None or "cls" not in members:
            skipped["missing_image" if ext is None else "missing_label"] += 1
            continue
        raw = read_member(urls[t], members["cls"]).decode("utf-8", "replace").strip()
        try:
            label = int(raw)
        except ValueError:
            skipped["bad_label"] += 1
            continue
        caption = read_member(urls[t], members["txt"]).decode("utf-8", "replace").strip() if "txt" in members else None
        entries.append(_Entry(lambda u=urls[t], w=members[ext]: read_member(u, w), label, caption or None))
    if not entries:
        raise _fail(request, "no sample with an image and a .cls label in the shards")
    return "webdataset shards", None, entries, skipped


def _shard_urls(data: str) -> list[str] | None:
    """The shard paths `data` names, or None when it does not name shards."""
    from openvtp.data.shards import expand_urls

    path = Path(data)
    if path.is_dir():
        tars = sorted(str(p) for p in path.glob("*.tar"))
        return tars or None
    return expand_urls(data) if ".tar" in path.name else None


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = torch.from_numpy(digits.images).mul(255 / 16).round().to(torch.uint8)  # 17 grey levels -> 0..255
    return grey[:, None].expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(digits.target).long()


def _names(request: LabelledRequest, found: list[str] | None, n: int) -> list[str]:
    spec = request.classnames
    if spec:
        names = Path(spec).read_text(encoding="utf-8").splitlines() if Path(spec).is_file() else spec.split(",")
        names = [x.strip() for x in names if x.strip()]
        if len(names) != n:
            raise OpenVTPError(f"--classnames gives {len(names)} names for the {n} classes of {request.data}")
        return names
    return [d.replace("_", " ") for d in found] if found else [f"class {k}" for k in range(n)]


def _size_of(read: Callable[[], bytes | str]) -> int | None:
    try:
        source = read()
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            return min(im.size)
    except Exception:  # unreadable: counted when decoded
        return None


def _split(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """A held-out mask: per class round(fraction * n) of its images, at random (seeded), never all of them."""
    gen = torch.Generator().manual_seed(seed)
    held = torch.zeros(len(labels), dtype=torch.bool)
    for c in labels.unique().tolist():
        members = torch.nonzero(labels == c)[:, 0]
        k = min(round(fraction * len(members)), len(members) - 1)
        held[members[torch.randperm(len(members), generator=gen)[:k]]] = True
    return held


def read_labelled(request: LabelledRequest, default_size: Callable[[int], int]) -> LabelledSet:
    """Decode `request.data` at `request.size` (or `default_size(its native size)`), split and order it."""
    path = Path(request.data)
    skipped: Counter = Counter()
    found_names: list[str] | None = None
    if request.data == DIGITS:
        images, labels = _digits()
        layout, native = "scikit-learn's bundled 8 x 8 handwritten digits", 8
        size = request.size or default_size(native)
        if size != native:
            images = torch.stack([decode_image(encode_image(im), size) for im in images])
        captions: list[str | None] = [None] * len(labels)
        fixed_split = None
        found_names = None
    else:
        urls = _shard_urls(request.data)
        if urls is not None:
            layout, found_names, entries, skipped = _shards(request, urls)
        elif path.is_dir():
            layout, found_names, entries = _folders(request, path)
            if len(found_names) < 2:
                raise _fail(request, f"{len(found_names)} class folder{'s' * (len(found_names) != 1)} "
                                     f"({', '.join(found_names) or 'none'}): a labelled set needs at least 2 classes")
        elif not path.exists() and ("/" in request.data or path.suffix):
            raise _fail(request, "no such folder or file")
        else:
            raise _fail(request, f"not a folder of class folders, webdataset shards or a known name ({DIGITS})")
        if not entries:
            raise _fail(request, "no image files in the class folders")
        pick = torch.randperm(len(entries), generator=torch.Generator().manual_seed(0))[:SIZE_SAMPLE].tolist()
        sides = [s for s in (_size_of(entries[i].read) for i in sorted(pick)) if s is not None]
        native = int(statistics.median_low(sides)) if sides else 0
        size = request.size or default_size(native)
        kept, decoded = [], []
        for entry in entries:
            try:
                decoded.append(decode_image(entry.read(), size))
                kept.append(entry)
            except Exception:  # PIL raises many types for corrupt data
                skipped["bad_image"] += 1
        if not kept:
            raise _fail(request, f"none of the {len(entries)} images could be decoded")
        images, labels = torch.stack(decoded), torch.tensor([e.label for e in kept])
        captions = [e.caption for e in kept]
        fixed_split = [e.split for e in kept] if kept[0].split is not None else None
    n_classes = int(labels.max()) + 1 if found_names is None else len(found_names)
    if request.data != DIGITS and found_names is None and len(labels.unique()) < 2:
        raise _fail(request, "one class in the .cls labels: a labelled set needs at least 2 classes")
    classnames = list(DIGIT_NAMES) if request.data == DIGITS and not request.classnames else \
        _names(request, found_names, n_classes)
    if fixed_split is not None:
        held = torch.tensor([s == "val" for s in fixed_split])
        split = "train/ for training, val/ held out"
    else:
        held = _split(labels, request.heldout_fraction, request.split_seed)
        split = f"{request.heldout_fraction:g} of each class held out at random (seed {request.split_seed})"
    if held.sum() < 2 or (~held).sum() < 2:
        raise _fail(request, f"the split ({split}) leaves {int((~held).sum())} train and {int(held.sum())} held-out "
                             "images; both need at least 2")
    own = all(c for c, h in zip(captions, held.tolist()) if not h)
    gen = torch.Generator().manual_seed(request.split_seed)
    order, held_order = (torch.nonzero(m)[:, 0] for m in (~held, held))
    order, held_order = (o[torch.randperm(len(o), generator=gen)] for o in (order, held_order))
    train_labels = labels[order]
    if own:
        train_captions = [captions[i] for i in order.tolist()]
    else:
        train_captions = [TEMPLATES[k % len(TEMPLATES)].format(classnames[c]) for k, c in
                          enumerate(train_labels.tolist())]
    out = LabelledSet(request, layout, classnames, size, native, images[order], train_labels, images[held_order],
                      labels[held_order], train_captions, "data" if own else "templates", split,
                      dict(sorted(skipped.items())))
    out.digest = _digest(out)
    return out


def _digest(s: LabelledSet) -> str:
    h = hashlib.sha256()
    for t in (s.train_images, s.train_labels, s.heldout_images, s.heldout_labels):
        h.update(t.contiguous().numpy().tobytes())
    h.update("\n".join([*s.classnames, *s.train_captions]).encode())
    return h.hexdigest()[:16]


def write_prepared(s: LabelledSet, folder: Path) -> None:
    """The set as pre-training and stage 2 read it (`train/NNNNNN.png` listed with captions and labels in train.csv,
    data.source=folder) and as the evaluations read it (labelled.safetensors); labelled.json last, so a folder with
    one is complete."""
    import csv

    from openvtp.runtime.files import write_safetensors

    (folder / "train").mkdir(parents=True, exist_ok=True)
    (folder / META).unlink(missing_ok=True)
    rows = []
    for i, (image, caption, label) in enumerate(zip(s.train_images, s.train_captions, s.train_labels.tolist())):
        name = f"train/{i:06d}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / name)
        rows.append((name, caption, label))
    with open(folder / CSV, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(("file", "caption", "label"))
        writer.writerows(rows)
    write_safetensors({"train_images": s.train_images, "train_labels": s.train_labels,
                       "heldout_images": s.heldout_images, "heldout_labels": s.heldout_labels}, folder / TENSORS)
    (folder / META).write_text(json.dumps({**s.meta(), "train_captions": s.train_captions}, indent=1))


def read_prepared(folder: Path, request: LabelledRequest | None = None) -> LabelledSet | None:
    """The set `write_prepared` left in `folder`; None if there is none (or one of another request)."""
    from safetensors.torch import load_file

    if not (folder / META).is_file():
        return None
    meta = json.loads((folder / META).read_text())
    if request is not None and meta["request"] != asdict(request):
        return None
    t = load_file(str(folder / TENSORS))
    return LabelledSet(LabelledRequest(**meta["request"]), meta["layout"], meta["classnames"], meta["size"],
                       meta["native_size"], t["train_images"], t["train_labels"], t["heldout_images"],
                       t["heldout_labels"], meta["train_captions"], meta["captions"], meta["split"], meta["skipped"],
                       meta["digest"])
