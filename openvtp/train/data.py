"""Pre-training batches: sources, per-rank slices and the views of each objective.

Every random choice for a sample is drawn from a generator seeded by (seed, step, global
position in the batch), and the SSL / reconstruction subsets are fixed strides of the global
batch, so a run is reproducible and does not depend on the number of processes or loader
workers. A source of random-access samples (the embedded data, image folders) is read at
index step * B + position; a stream (webdataset shards) is split over ranks and workers.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from openvtp.config.schema import PretrainConfig
from openvtp.data.folders import CaptionFolder, ClassFolder
from openvtp.data.masking import batch_masks, mask_ratios
from openvtp.data.photometric import photometric_batch, plan_rows
from openvtp.data.registry import provider
from openvtp.data.shards import ShardDataset
from openvtp.data.text import tokenize
from openvtp.data.views import (STREAM_CLIP, STREAM_MASK, STREAM_RECON, STREAM_SSL, MultiCrop, contrastive_crop,
                                finish, reconstruction_crop, sample_generator)

from openvtp.runtime.interrupt import quiet_worker

def build_source(cfg: PretrainConfig, rank: int, world_size: int) -> Dataset | IterableDataset:
    d, size = cfg.data, cfg.model.image_size
    if d.source == "embedded":
        return provider("embedded").pretrain_source(cfg)
    if d.source == "shards":
        return ShardDataset(d.path.split("::") if "::" in d.path else d.path, size=size, rank=rank,
                            world_size=world_size, shuffle_buffer=d.shuffle_buffer, seed=cfg.train.seed, resample=True,
                            resampler=d.resampler)
    if d.captions:
        return CaptionFolder(d.captions, root=d.path, size=size, resampler=d.resampler)
    return ClassFolder(d.path, size=size, resampler=d.resampler)


@dataclass(frozen=True)
class BatchLayout:
    """Which global positions of a step's batch feed which objective, and this rank's slice."""

    batch: int                # global B
    rank: int
    world_size: int
    ssl_stride: int           # 0: SSL off
    rec_stride: int           # 0: reconstruction off

    @property
    def local(self) -> range:
        n = self.batch // self.world_size
        return range(self.rank * n, (self.rank + 1) * n)

    def is_ssl(self, p: int) -> bool:
        return self.ssl_stride > 0 and p % self.ssl_stride == 0

    def is_rec(self, p: int) -> bool:
        # offset by half a stride so the two subsets overlap as little as possible
        return self.rec_stride > 0 and (p + self.rec_stride // 2) % self.rec_stride == 0


def layout_for(cfg: PretrainConfig, rank: int, world_size: int) -> BatchLayout:
    B = cfg.train.batch
    return BatchLayout(B, rank, world_size,
                       B // cfg.ssl.batch if cfg.ssl.weight > 0 else 0,
                       B // cfg.recon.batch if cfg.recon.weight > 0 else 0)


class PretrainCollate:
    """Builds one rank's batch for one step from raw samples (uint8 images + captions)."""

    def __init__(self, cfg: PretrainConfig, layout: BatchLayout):
        self.cfg, self.layout = cfg, layout
        s = cfg.ssl
        self.multicrop = MultiCrop(s.global_size, s.local_size, s.n_global, s.n_local, s.global_scale, s.local_scale,
                                   flip_p=s.flip_p, jitter_p=s.jitter_p, gray_p=s.gray_p, blur_p=tuple(s.blur_p),
                                   blur_sigma=tuple(s.blur_sigma), blur_reference=tuple(s.blur_reference),
                                   solarize_p=s.solarize_p) if s.weight > 0 else None
        self.grid = s.global_size // cfg.model.vision_patch_size

    def _mask_plan(self, step: int) -> torch.Tensor:
        """(B_ssl, n_global) mask ratios, 0 for unmasked crops, as DINOv2's collate draws them: int(p * crops)
        of the step's global crops are masked, with ratios stratified over the range, shuffled over crops.
        Drawn for the global batch from the step's generator, so it does not depend on the world size."""
        s = self.cfg.ssl
        gen = sample_generator(self.cfg.train.seed, step, -1, STREAM_MASK)
        return mask_ratios(s.n_global * s.batch, tuple(s.mask_ratio), s.mask_probability, gen).view(s.batch, s.n_global)

    def __call__(self, samples: list[dict], step: int, positions: list[int]) -> dict[str, torch.Tensor]:
        """The views, finished (normalised) unless data.photometric=device: then the geometry only, as `*_raw`
        (uint8 for uint8 sources) with the crops' `*_plan` tables, for `finish_views` on the device."""
        cfg, lay, seed = self.cfg, self.layout, self.cfg.train.seed
        size = cfg.model.image_size
        out: dict[str, torch.Tensor] = {"step": torch.tensor(step)}
        out["skipped"] = torch.tensor(sum(int(s.get("skipped", 0)) for s in samples))
        if cfg.clip.weight > 0:
            out["clip_images_raw"] = torch.stack([
                contrastive_crop(s["image"], size, sample_generator(seed, step, p, STREAM_CLIP), cfg.clip.crop_scale)
                for s, p in zip(samples, positions)])
            out["text"] = tokenize([s["caption"] for s in samples], cfg.model.text_context_length)
        if self.multicrop is not None:
            out.update(self._ssl(samples, step, positions))
        if lay.rec_stride:
            out["rec_images_raw"] = torch.stack([
                reconstruction_crop(s["image"], size, sample_generator(seed, step, p, STREAM_RECON))
                for s, p in zip(samples, positions) if lay.is_rec(p)])
        return out if cfg.data.photometric == "device" else finish_views(out, torch.device("cpu"))

    def _ssl(self, samples: list[dict], step: int, positions: list[int]) -> dict[str, torch.Tensor]:
        """Crop-major (n, B_ssl, ...) crops and masks; with data.photometric=sample finished here, crop by crop."""
        mc, lay, seed = self.multicrop, self.layout, self.cfg.train.seed
        per_sample = self.cfg.data.photometric == "sample"
        plan = self._mask_plan(step)
        crops: dict[str, list] = {"ssl_globals": [], "ssl_locals": []}
        plans: dict[str, list] = {"ssl_globals": [], "ssl_locals": []}
        masks = []
        for s, p in zip(samples, positions):
            if not lay.is_ssl(p):
                continue
            img = s["image"]
            for key, crop_plans, size in zip(crops, mc.plan(img.shape[-2:], sample_generator(seed, step, p, STREAM_SSL)),
                                             (mc.global_size, mc.local_size)):
                rendered = [mc.render(img, c, size) for c in crop_plans]
                crops[key].append([mc.photometric(x, c) for x, c in zip(rendered, crop_plans)] if per_sample
                                  else rendered)
                plans[key].append(crop_plans)
            masks.append(batch_masks(mc.n_global, self.grid, self.grid, ratios=plan[p // lay.ssl_stride],
                                     gen_for=lambda i, p=p: sample_generator(seed, step, p, STREAM_MASK * 100 + i)
                                     ).flatten(1))
        out = {}
        for key, per in crops.items():
            if not per or not per[0]:
                continue  # no local crops
            stacked = torch.stack([torch.stack(c) for c in per], dim=1)  # (n, B_ssl, 3, S, S)
            if per_sample:
                out[key] = stacked
            else:
                out[key + "_raw"] = stacked
                rows = [plan_rows(c) for c in plans[key]]  # per sample (n, PLAN_COLUMNS)
                out[key + "_plan"] = torch.stack(rows, dim=1)
        # masks are ordered sample-major above; make them crop-major like the stacked crops
        out["ssl_masks"] = torch.stack(masks).transpose(0, 1).reshape(-1, self.grid**2)
        return out


def finish_views(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The batch on `device`, every `*_raw` view finished there: multi-crops through their `*_plan` tables
    (`photometric_batch`), the CLIP and reconstruction views normalised. Finished batches just move."""
    out = {}
    for key, value in batch.items():
        if key.endswith("_plan"):
            continue
        value = value.to(device, non_blocking=True)
        if key.endswith("_raw"):
            key = key[:-len("_raw")]
            if key + "_plan" in batch:
                value = photometric_batch(value.flatten(0, 1), batch[key + "_plan"].flatten(0, 1)).unflatten(
                    0, value.shape[:2])
            else:
                value = finish(value)
        out[key] = value
    return out


class StepBatches(IterableDataset):
    """Yields this rank's batches for steps start, start+1, ...; loader worker w makes steps w, w+nw, ...

    The DataLoader takes items from its workers in turn, so batches arrive in step order.
    """

    def __init__(self, source, collate: PretrainCollate, layout: BatchLayout, start_step: int, end_step: int):
        self.source, self.collate, self.layout = source, collate, layout
        self.start, self.end = start_step, end_step

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        steps = range(self.start + wid, self.end, nw)
        positions = list(self.layout.local)
        if isinstance(self.source, IterableDataset):
            stream = iter(self.source)
            # exact resume: drop what this worker consumed before start_step
            done_before = len(range(wid, self.start, nw))
            stream = itertools.islice(stream, done_before * len(positions), None)
            for step in steps:
                samples = list(itertools.islice(stream, len(positions)))
                if len(samples) < len(positions):
                    return
                yield self.collate(samples, step, positions)
        else:
            n = len(self.source)
            for step in steps:
                samples = [self.source[(step * self.layout.batch + p) % n] for p in positions]
                yield self.collate(samples, step, positions)


def build_loader(cfg: PretrainConfig, rank: int, world_size: int, start_step: int,
                 pin_memory: bool = False) -> DataLoader:
    """pin_memory: for a GPU, whose copies from pinned memory do not hold the host."""
    layout = layout_for(cfg, rank, world_size)
    source = build_source(cfg, rank, world_size)
    batches = StepBatches(source, PretrainCollate(cfg, layout), layout, start_step, cfg.train.steps)
    workers = cfg.data.workers
    return DataLoader(batches, batch_size=None, num_workers=workers, persistent_workers=False, pin_memory=pin_memory,
                      prefetch_factor=2 if workers > 0 else None, worker_init_fn=quiet_worker)
