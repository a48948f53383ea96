"""One pass of a model over an image set for evaluation: batched, chunked into a resumable on-disk cache, split over
torchrun ranks, `inference_mode`, in the precision asked (`openvtp.runtime.precision`: by default bf16 autocast on CUDA).

A pass computes every feature the tasks may want from one forward (the trunk's last blocks, pooled patch tokens,
the pooled bottleneck latent, the CLIP embedding), so each (model, split, preprocessing) is read and encoded once.
Images that cannot be read are left out of the chunk; the chunk's `labels` hold the positions that were kept.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from openvtp.data.image_io import quantize
from openvtp.errors import Interrupted, OpenVTPError
from openvtp.runtime.interrupt import StopSignals, quiet_worker
from openvtp.runtime.precision import autocast

from .datasets import READ_ERRORS, EvalSet
from .features import FeatureCache

log = logging.getLogger(__name__)
CACHE_VERSION = 1
# Full-width trunk features are stored in half precision: half the disk and memory for ImageNet-size sets.
HALF = ("cls_blocks", "patch_mean")


@dataclass
class LoadedModel:
    """A tokenizer ready for evaluation and what identifies it in results and caches."""

    name: str
    spec: str
    model: torch.nn.Module
    fingerprint: str
    size: int
    device: torch.device

    @property
    def has_text(self) -> bool:
        return bool(self.model.config.train_clip)

    @property
    def has_decoder(self) -> bool:
        return bool(self.model.config.train_reconstruction)


def model_fingerprint(model_dir: Path) -> str:
    """config.json content plus the weights file's size and mtime: a retrained model in the same folder differs."""
    h = hashlib.sha1((model_dir / "config.json").read_bytes())
    weights = model_dir / "model.safetensors"
    if weights.is_file():
        st = weights.stat()
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def load_model(spec: str, name: str, device: torch.device, size: int | None = None,
               revision: str | None = None) -> LoadedModel:
    from openvtp.models import VTPModel
    from openvtp.models.io import resolve_model_dir

    model_dir = resolve_model_dir(spec, revision)
    model = VTPModel.from_pretrained(model_dir).eval().requires_grad_(False).to(device)
    size = model.config.resolution(size, spec)
    return LoadedModel(name, spec, model, model_fingerprint(model_dir), size, device)


def digest(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------- per-batch computations




def pass_compute(lm: LoadedModel, features: bool = True, recon: bool = False, lpips_net=None, inception=None,
                 n_last: int = 4, precision: str = "fp32") -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """uint8 images (B, 3, H, W) -> per-image tensors, from one trunk forward in `precision` ("fp32" or "bf16").

    features: "cls_blocks" (B, n, D) class token of the last n blocks (normed, shallowest first), "patch_mean" (B, D)
        mean final patch token, "latent_mean" (B, C) mean bottleneck latent, "clip" (B, T) CLIP embedding.
    recon: "psnr", "ssim", "lpips", "psnr_patch_mean" (flat-patch baseline) and Inception features of originals and
        reconstructions ("inception_orig", "inception_recon"); reconstructions are quantised to 8 bits as saved PNGs.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    from .recon_metrics import patch_mean_baseline, psnr

    model, device = lm.model, lm.device
    depth = len(model.trunk.blocks)
    wanted = list(range(max(0, depth - n_last), depth))
    patch, p = model.config.vision_patch_size, model.trunk.patch_size

    def compute(images: torch.Tensor) -> dict[str, torch.Tensor]:
        x01 = images.to(device).float().div(255)
        out = {}
        with autocast(device, precision):
            last, kept = model.trunk.forward_blocks(model.normalize(x01), keep=set(wanted) if features else None)
            tokens = model.trunk.norm(last)  # (B, 1+N, D)
            if features:
                out["cls_blocks"] = torch.stack([model.trunk.norm(kept[i][:, :1])[:, 0] for i in wanted], 1)
                out["patch_mean"] = tokens[:, 1:].mean(1)
                out["latent_mean"] = model.trunk.bottleneck(tokens[:, 1:]).mean(1)
                if lm.has_text:
                    out["clip"] = model.clip_image_embedding(tokens)
            if recon:  # as model.decode(model.encode(x)), reusing the trunk pass
                lat = model.trunk.bottleneck(tokens[:, 1:])  # (B, N, C)
                lat = lat.transpose(1, 2).reshape(len(x01), -1, x01.shape[-2] // p, x01.shape[-1] // p)
                rec8 = quantize(model.denormalize(model.get_latents_decoded_images(lat).float()))
        out = {k: v.to(torch.float16 if k in HALF else torch.float32).cpu() for k, v in out.items()}
        if recon:
            rec = rec8.float().div(255)
            base = quantize(patch_mean_baseline(x01, patch)).float().div(255)
            out["psnr"] = psnr(x01, rec).cpu()
            out["ssim"] = structural_similarity_index_measure(rec, x01, data_range=1.0, reduction="none").float().cpu()
            out["psnr_patch_mean"] = psnr(x01, base).cpu()
            if lpips_net is not None:
                out["lpips"] = lpips_net(x01, rec, normalize=True).flatten().float().cpu()
            if inception is not None:
                out["inception_orig"] = inception(images)  # float64, as FID wants
                out["inception_recon"] = inception(rec8.cpu())
        return out

    return compute


# ---------------------------------------------------------------------------- the cached pass


class _Images(Dataset):
    MAX_WARNINGS = 5  # per process and pass; the count is in the results

    def __init__(self, evalset: EvalSet, size: int, method: str, crop_pct: float):
        self.evalset, self.size, self.method, self.crop_pct = evalset, size, method, crop_pct
        self.warned = 0

    def __len__(self) -> int:
        return len(self.evalset)

    def __getitem__(self, pos: int):
        try:
            return pos, self.evalset.load(pos, self.size, self.method, self.crop_pct), None
        except OpenVTPError as e:  # a user error must reach the main process as one line, not a worker traceback
            return pos, None, str(e)
        except READ_ERRORS as e:
            self.warned += 1
            level = logging.WARNING if self.warned <= self.MAX_WARNINGS else logging.DEBUG
            log.log(level, "eval: skipped unreadable image %s (%s)", self.evalset.where(pos), type(e).__name__)
            return pos, None, None


def _collate(items):
    for _, _, err in items:
        if err:
            raise OpenVTPError(err)
    kept = [(pos, img) for pos, img, _ in items if img is not None]
    positions = torch.tensor([p for p, _ in kept], dtype=torch.long)
    images = torch.stack([img for _, img in kept]) if kept else None
    return positions, images


def cached_pass(
    cache_dir: Path,
    meta: dict,
    evalset: EvalSet,
    size: int,
    method: str,
    crop_pct: float,
    compute: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    batch_size: int = 64,
    workers: int = 0,
    chunk_size: int = 1024,
    progress: bool = True,
    desc: str = "features",
) -> tuple[dict[str, torch.Tensor], torch.Tensor] | None:
    """Run `compute` over every readable image of `evalset`, `chunk_size` images per cache chunk.

    Finished chunks are kept, so a killed run resumes; SIGINT / SIGTERM stop after the current batch, keep the
    unfinished chunk's part and raise `Interrupted`. Under torchrun rank r computes chunks r, r + W, ... and only
    rank 0 gets the result. Returns ({name: (M, ...)}, positions (M,)) for the M readable images, or None off rank 0.
    """
    from openvtp.runtime import dist

    n = len(evalset)
    if n == 0:
        raise OpenVTPError(f"{evalset.name} ({evalset.split}) has no images")
    num_chunks = math.ceil(n / chunk_size)
    meta = {**meta, "version": CACHE_VERSION, "images": n, "chunk_size": chunk_size, "labels": "position in the set"}
    path = Path(cache_dir) / f"{meta.get('split', 'set')}-{method}{size}-{digest(meta)}"
    if dist.is_main():  # one process writes meta.json
        cache = FeatureCache(path, meta)
    dist.barrier()
    if not dist.is_main():
        cache = FeatureCache(path, meta)
    mine = [i for i in range(num_chunks) if i % dist.world_size() == dist.rank() and not cache.has_chunk(i)]
    batches, owner = [], []
    pending: dict[int, list] = {}  # chunk -> [(positions, features)] computed so far
    for i in mine:
        first = i * chunk_size
        partial = cache.read_partial(i)  # what an interrupted run computed of this chunk
        if partial is not None:
            feats, kept, first = partial
            pending[i] = [(kept, feats)] if len(kept) else []
        positions = list(range(first, min(n, (i + 1) * chunk_size)))
        if not positions:
            _write(cache, i, pending.pop(i, []), compute, evalset, size, method, crop_pct)
        for s in range(0, len(positions), batch_size):
            batches.append(positions[s : s + batch_size])
            owner.append(i)
    if batches:
        loader = DataLoader(_Images(evalset, size, method, crop_pct), batch_sampler=batches, num_workers=workers,
                            collate_fn=_collate, persistent_workers=False, worker_init_fn=quiet_worker)
        left = {i: sum(1 for o in owner if o == i) for i in mine}
        with StopSignals() as signals, torch.inference_mode(), tqdm(total=sum(map(len, batches)), desc=desc,
                                                                   unit="img", disable=not progress) as bar:
            for k, (positions, images) in enumerate(loader):
                chunk = owner[k]
                if images is not None:
                    pending.setdefault(chunk, []).append((positions, compute(images)))
                bar.update(len(batches[k]))
                left[chunk] -= 1
                if left[chunk] == 0:
                    _write(cache, chunk, pending.pop(chunk, []), compute, evalset, size, method, crop_pct)
                if signals.requested() and k + 1 < len(batches):  # ranks work on their own chunks: no agreement
                    if pending.get(chunk):
                        cache.write_partial(chunk, *_concat(pending[chunk]), next_pos=batches[k][-1] + 1)
                    raise Interrupted(signals.requested(), f"features of {desc} cached in {path} up to image "
                                                           f"{batches[k][-1] + 1} of {n}")
    dist.barrier()
    if not dist.is_main():
        return None
    features, kept = cache.load(num_chunks)
    if len(kept) == 0:
        raise OpenVTPError(f"{evalset.name} ({evalset.split}): none of its {n} images could be read "
                           f"(the first is {evalset.where(0)})")
    return features, kept


def _write(cache: FeatureCache, chunk: int, parts: list, compute, evalset, size, method, crop_pct) -> None:
    if not parts:  # every image of the chunk unreadable: an empty chunk with the right feature names and widths
        dummy = compute(torch.zeros(1, 3, size, size, dtype=torch.uint8))
        cache.write_chunk(chunk, {k: v[:0] for k, v in dummy.items()}, torch.zeros(0, dtype=torch.long))
        return
    cache.write_chunk(chunk, *_concat(parts))


def _concat(parts: list) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """[(positions, features)] -> (features, positions), concatenated."""
    return {k: torch.cat([f[k] for _, f in parts]) for k in parts[0][1]}, torch.cat([p for p, _ in parts])
