"""Webdataset tar shards in the DataComp/LAION layout: `key.jpg|jpeg|png|webp` + `key.txt`.

Shards are split by (rank, world_size) and DataLoader worker explicitly, so the split is
the same whatever torch.distributed state exists. When there are fewer shards than
(ranks x workers), every reader scans all shards and keeps every total-th sample instead, so
small shard sets still split disjointly and completely.

Bad samples never stop training. A corrupt image, a missing image, a missing, undecodable
or empty caption, or an unreadable shard is skipped and counted by reason:
- `ds.skipped` (a Counter) holds this process's totals since construction; readable after
  iterating in-process (num_workers=0).
- Each yielded sample carries `"skipped"`: how many samples its worker dropped since the
  previous sample it yielded. Summing `batch["skipped"]` over batches (and ranks) therefore
  gives the run's total with any number of workers; skips after a worker's last sample are
  only in its log line at the end of its pass.
"""
from __future__ import annotations

import itertools
import logging
import os
import random
import re
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from openvtp.data.images import RESIZE_MODES, decode_image, encode_image
from openvtp.errors import OpenVTPError

log = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
SKIP_REASONS = ("bad_image", "missing_image", "missing_caption", "bad_caption", "empty_caption", "shard_error")
_MAX_SKIP_WARNINGS = 5  # per worker and pass; the rest go to debug
_MAX_SKIPS_IN_A_ROW = 10_000  # an endless (resampled) stream of only bad samples is a user error


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def expand_urls(urls: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Expand brace patterns (`data/{000..009}.tar`), `::` lists and lists of either.

    Local paths must exist (OpenVTPError names the first missing one); URLs with a scheme
    (`pipe:`, `s3://`, ...) are passed to webdataset unchecked.
    """
    items = [urls] if isinstance(urls, (str, os.PathLike)) else list(urls)
    out: list[str] = []
    for item in items:
        out.extend(wds.shardlists.expand_urls(os.fspath(item)))
    if not out:
        raise OpenVTPError(f"shards: no shard paths in {urls!r}")
    for url in out:
        path = re.sub(r"^file://?", "", url)
        if _is_local(url) and not os.path.isfile(path):
            raise OpenVTPError(f"shards: shard not found: {path}")
    return out


class ShardDataset(IterableDataset):
    """Image-caption samples from webdataset shards, split over ranks and workers.

    Args:
        urls: brace pattern, `::`-joined patterns, or a list of paths/patterns.
        size: None keeps the decoded size; an int or (h, w) resizes with `resize`
            ("crop": shorter side then centre crop; "squash": ignore aspect) with `resampler`
            ("pil" or "torch", see `decode_image`).
        rank, world_size: this process's slice of the shards.
        shuffle_buffer: >0 shuffles shard order per epoch and samples through a buffer of
            this many (still encoded); 0 reads shards and samples in order.
        seed: seeds all shuffling (with the epoch, see `set_epoch`, and the reader id).
        resample: draw shards with replacement forever (each reader its own stream),
            as webdataset's ResampledShards; for step-based training.
    """

    def __init__(
        self,
        urls: str | os.PathLike | Sequence[str | os.PathLike],
        size: int | tuple[int, int] | None = None,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        resample: bool = False,
        resize: str = "crop",
        resampler: str = "pil",
    ):
        if not 0 <= rank < world_size:
            raise OpenVTPError(f"shards: need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
        if resize not in RESIZE_MODES:
            raise OpenVTPError(f"shards: resize must be one of {RESIZE_MODES}, got {resize!r}")
        if shuffle_buffer < 0 or seed < 0:
            raise OpenVTPError(f"shards: shuffle_buffer and seed must be >= 0, got {shuffle_buffer}, {seed}")
        self.urls = expand_urls(urls)
        self.size, self.resize, self.resampler = size, resize, resampler
        self.rank, self.world_size = rank, world_size
        self.shuffle_buffer, self.seed, self.resample = shuffle_buffer, seed, resample
        self.epoch = 0
        self.skipped: Counter[str] = Counter()

    def set_epoch(self, epoch: int) -> None:
        """Change the shuffle order; call before creating the epoch's DataLoader iterator."""
        self.epoch = int(epoch)

    def _reader(self) -> tuple[int, int]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.rank * nw + wid, self.world_size * nw

    def __iter__(self) -> Iterator[dict]:
        reader, readers = self._reader()
        counts: Counter[str] = Counter()
        pending = [0]  # skips since the last decoded sample

        def skip(reason: str, where: str) -> None:
            counts[reason] += 1
            self.skipped[reason] += 1
            pending[0] += 1
            if self.resample and pending[0] > _MAX_SKIPS_IN_A_ROW:
                raise OpenVTPError(f"shards: {pending[0]} samples in a row were unreadable, last {where}")
            level = logging.WARNING if sum(counts.values()) <= _MAX_SKIP_WARNINGS else logging.DEBUG
            log.log(level, "shards: skipped %s (%s)", where, reason)

        streak = [0]  # shards opened since one last gave a sample: resampling must not spin forever
        if self.resample:
            shards: Iterable[str] = self._resampled(_rng(self.seed, self.epoch, reader, 0), streak)
            stride = None
        else:
            order = list(self.urls)
            if self.shuffle_buffer > 0:  # same permutation in every reader, then sliced
                _rng(self.seed, self.epoch, 1).shuffle(order)
            if len(order) >= readers:
                shards, stride = order[reader::readers], None
            else:
                shards, stride = order, readers

        def on_shard_error(url: str, exn: Exception) -> None:
            if stride is None or reader == 0:  # sample-split readers all see the same shard error
                skip("shard_error", f"{url}: {type(exn).__name__}: {exn}")

        groups = (g for url in shards for g in _shard_groups(url, on_shard_error))

        def mine() -> Iterator[dict]:
            for k, group in enumerate(groups):
                streak[0] = 0
                if stride is None or k % stride == reader:
                    yield group

        # shuffle encoded bytes, decode after: a buffer of jpgs is far smaller than of pixels
        for group in _shuffled(mine(), self.shuffle_buffer, _rng(self.seed, self.epoch, reader, 2)):
            sample = self._decode(group, skip)
            if sample is not None:
                sample["skipped"], pending[0] = pending[0], 0
                yield sample
        if counts:
            log.info("shards: reader %d/%d skipped %s", reader, readers, dict(counts))

    def _resampled(self, rng: random.Random, streak: list[int]) -> Iterator[str]:
        limit = 2 * len(self.urls) + 10
        for _ in itertools.repeat(None):
            if streak[0] > limit:
                raise OpenVTPError(f"shards: {limit} shards in a row were unreadable, e.g. {self.urls[0]}")
            streak[0] += 1
            yield rng.choice(self.urls)

    def _decode(self, group: dict, skip) -> dict | None:
        key = group["__key__"]
        where = f"{group.get('__url__', '?')}:{key}"
        ext = next((e for e in IMAGE_KEYS if e in group), None)
        if ext is None:
            return skip("missing_image", where)
        if "txt" not in group:
            return skip("missing_caption", where)
        try:
            caption = group["txt"].decode("utf-8").strip()
        except UnicodeDecodeError:
            return skip("bad_caption", where)
        if not caption:
            return skip("empty_caption", where)
        try:
            image = decode_image(group[ext], self.size, self.resize, self.resampler)
        except Exception:  # PIL raises many types for corrupt data
            return skip("bad_image", where)
        return {"image": image, "caption": caption, "key": key}


def _shard_groups(url: str, on_error) -> Iterator[dict]:
    """Files of one shard grouped by key ({"__key__", "__url__", ext: bytes}), webdataset's
    naming (key = path up to the first dot of the file name). A read error ends the shard
    and is reported once through on_error(url, exc)."""
    try:
        with wds.gopen(url, "rb") as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            group: dict | None = None
            for info in tar:
                if not info.isreg():
                    continue
                key, ext = wds.tariterators.base_plus_ext(info.name)
                if key is None or os.path.basename(key).startswith("__"):
                    continue  # no extension, or webdataset metadata
                if group is None or key != group["__key__"]:
                    if group is not None:
                        yield group
                    group = {"__key__": key, "__url__": url}
                group[ext.lower()] = tar.extractfile(info).read()
            if group is not None:
                yield group
    except Exception as exn:  # truncated or corrupt tar, unreadable file
        on_error(url, exn)


def _rng(*ints: int) -> random.Random:
    """A Python RNG seeded from integers, stable across processes (unlike hash() of str)."""
    return random.Random(int(np.random.SeedSequence(list(ints)).generate_state(1)[0]))


def _shuffled(samples: Iterator[dict], bufsize: int, rng: random.Random) -> Iterator[dict]:
    if bufsize <= 1:
        yield from samples
        return
    buf: list[dict] = []
    for s in samples:
        if len(buf) < bufsize:
            buf.append(s)
            continue
        j = rng.randrange(len(buf))
        buf[j], s = s, buf[j]
        yield s
    rng.shuffle(buf)
    yield from buf


def write_shards(
    samples: Iterable[dict],
    pattern: str | os.PathLike,
    maxcount: int = 1000,
    image_format: str = "png",
) -> list[str]:
    """Write samples as webdataset shards; returns the shard paths in order.

    `pattern` is printf-style, e.g. "out/shard-%06d.tar". Each sample needs "image" (a
    (3, H, W) uint8 tensor, (H, W, 3) uint8 array, PIL image, or already-encoded bytes, which
    are written unchanged) and "caption" (None omits the .txt); optional "key" (default: the
    running index) and "ext" (default `image_format`).
    """
    pattern = os.fspath(pattern)
    if "%" not in pattern:
        raise OpenVTPError(f"shards: pattern needs a printf field such as %06d, got {pattern!r}")
    if maxcount <= 0:
        raise OpenVTPError(f"shards: maxcount must be positive, got {maxcount}")
    os.makedirs(os.path.dirname(pattern) or ".", exist_ok=True)
    writer = wds.ShardWriter(pattern, maxcount=maxcount, verbose=0)
    try:
        for i, sample in enumerate(samples):
            key = str(sample.get("key", f"{i:09d}")).replace(".", "_").replace("/", "_")
            ext = sample.get("ext", image_format)
            image = sample["image"]
            record = {"__key__": key, ext: image if isinstance(image, bytes) else encode_image(image, ext)}
            if sample.get("caption") is not None:
                record["txt"] = str(sample["caption"])
            writer.write(record)
        n_shards = writer.shard
    finally:
        writer.close()
    return [pattern % i for i in range(n_shards)]


def skipped_total(batch: dict) -> int:
    """Samples dropped before those in `batch` (sum of its "skipped" entries)."""
    s = batch.get("skipped", 0)
    return int(s.sum()) if isinstance(s, torch.Tensor) else int(np.sum(s))


def index_tars(urls: list[str], use: str) -> list[tuple[int, str, dict[str, tuple[int, int]]]]:
    """(tar position, key, {ext: (offset, size)}) of every sample of local uncompressed tars, in tar order: random
    access by seeking, for the commands that need it (latent extraction, evaluation). `use` names the command in
    errors."""
    samples = []
    for t, url in enumerate(urls):
        if not _is_local(url):
            raise OpenVTPError(f"{use} reads local .tar files only, not {url}")
        groups: dict[str, dict[str, tuple[int, int]]] = {}
        try:
            with tarfile.open(url, "r:") as tar:  # plain tar: members are seekable
                for info in tar:
                    key, ext = wds.tariterators.base_plus_ext(info.name) if info.isreg() else (None, None)
                    if key is not None and not os.path.basename(key).startswith("__"):
                        groups.setdefault(key, {})[ext.lower()] = (info.offset_data, info.size)
        except (tarfile.TarError, OSError) as e:
            raise OpenVTPError(f"{use}: cannot index {url} (it needs uncompressed tars): {e}") from None
        samples += [(t, key, members) for key, members in groups.items()]
    return samples


def read_member(url: str, where: tuple[int, int]) -> bytes:
    """The bytes of one tar member at (offset, size)."""
    with open(url, "rb") as f:
        f.seek(where[0])
        return f.read(where[1])
