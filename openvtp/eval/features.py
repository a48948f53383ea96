"""A resumable on-disk cache of extracted features: one safetensors file per chunk of samples.

Extracting ImageNet-train features takes hours; a killed run restarts where it stopped because finished chunks are
skipped. `meta.json` records what the features are (checkpoint, split, layer, ...), so a cache made from another
model is never silently mixed in.

Layout: <path>/meta.json, <path>/chunk_00000.safetensors, ... each chunk holding the named feature tensors (the same
names in every chunk, e.g. {"cls": (n, D), "patch_mean": (n, D)}) and `labels` (n,). An interrupted pass leaves
`partial_XXXXX.safetensors`: the part of chunk XXXXX it computed, continued by the next run.
"""

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tqdm import tqdm

from openvtp.errors import OpenVTPError
from openvtp.runtime.files import TEMP_MARK, write_safetensors

LABELS = "labels"


class FeatureCache:
    """Chunked features + labels under a folder; `fill` computes only missing chunks, `load` concatenates them."""

    def __init__(self, path: str | Path, meta: dict | None = None):
        """meta: JSON-able description of the features; must equal the one stored if the cache already exists."""
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        if meta_file.is_file():
            stored = json.loads(meta_file.read_text())
            if meta is not None and stored != json.loads(json.dumps(meta)):
                raise OpenVTPError(
                    f"feature cache {self.path} was made for {stored}, not {meta}; delete it or choose another path"
                )
            self.meta = stored
        else:
            self.meta = meta or {}
            self.path.mkdir(parents=True, exist_ok=True)
            meta_file.write_text(json.dumps(self.meta, indent=1, sort_keys=True))

    def chunk_path(self, index: int) -> Path:
        return self.path / f"chunk_{index:05d}.safetensors"

    def has_chunk(self, index: int) -> bool:
        return self.chunk_path(index).is_file()

    def write_chunk(self, index: int, features: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
        """Store one chunk atomically (temp file, then rename): a killed write leaves no half chunk behind."""
        if LABELS in features:
            raise OpenVTPError(f"feature name {LABELS!r} is reserved for the labels")
        n = {len(labels), *(len(v) for v in features.values())}
        assert len(n) == 1, f"chunk {index}: features and labels have different lengths {n}"
        tensors = {k: v.detach().cpu().contiguous() for k, v in features.items()}
        tensors[LABELS] = labels.detach().cpu().long().contiguous()
        tmp = self.path / f".{self.chunk_path(index).name}{TEMP_MARK}{os.getpid()}"
        write_safetensors(tensors, tmp)
        os.replace(tmp, self.chunk_path(index))
        self.partial_path(index).unlink(missing_ok=True)

    def partial_path(self, index: int) -> Path:
        return self.path / f"partial_{index:05d}.safetensors"

    def write_partial(self, index: int, features: dict[str, torch.Tensor], labels: torch.Tensor, next_pos: int) -> None:
        """What an interrupted pass computed of chunk `index`, up to (not including) sample `next_pos`."""
        tensors = {k: v.detach().cpu().contiguous() for k, v in features.items()}
        tensors[LABELS] = labels.detach().cpu().long().contiguous()
        tmp = self.path / f".{self.partial_path(index).name}{TEMP_MARK}{os.getpid()}"
        write_safetensors(tensors, tmp, metadata={"next": str(next_pos)})
        os.replace(tmp, self.partial_path(index))

    def read_partial(self, index: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, int] | None:
        """(features, labels, next sample) of an interrupted chunk, or None."""
        path = self.partial_path(index)
        if not path.is_file():
            return None
        with safe_open(str(path), "pt") as f:
            next_pos = int(f.metadata()["next"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        labels = tensors.pop(LABELS)
        return tensors, labels, next_pos

    def fill(
        self,
        num_chunks: int,
        compute: Callable[[int], tuple[dict[str, torch.Tensor], torch.Tensor]],
        progress: bool = True,
    ) -> None:
        """Run `compute(i) -> (features, labels)` for every chunk i < num_chunks not yet on disk."""
        missing = [i for i in range(num_chunks) if not self.has_chunk(i)]
        for i in tqdm(missing, desc=f"features {self.path.name}", disable=not progress):
            self.write_chunk(i, *compute(i))

    def load(self, num_chunks: int | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """All chunks concatenated in index order -> ({name: (N, ...)}, labels (N,)).

        num_chunks: how many chunks must be there (an incomplete cache is an error); default: all present.
        """
        if num_chunks is None:
            num_chunks = len(list(self.path.glob("chunk_*.safetensors")))
        missing = [i for i in range(num_chunks) if not self.has_chunk(i)]
        if num_chunks == 0 or missing:
            raise OpenVTPError(
                f"feature cache {self.path} is incomplete: {len(missing) or 'all'} of {num_chunks or '?'} chunks "
                f"missing (first: {self.chunk_path(missing[0] if missing else 0).name}); run the extraction again"
            )
        chunks = [load_file(str(self.chunk_path(i))) for i in range(num_chunks)]
        names = chunks[0].keys()
        if any(c.keys() != names for c in chunks):
            raise OpenVTPError(f"feature cache {self.path}: chunks hold different feature names")
        out = {k: torch.cat([c[k] for c in chunks]) for k in names}
        labels = out.pop(LABELS)
        return out, labels
