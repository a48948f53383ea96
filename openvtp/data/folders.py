"""Image folder datasets: captions from a CSV/JSONL file, or class names from sub-folders.

Unreadable images are handled in two places. At construction, files that are missing or
whose header PIL cannot identify are dropped and counted in `.skipped` (by reason), so
`len()` counts only usable files. A file that passes that check but still fails to decode
(truncated data) is replaced at load time by the next readable item, deterministically, and
counted in `.load_failures` (per process).
"""
from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence

from PIL import Image
from torch.utils.data import Dataset

from openvtp.data.images import IMAGE_EXTENSIONS, RESIZE_MODES, decode_image
from openvtp.errors import OpenVTPError

log = logging.getLogger(__name__)


def _readable(path: str) -> str | None:
    """None if PIL can identify the file, else the skip reason."""
    if not os.path.isfile(path):
        return "missing_file"
    try:
        with Image.open(path) as im:
            im.size
    except Exception:
        return "bad_image"
    return None


class _FileImages(Dataset):
    """Shared loading for datasets backed by a list of (path, caption, label, key)."""

    def __init__(self, size: int | tuple[int, int] | None, resize: str, resampler: str = "pil"):
        if resize not in RESIZE_MODES:
            raise OpenVTPError(f"folders: resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.size, self.resize, self.resampler = size, resize, resampler
        self.items: list[tuple[str, str, int | None, str]] = []
        self.skipped: Counter[str] = Counter()
        self.load_failures = 0

    def _keep(self, path: str, caption: str, label: int | None, key: str, verify: bool) -> None:
        reason = "empty_caption" if not caption.strip() else (_readable(path) if verify else None)
        if reason is None:
            self.items.append((path, caption.strip(), label, key))
            return
        self.skipped[reason] += 1
        log.warning("folders: skipped %s (%s)", path, reason)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        n = len(self.items)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        for k in range(n):
            path, caption, label, key = self.items[(index + k) % n]
            try:
                image = decode_image(path, self.size, self.resize, self.resampler)
            except Exception as exc:  # truncated or otherwise undecodable: take the next one
                self.load_failures += 1
                log.warning("folders: cannot decode %s (%s), using the next image", path, exc)
                continue
            item = {"image": image, "caption": caption, "key": key}
            if label is not None:
                item["label"] = label
            return item
        raise OpenVTPError(f"folders: none of the {n} images could be decoded")


class CaptionFolder(_FileImages):
    """Images with captions listed in a CSV (`file,caption` columns) or JSONL file.

    Args:
        annotations: .csv, or .jsonl/.json with one {"file": ..., "caption": ...} per line.
            An optional integer "label" column/field is passed through.
        root: folder that relative `file` paths are under; default: the annotation file's folder.
        size, resize, resampler: as `decode_image` (None keeps each image's size).
        verify: open every header at construction to drop unreadable files early.
    """

    def __init__(
        self,
        annotations: str | os.PathLike,
        root: str | os.PathLike | None = None,
        size: int | tuple[int, int] | None = None,
        resize: str = "crop",
        verify: bool = True,
        resampler: str = "pil",
    ):
        super().__init__(size, resize, resampler)
        annotations = os.fspath(annotations)
        if not os.path.isfile(annotations):
            raise OpenVTPError(f"folders: annotation file not found: {annotations}")
        root = os.path.dirname(os.path.abspath(annotations)) if root is None else os.fspath(root)
        if not os.path.isdir(root):
            raise OpenVTPError(f"folders: image root is not a directory: {root}")
        self.root = root
        for rel, caption, label in _read_annotations(annotations):
            self._keep(os.path.join(root, rel), caption, label, rel, verify)
        if not self.items:
            raise OpenVTPError(f"folders: no readable images listed in {annotations}")


def _read_annotations(path: str) -> list[tuple[str, str, int | None]]:
    ext = os.path.splitext(path)[1].lower()
    rows: list[dict] = []
    if ext == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"file", "caption"} - set(reader.fieldnames or [])
            if missing:
                raise OpenVTPError(f"folders: {path} lacks column(s) {sorted(missing)}; has {reader.fieldnames}")
            rows = [dict(r, _line=i + 2) for i, r in enumerate(reader)]
    elif ext in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise OpenVTPError(f"folders: {path}:{i} is not valid JSON ({exc.msg})") from None
                if not isinstance(row, dict) or "file" not in row:
                    raise OpenVTPError(f"folders: {path}:{i} needs an object with a 'file' field")
                rows.append(dict(row, _line=i))
    else:
        raise OpenVTPError(f"folders: annotations must be .csv or .jsonl, got {path}")
    out = []
    for r in rows:
        label = r.get("label")
        if label not in (None, ""):
            try:
                label = int(label)
            except (TypeError, ValueError):
                raise OpenVTPError(f"folders: {path}:{r['_line']} label {label!r} is not an integer") from None
        else:
            label = None
        out.append((str(r["file"]), str(r.get("caption") or ""), label))
    return out


class ClassFolder(_FileImages):
    """`root/<class>/**/<image>`: caption = class name with underscores as spaces, label = class index.

    Classes are the sorted sub-folder names; `.classes` holds their caption form (for zero-shot
    prompts), `.class_dirs` the folder names. Files without an image extension are ignored.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        size: int | tuple[int, int] | None = None,
        resize: str = "crop",
        verify: bool = True,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        resampler: str = "pil",
    ):
        super().__init__(size, resize, resampler)
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise OpenVTPError(f"folders: class folder root is not a directory: {root}")
        self.root = root
        self.class_dirs = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
        if not self.class_dirs:
            raise OpenVTPError(f"folders: no class sub-folders in {root}")
        self.classes = [d.replace("_", " ") for d in self.class_dirs]
        exts = tuple(e.lower() for e in extensions)
        for label, d in enumerate(self.class_dirs):
            for dirpath, _, filenames in sorted(os.walk(os.path.join(root, d))):
                for name in sorted(filenames):
                    if name.lower().endswith(exts):
                        path = os.path.join(dirpath, name)
                        self._keep(path, self.classes[label], label, os.path.relpath(path, root), verify)
        if not self.items:
            raise OpenVTPError(f"folders: no readable images under {root}")
