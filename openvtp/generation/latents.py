"""Latent extraction for the generator, per-channel latent statistics, and the latent dataset.

Layout of a latents directory (the LightningDiT / VTP layout, with fixed-size shards):

    latents_00000.safetensors   latents (n, C, h, w) f32, latents_flip (n, C, h, w) f32, labels (n,) i64,
                                indices (n,) i64 (dataset positions)
    captions_00000.json         the shard's captions (only when the data has captions)
    index.json                  number of images, shard size, latent shape, labelled or not, precision, complete
    latents_stats.pt            {'mean': (1, C, 1, 1), 'std': (1, C, 1, 1)}, plain tensors (weights_only)
    latents_stats.json          the same numbers, readable

Shard k holds dataset items [k * shard_size, (k + 1) * shard_size). A shard file appears only
when complete (written under a temporary name, then renamed), so a killed extraction resumes
by skipping the shards that exist; under torchrun rank r does the shards k with k % world == r,
and the result does not depend on the number of processes. SIGINT / SIGTERM stop after the current
batch and keep what the unfinished shard has (`partial_latents_XXXXX.safetensors`), which the next
run continues; the folder is locked while a run writes it (`openvtp.runtime.run_folder`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from openvtp.errors import OpenVTPError
from openvtp.runtime.files import TEMP_MARK, write_safetensors
from openvtp.runtime.precision import autocast, resolve
from openvtp.runtime import dist
from openvtp.runtime.checkpoint import atomic_torch_save
from openvtp.runtime.interrupt import quiet_worker
from openvtp.runtime.run_folder import RunFolder

SHARD = "latents_{:05d}.safetensors"
CAPTIONS = "captions_{:05d}.json"
PARTIAL = "partial_latents_{:05d}.safetensors"  # an interrupted shard, continued by the next run
PARTIAL_CAPTIONS = "partial_captions_{:05d}.json"
INDEX = "index.json"
STATS = "latents_stats.pt"


def _to_square_uint8(image: Any, size: int | None) -> torch.Tensor:
    """uint8 (3, S, S): the ADM centre crop to `size` unless the image already has that size."""
    if isinstance(image, Image.Image):
        pil = image
    else:
        t = torch.as_tensor(image)
        if t.dtype != torch.uint8 or t.ndim != 3 or t.shape[0] != 3:
            raise OpenVTPError(f"expected uint8 images of shape (3, H, W), got {t.dtype} {tuple(t.shape)}")
        if size is None or tuple(t.shape[1:]) == (size, size):
            return t
        pil = Image.fromarray(t.permute(1, 2, 0).numpy())
    if size is None:
        return torch.from_numpy(np.asarray(pil.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
    from openvtp.eval.preprocess import adm_center_crop

    return adm_center_crop(pil, size)


class _Prepared(Dataset):
    """Items [start, end) of a dataset, centre-cropped in the loader workers."""

    def __init__(self, dataset: Any, start: int, end: int, size: int | None):
        self.dataset, self.start, self.end, self.size = dataset, start, end, size

    def __len__(self) -> int:
        return self.end - self.start

    def __getitem__(self, i: int) -> dict:
        item = dict(self.dataset[self.start + i])
        item["image"] = _to_square_uint8(item["image"], self.size)
        return item


def _default_label(item: dict) -> int:
    return int(item.get("label", 0))


def _write_shard(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tmp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")
    write_safetensors({k: v.contiguous() for k, v in tensors.items()}, tmp)
    os.replace(tmp, path)


def _read_index(latents_dir: Path) -> dict:
    file = latents_dir / INDEX
    index = json.loads(file.read_text()) if file.is_file() else {}
    if not index.get("complete"):
        raise OpenVTPError(f"{latents_dir} is not a finished latents directory (run or resume openvtp extract-latents)")
    return index


@torch.no_grad()
def extract_latents(
    tokenizer: nn.Module,
    dataset: Any,
    out_dir: str | Path,
    image_size: int | None = None,
    batch_size: int = 64,
    shard_size: int = 10_000,
    label_fn: Callable[[dict], int] | None = None,
    stats_num: int = 10_000,
    seed: int = 0,
    device: str = "auto",
    num_workers: int = 0,
    progress: bool = True,
    precision: str = "auto",
) -> Path:
    """Encode every item of `dataset` (and its horizontal flip) with `tokenizer.encode` into shards.

    Items are dicts with a uint8 (3, H, W) tensor or PIL `image`, and optional `label` and
    `caption`. image_size: ADM centre crop to this side (None keeps images as they are; they must
    then share one size). label_fn maps an item to its class (default: item["label"], else 0).
    stats_num > 0 computes `latents_stats.pt` from that many random latents at the end.
    precision: "fp32", "bf16" (the encoder under bf16 autocast; latents stored as float32) or "auto" (fp32).
    Resumable and torchrun-aware (see the module docstring). Returns the directory.
    """
    precision = resolve(precision, "cpu")  # auto is float32 on every device: the tokenizer's own arithmetic
    info = dist.info(device)
    with RunFolder(out_dir, "--out", dist.is_main(), info.device, resume=()) as run:
        return _extract(run, info.device, tokenizer, dataset, Path(out_dir), image_size, batch_size, shard_size,
                        label_fn, stats_num, seed, num_workers, progress, precision)


def _read_partial(out: Path, k: int) -> tuple[list[torch.Tensor], list[torch.Tensor], list[int], list]:
    """What an interrupted run encoded of shard k: latents, flips, labels, captions (empty lists if nothing)."""
    path = out / PARTIAL.format(k)
    if not path.is_file():
        return [], [], [], []
    with safe_open(str(path), "pt") as f:
        t = {name: f.get_tensor(name) for name in ("latents", "latents_flip", "labels")}
    captions_file = out / PARTIAL_CAPTIONS.format(k)
    captions = json.loads(captions_file.read_text()) if captions_file.is_file() else [None] * len(t["labels"])
    return [t["latents"]], [t["latents_flip"]], t["labels"].tolist(), captions


def _extract(run: RunFolder, device: torch.device, tokenizer: nn.Module, dataset: Any, out: Path,
             image_size: int | None, batch_size: int, shard_size: int, label_fn: Callable[[dict], int] | None,
             stats_num: int, seed: int, num_workers: int, progress: bool, precision: str) -> Path:
    n = len(dataset)
    if n == 0:
        raise OpenVTPError("no images to encode: the data is empty")
    if (out / INDEX).is_file():
        old = json.loads((out / INDEX).read_text())
        if old["num_images"] != n or old["shard_size"] != shard_size:
            raise OpenVTPError(f"{out} holds latents of another dataset ({old['num_images']} images, shard size "
                               f"{old['shard_size']}); use a new output directory")
        if old.get("precision", "fp32") != precision:  # an index.json without the key holds float32 latents
            raise OpenVTPError(f"{out} holds latents encoded in {old.get('precision', 'fp32')}, not {precision}; "
                               f"resume with --precision {old.get('precision', 'fp32')} or use a new output directory")
    elif dist.is_main():  # the layout is recorded first, so a resumed run can check it
        (out / INDEX).write_text(json.dumps({"num_images": n, "shard_size": shard_size, "precision": precision,
                                             "complete": False}))
    label_fn = label_fn or _default_label
    tokenizer = tokenizer.to(device).eval()
    num_shards = (n + shard_size - 1) // shard_size
    mine = range(dist.rank(), num_shards, dist.world_size())
    todo = [k for k in mine if not (out / SHARD.format(k)).is_file()]
    bar = tqdm(total=sum(min(shard_size, n - k * shard_size) for k in todo), desc="extract latents", unit="img",
               disable=not (progress and dist.is_main()))
    run.on_exit(bar.close)
    for k in todo:
        start, end = k * shard_size, min(n, (k + 1) * shard_size)
        lat, lat_flip, labels, captions = _read_partial(out, k)  # resume inside the shard
        bar.update(len(labels))
        loader = DataLoader(_Prepared(dataset, start + len(labels), end, image_size), batch_size=batch_size,
                            num_workers=num_workers, collate_fn=list, worker_init_fn=quiet_worker)
        for items in loader:
            x = torch.stack([it["image"] for it in items]).to(device).float() / 255  # (B, 3, S, S)
            with autocast(device, precision):
                lat.append(tokenizer.encode(x).float().cpu())
                lat_flip.append(tokenizer.encode(x.flip(-1)).float().cpu())
            labels += [label_fn(it) for it in items]
            captions += [it.get("caption") for it in items]
            bar.update(len(items))
            stop = run.step_done(agree=False)  # ranks extract different shards: each stops on its own
            if stop and start + len(labels) < end:
                if any(c is not None for c in captions):
                    (out / PARTIAL_CAPTIONS.format(k)).write_text(json.dumps(captions))
                _write_shard(out / PARTIAL.format(k), {"latents": torch.cat(lat), "latents_flip": torch.cat(lat_flip),
                                                       "labels": torch.tensor(labels, dtype=torch.long)})
                raise run.interrupted(stop, 0, f"{len(labels)} images of shard {k} saved in {out / PARTIAL.format(k)}"
                                               ", finished shards kept")
        if any(c is not None for c in captions):
            (out / CAPTIONS.format(k)).write_text(json.dumps(captions))
        _write_shard(out / SHARD.format(k), {
            "latents": torch.cat(lat), "latents_flip": torch.cat(lat_flip),
            "labels": torch.tensor(labels, dtype=torch.long), "indices": torch.arange(start, end, dtype=torch.long),
        })
        (out / PARTIAL.format(k)).unlink(missing_ok=True)
        (out / PARTIAL_CAPTIONS.format(k)).unlink(missing_ok=True)
    bar.close()
    dist.barrier()
    if dist.is_main():
        with safe_open(str(out / SHARD.format(0)), "pt") as f:
            shape = list(f.get_slice("latents").get_shape()[1:])
            labelled = "label" in dataset[0] or label_fn is not _default_label
        (out / INDEX).write_text(json.dumps({
            "num_images": n, "shard_size": shard_size, "num_shards": num_shards, "latent_shape": shape,
            "image_size": image_size, "labelled": labelled, "precision": precision, "complete": True,
        }, indent=2))
        if stats_num > 0:
            compute_latent_stats(out, stats_num, seed)
    dist.barrier()
    return out


def _shard_sizes(index: dict) -> list[int]:
    n, s = index["num_images"], index["shard_size"]
    return [min(s, n - k * s) for k in range(index["num_shards"])]


def compute_latent_stats(latents_dir: str | Path, num: int = 10_000, seed: int = 0) -> dict[str, torch.Tensor]:
    """Per-channel mean and std over a random subset of `num` latents (all when fewer), saved in the
    released layout `latents_stats.pt` {'mean': (1, C, 1, 1), 'std': (1, C, 1, 1)} plus a JSON copy."""
    latents_dir = Path(latents_dir)
    index = _read_index(latents_dir)
    n = index["num_images"]
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(num, n)].sort().values
    chosen = []
    for k, size in enumerate(_shard_sizes(index)):
        start = k * index["shard_size"]
        local = pick[(pick >= start) & (pick < start + size)] - start
        if len(local):
            with safe_open(str(latents_dir / SHARD.format(k)), "pt") as f:
                chosen.append(f.get_tensor("latents")[local])
    z = torch.cat(chosen).double()  # (num, C, h, w)
    stats = {"mean": z.mean(dim=(0, 2, 3), keepdim=True).float(), "std": z.std(dim=(0, 2, 3), keepdim=True).float()}
    atomic_torch_save(stats, latents_dir / STATS)
    (latents_dir / "latents_stats.json").write_text(json.dumps(
        {"num": len(z), "seed": seed, "precision": index.get("precision", "fp32"),
         "mean": stats["mean"].flatten().tolist(), "std": stats["std"].flatten().tolist()}, indent=2))
    return stats


def load_latent_stats(path: str | Path) -> dict[str, torch.Tensor]:
    """`latents_stats.pt` (or a directory holding one) -> {'mean', 'std'}, each (1, C, 1, 1)."""
    path = Path(path)
    file = path / STATS if path.is_dir() else path
    if not file.is_file():
        raise OpenVTPError(f"latent statistics not found: {file} (openvtp extract-latents writes them)")
    try:
        stats = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise OpenVTPError(f"cannot read latent statistics {file}: {str(e).splitlines()[0]}") from None
    ok = isinstance(stats, dict) and all(isinstance(stats.get(k), torch.Tensor) for k in ("mean", "std"))
    if not ok or stats["mean"].ndim != 4 or stats["mean"].shape != stats["std"].shape or stats["mean"].shape[0] != 1 \
            or stats["mean"].shape[2:] != (1, 1):
        raise OpenVTPError(f"{file} is not in the latents_stats layout {{'mean': (1, C, 1, 1), 'std': (1, C, 1, 1)}}")
    if not (stats["std"] > 0).all():
        raise OpenVTPError(f"{file}: some channel has std <= 0")
    return {"mean": stats["mean"].float(), "std": stats["std"].float()}


class LatentDataset(Dataset):
    """Normalised latents ((z - mean) / std * multiplier) and labels from a latents directory.

    `ds[i]` picks the stored flip at random (torch's global RNG), as LightningDiT's dataset does;
    `ds[(i, flip)]` picks it explicitly, which the trainer uses so that a resumed run draws the
    same data. Shards are opened lazily, per process, and read one row at a time.
    """

    def __init__(self, latents_dir: str | Path, stats: dict | str | Path | None = None, multiplier: float = 1.0):
        self.dir = Path(latents_dir)
        self.index = _read_index(self.dir)
        stats = load_latent_stats(self.dir if stats is None or stats == "" else stats) \
            if not isinstance(stats, dict) else stats
        self.mean, self.std = stats["mean"][0].float(), stats["std"][0].float()  # (C, 1, 1)
        if self.mean.shape[0] != self.index["latent_shape"][0]:
            raise OpenVTPError(f"latent statistics have {self.mean.shape[0]} channels, latents in {self.dir} have "
                               f"{self.index['latent_shape'][0]}")
        self.multiplier = multiplier
        self.sizes = _shard_sizes(self.index)
        self.shard_size = self.index["shard_size"]
        self._files: dict[int, Any] = {}
        self._pid = None

    def __len__(self) -> int:
        return self.index["num_images"]

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.index["latent_shape"])

    def labels(self) -> torch.Tensor:
        """All labels (N,), read without keeping files open."""
        out = []
        for k in range(len(self.sizes)):
            with safe_open(str(self.dir / SHARD.format(k)), "pt") as f:
                out.append(f.get_tensor("labels"))
        return torch.cat(out)

    def _file(self, k: int):
        if self._pid != os.getpid():  # a forked loader worker must not share the parent's handles
            self._files, self._pid = {}, os.getpid()
        if k not in self._files:
            path = self.dir / SHARD.format(k)
            if not path.is_file():
                raise OpenVTPError(f"latent shard missing: {path} (extraction unfinished?)")
            self._files[k] = safe_open(str(path), "pt")
        return self._files[k]

    def __getitem__(self, key: int | tuple[int, bool]) -> tuple[torch.Tensor, torch.Tensor]:
        i, flip = key if isinstance(key, tuple) else (key, bool(torch.rand(()) < 0.5))
        k, j = divmod(int(i), self.shard_size)
        f = self._file(k)
        z = f.get_slice("latents_flip" if flip else "latents")[j : j + 1][0].float()  # (C, h, w)
        y = f.get_slice("labels")[j : j + 1][0]
        return (z - self.mean) / self.std * self.multiplier, y
