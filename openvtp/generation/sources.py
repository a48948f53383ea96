"""Map-style image datasets for latent extraction: embedded scenes, image folders, webdataset shards.

Extraction needs random access (fixed-size output shards, resume by shard, torchrun split by
shard index), so webdataset tars are indexed once (member offsets) and read by seeking, rather
than streamed as `openvtp.data.shards` does for training. Sample keys, image extensions and
decoding follow `openvtp.data`: `key.jpg|jpeg|png|webp`, optional `key.txt` caption and
`key.cls` integer class (the ImageNet webdataset convention).
"""
from __future__ import annotations

import os
from pathlib import Path

from torch.utils.data import Dataset

from openvtp.data.images import decode_image
from openvtp.data.registry import provider
from openvtp.data.shards import IMAGE_KEYS, expand_urls, index_tars
from openvtp.errors import OpenVTPError

class IndexedTars(Dataset):
    """Samples of local webdataset tars, by position: {"image": uint8 (3, H, W), "caption"?, "label"?}.

    Samples without an image are left out (counted in `.skipped`); `.cls` must hold an integer.
    """

    def __init__(self, urls: str | list[str]):
        self.urls = expand_urls(urls)
        indexed = index_tars(self.urls, "extraction")
        self.samples = [(t, members) for t, _, members in indexed if any(e in members for e in IMAGE_KEYS)]
        self.skipped = len(indexed) - len(self.samples)
        if not self.samples:
            raise OpenVTPError(f"no images in the shards {urls!r}")
        self._files: dict[int, object] = {}
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def _read(self, t: int, where: tuple[int, int]) -> bytes:
        if self._pid != os.getpid():  # a forked loader worker opens its own handles
            self._files, self._pid = {}, os.getpid()
        if t not in self._files:
            self._files[t] = open(self.urls[t], "rb")
        f = self._files[t]
        f.seek(where[0])
        return f.read(where[1])

    def __getitem__(self, index: int) -> dict:
        t, members = self.samples[index]
        ext = next(e for e in IMAGE_KEYS if e in members)
        where = f"{self.urls[t]} sample {index}"
        try:
            item: dict = {"image": decode_image(self._read(t, members[ext]))}
        except OpenVTPError:
            raise
        except Exception as e:  # PIL raises many types for corrupt data
            raise OpenVTPError(f"cannot decode the image of {where}: {e.__class__.__name__}") from None
        if "txt" in members:
            item["caption"] = self._read(t, members["txt"]).decode("utf-8", "replace").strip()
        if "cls" in members:
            raw = self._read(t, members["cls"]).decode("utf-8", "replace").strip()
            try:
                item["label"] = int(raw)
            except ValueError:
                raise OpenVTPError(f"{where}: .cls holds {raw!r}, not an integer class") from None
        return item


def open_source(data: str, image_size: int, num: int | None = None, seed: int = 0, labels: str = "shape"
                ) -> tuple[Dataset, int | None]:
    """(dataset, number of classes or None) for `data`:

    - "embedded": the procedural train scenes at `image_size` (num of them, default 50k); labels
      "shape" (7 classes) or "shape_colour" (shape * 7 + colour, 49 classes, 39 of them occur);
    - a folder with class sub-folders (label = sorted folder index);
    - a .csv / .jsonl caption file (see `openvtp.data.folders.CaptionFolder`), optional label column;
    - webdataset tars: a .tar path or brace pattern (`data/{000..099}.tar`), optional `.cls` labels.
    `num` keeps the first num items.
    """
    classes: int | None
    if data == "embedded":
        return provider("embedded").latent_source(image_size, num, seed, labels)
    path = Path(data)
    if ".tar" in path.name:
        ds, classes = IndexedTars(data), None
    elif path.is_dir():
        from openvtp.data.folders import ClassFolder

        folder = ClassFolder(path, size=None, verify=False)
        ds, classes = folder, len(folder.classes)
    elif path.suffix.lower() in (".csv", ".jsonl", ".json"):
        from openvtp.data.folders import CaptionFolder

        ds, classes = CaptionFolder(path, size=None, verify=False), None
    elif not path.exists():
        raise OpenVTPError(f"--data {data}: no such file or folder (or use 'embedded')")
    else:
        raise OpenVTPError(f"--data {data}: expected 'embedded', a class folder, a .csv/.jsonl caption file "
                           "or .tar shards")
    if num:
        from torch.utils.data import Subset

        ds = Subset(ds, range(min(num, len(ds))))
    return ds, classes
