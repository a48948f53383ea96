"""Pre-training input path: images/s per loader core, openvtp against an anchor measured in the same run.

    python benchmarks/loader.py --recipe vtp-s --workers 1
    python benchmarks/loader.py --recipe vtp-l --workers 1,2 --gpu-rate 1500

The script writes webdataset shards of JPEGs at a web photo's size (500 x 375, quality 90, about 75 kB)
and times the whole path from the tar bytes to a finished batch: decode, CLIP view, DINOv2 multi-crop with
its photometrics, iBOT masks, reconstruction view, caption tokens, collate, and the worker-to-trainer hand
over, through a real DataLoader with 1..N workers (each worker one thread: a core). The batch keeps the
recipe's ratios (B_ssl = B/4, B_rec = B/8) at --batch images. Rows:

- openvtp `data.photometric=sample`: each crop's photometrics in the loader, crop by crop (the demo's path);
- openvtp `batch`: all crops of a batch at once, in the loader;
- openvtp `device`: the loader renders the geometry only (uint8) and the trainer finishes the views on its
  device. Its loader rate is the host's share; the finishing is timed apart, on this machine's CPU, one thread
  (on a GPU it is a few batched kernels);
- openvtp `device/torch`: that, and `data.resampler=torch` (torch's uint8 resize at decode): the vtp-* recipes';
- anchor: the same augmentations as DINOv2's and open_clip's loaders write them: webdataset PIL decode, then
  torchvision transforms per sample (open_clip's train transform for the CLIP view, DINOv2's
  DataAugmentationDINO for the multi-crop, a random resized crop for the reconstruction view, DINOv2's block
  masking in the collate).

It prints images/s per core for each, the ratio to the anchor and to openvtp's per-sample path, and the cores
one GPU needs at --gpu-rate images/s (by default the vtp-s bf16 pre-training rate of runs/gpu_check.json when
`make gpu-check` has written it).
"""
from __future__ import annotations

import argparse
import io
import json
import math
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

from openvtp.config.load import load_config, preset_names
from openvtp.config.schema import PretrainConfig, validate
from openvtp.constants import IMAGENET_MEAN, IMAGENET_STD
from openvtp.data.shards import write_shards
from openvtp.data.text import tokenize
from openvtp.train.data import build_loader, finish_views

MODES = ("sample", "batch", "device")
RESAMPLERS = ("pil", "torch")


def photo(rng: np.random.Generator, width: int, height: int) -> bytes:
    """A JPEG with a photo's statistics for the codec: smooth colour regions, edges and sensor-like noise."""
    coarse = rng.random((height // 24 + 2, width // 24 + 2, 3)) * 255
    im = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BICUBIC), np.float32)
    for _ in range(6):  # a few hard-edged objects
        y, x = rng.integers(0, height), rng.integers(0, width)
        im[y:y + rng.integers(20, height // 2), x:x + rng.integers(20, width // 2)] = rng.random(3) * 255
    im += rng.normal(0, 8, im.shape)
    buf = io.BytesIO()
    Image.fromarray(im.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_data(folder: Path, images: int, width: int, height: int, seed: int = 0) -> tuple[str, float]:
    """Shards of `images` JPEG + caption samples; returns (brace pattern, mean JPEG kB)."""
    rng = np.random.default_rng(seed)
    jpgs = [photo(rng, width, height) for _ in range(images)]
    words = ["a", "photo", "of", "red", "blue", "dog", "cat", "street", "tree", "on", "the", "table", "at", "night"]
    samples = ({"image": j, "ext": "jpg", "caption": " ".join(rng.choice(words, 12))} for j in jpgs)
    paths = write_shards(samples, folder / "shard-%04d.tar", maxcount=max(1, images // 4))
    return f"{folder}/shard-{{0000..{len(paths) - 1:04d}}}.tar", sum(map(len, jpgs)) / len(jpgs) / 1e3


class AnchorCollate:
    """open_clip's and DINOv2's per-sample transforms on PIL images, a batch's roles as openvtp's layout."""

    def __init__(self, cfg: PretrainConfig):
        s, size = cfg.ssl, cfg.model.image_size
        self.cfg, self.ssl_stride, self.rec_stride = cfg, cfg.train.batch // s.batch, cfg.train.batch // cfg.recon.batch
        finish = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        bicubic = T.InterpolationMode.BICUBIC
        self.clip = T.Compose([T.RandomResizedCrop(size, scale=tuple(cfg.clip.crop_scale), interpolation=bicubic),
                               finish])
        self.rec = T.Compose([T.RandomResizedCrop(size, scale=(0.8, 1.0), interpolation=bicubic),
                              T.RandomHorizontalFlip(), finish])

        def blur(p: float):
            return T.RandomApply([T.GaussianBlur(9, sigma=tuple(s.blur_sigma))], p=p)

        colour = T.Compose([T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=s.jitter_p),
                            T.RandomGrayscale(p=s.gray_p)])

        def geometry(crop: int, scale):
            return T.Compose([T.RandomResizedCrop(crop, scale=tuple(scale), interpolation=bicubic),
                              T.RandomHorizontalFlip(p=s.flip_p)])

        self.global1 = T.Compose([geometry(s.global_size, s.global_scale), colour, blur(s.blur_p[0]), finish])
        self.global2 = T.Compose([geometry(s.global_size, s.global_scale), colour, blur(s.blur_p[1]),
                                  T.RandomSolarize(128, p=s.solarize_p), finish])
        self.local = T.Compose([geometry(s.local_size, s.local_scale), colour, blur(s.blur_p[2]), finish])
        self.grid = s.global_size // cfg.model.vision_patch_size

    def __call__(self, samples: list[tuple[Image.Image, str]]) -> dict[str, torch.Tensor]:
        s = self.cfg.ssl
        images = [im.convert("RGB") for im, _ in samples]
        out = {"clip_images": torch.stack([self.clip(im) for im in images]),
               "text": tokenize([c for _, c in samples], self.cfg.model.text_context_length)}
        ssl = images[::self.ssl_stride]
        globals_ = [[self.global1(im) for im in ssl]] + [[self.global2(im) for im in ssl] for _ in range(s.n_global - 1)]
        out["ssl_globals"] = torch.stack([torch.stack(g) for g in globals_])
        out["ssl_locals"] = torch.stack([torch.stack([self.local(im) for im in ssl]) for _ in range(s.n_local)])
        out["ssl_masks"] = dinov2_masks(len(globals_) * len(ssl), self.grid, tuple(s.mask_ratio), s.mask_probability)
        out["rec_images"] = torch.stack([self.rec(im) for im in images[self.rec_stride // 2::self.rec_stride]])
        return out


def dinov2_masks(n: int, grid: int, ratio: tuple[float, float], probability: float) -> torch.Tensor:
    """DINOv2's collate: int(n * p) crops get block masks with ratios stratified over the range (python random)."""
    masked = int(n * probability)
    edges = np.linspace(*ratio, masked + 1)
    masks = [block_mask(grid, int(grid * grid * random.uniform(edges[i], edges[i + 1]))) for i in range(masked)]
    masks += [np.zeros((grid, grid), bool)] * (n - masked)
    random.shuffle(masks)
    return torch.from_numpy(np.stack(masks)).flatten(1)


def block_mask(grid: int, target: int, min_patches: int = 4, min_aspect: float = 0.3) -> np.ndarray:
    """DINOv2's MaskingGenerator: random rectangles (aspect 0.3-3.3) until `target` patches are masked."""
    mask, count = np.zeros((grid, grid), bool), 0
    log_aspect = (math.log(min_aspect), -math.log(min_aspect))
    while count < target:
        for _ in range(10):
            area = random.uniform(min_patches, min(target - count, grid * grid // 2))
            aspect = math.exp(random.uniform(*log_aspect))
            h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < h < grid and 0 < w < grid:
                top, left = random.randint(0, grid - h), random.randint(0, grid - w)
                new = h * w - mask[top:top + h, left:left + w].sum()
                if 0 < new <= target - count:
                    mask[top:top + h, left:left + w] = True
                    count += new
                    break
        else:
            break
    return mask


def anchor_loader(cfg: PretrainConfig, pattern: str, workers: int) -> DataLoader:
    pipeline = (wds.WebDataset(pattern, resampled=True, shardshuffle=False).shuffle(cfg.data.shuffle_buffer)
                .decode("pil").to_tuple("jpg", "txt")
                .batched(cfg.train.batch, collation_fn=AnchorCollate(cfg), partial=False))
    return DataLoader(pipeline, batch_size=None, num_workers=workers, prefetch_factor=2 if workers else None)


def recipe_config(recipe: str, pattern: str, batch: int, workers: int, mode: str, resampler: str = "pil"
                  ) -> PretrainConfig:
    cfg = load_config(PretrainConfig, recipe, [
        "data.source=shards", f"data.path={pattern}", f"data.workers={workers}", f"data.photometric={mode}",
        f"data.resampler={resampler}",
        f"train.batch={batch}", f"ssl.batch={batch // 4}", f"recon.batch={batch // 8}", "train.steps=1000000"])
    validate(cfg, 1)
    return cfg


@dataclass
class Row:
    name: str
    workers: int
    images_per_s: float
    batch_mb: float  # what one batch weighs as the worker hands it over
    spread: float = 0.0  # (max - min) / median of images/s over the repeats

    @property
    def per_core(self) -> float:
        return self.images_per_s / self.workers


def timed(loader, batch: int, warmup: int, steps: int) -> tuple[float, float]:
    """(images/s over `steps` batches after `warmup`, MB of one batch)."""
    it = iter(loader)
    for _ in range(warmup):
        first = next(it)
    start = time.perf_counter()
    for _ in range(steps):
        next(it)
    seconds = time.perf_counter() - start
    del it  # ends the workers
    return batch * steps / seconds, sum(v.numel() * v.element_size() for v in first.values()) / 1e6


def finishing_ms(cfg: PretrainConfig, repeat: int = 3) -> float:
    """ms of `finish_views` for one `device`-mode batch on this CPU, one thread (median of `repeat`)."""
    cfg.data.workers = 0
    raw = next(iter(build_loader(cfg, 0, 1, 0)))
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        finish_views(raw, torch.device("cpu"))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


STAGES = {  # (module file, function) -> stage; cumulative time, so nested stages are listed apart
    ("images.py", "decode_image"): "decode (JPEG + resize to model.image_size)",
    ("views.py", "contrastive_crop"): "CLIP view geometry",
    ("views.py", "plan"): "multi-crop draws",
    ("views.py", "render"): "multi-crop geometry",
    ("views.py", "photometric"): "multi-crop photometrics, per crop",
    ("photometric.py", "photometric_batch"): "multi-crop photometrics, batched",
    ("masking.py", "batch_masks"): "iBOT masks",
    ("views.py", "reconstruction_crop"): "reconstruction view geometry",
    ("text.py", "tokenize"): "caption tokens",
}


def profile(cfg: PretrainConfig, batches: int) -> list[tuple[str, float]]:
    """ms per batch of each stage of the loader's path, in this process (one thread), by cProfile."""
    import cProfile
    import pstats

    cfg.data.workers = 0
    it = iter(build_loader(cfg, 0, 1, 0))
    next(it)  # fills the shuffle buffer
    prof = cProfile.Profile()
    prof.enable()
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    total = time.perf_counter() - start
    prof.disable()
    stats = pstats.Stats(prof).stats
    rows = {}
    for (file, _, name), (_, _, _, cumulative, _) in stats.items():
        stage = STAGES.get((Path(file).name, name))
        if stage:
            rows[stage] = rows.get(stage, 0.0) + cumulative
    out = [(stage, 1e3 * rows[stage] / batches) for stage in STAGES.values() if stage in rows]
    return out + [("the whole batch (profiled: slower than unprofiled)", 1e3 * total / batches)]


def gpu_rate(path: Path, recipe: str) -> float | None:
    """The GPU check's bf16 pre-training images/s for the recipe, when it has run."""
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    if report.get("mode") != "full":  # the reduced CPU run's rates are of tiny models
        return None
    rows = report.get("rows", [])
    rates = [r["images_per_s"] for r in rows if r.get("part", "").startswith(f"pretrain {recipe}") and
             "bf16" in r.get("run", "")]
    return max(rates) if rates else None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="vtp-s", choices=preset_names("vtp"))
    ap.add_argument("--workers", default="1", help="comma-separated worker counts, e.g. 1,2,4")
    ap.add_argument("--batch", type=int, default=64, help="images per batch (B_ssl = B/4, B_rec = B/8)")
    ap.add_argument("--steps", type=int, default=12, help="timed batches per run")
    ap.add_argument("--warmup", type=int, default=2, help="batches before the clock starts (per worker)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved repeats; the median is printed")
    ap.add_argument("--images", type=int, default=256, help="JPEGs written to the shards")
    ap.add_argument("--size", default="500x375", help="JPEG width x height")
    ap.add_argument("--modes", default="sample,batch,device,device/torch",
                    help=f"openvtp paths to time: data.photometric ({','.join(MODES)}), optionally /data.resampler")
    ap.add_argument("--no-anchor", action="store_true")
    ap.add_argument("--gpu-rate", type=float, default=None,
                    help="images/s one GPU consumes (default: runs/gpu_check.json's bf16 rate for the recipe, else 1000)")
    ap.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    ap.add_argument("--profile", action="store_true", help="also print ms per batch of each stage, for every path")
    args = ap.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",")]
    modes = [(m.split("/") + ["pil"])[:2] for m in args.modes.split(",") if m]
    if (any(m not in MODES or r not in RESAMPLERS for m, r in modes) or min(workers) < 1 or args.batch < 8
            or args.batch % 8):
        sys.exit(f"loader.py: --modes from {MODES}, --workers >= 1, --batch a multiple of 8 (got {args})")
    width, height = (int(v) for v in args.size.lower().split("x"))
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        pattern, kb = write_data(Path(tmp), args.images, width, height)
        print(f"{args.images} JPEGs {width}x{height} ({kb:.0f} kB each), recipe {args.recipe}, batch {args.batch} "
              f"(B_ssl {args.batch // 4}, B_rec {args.batch // 8}), {args.steps} timed batches after {args.warmup}")
        runs = [("openvtp " + m + ("" if r == "pil" else f"/{r}"), (m, r)) for m, r in modes]
        runs += [] if args.no_anchor else [("anchor", None)]
        results: dict[tuple[str, int], list[Row]] = {}
        for _ in range(args.repeat):
            for w in workers:
                for name, mode in runs:
                    cfg = recipe_config(args.recipe, pattern, args.batch, w, *(mode or ("sample",)))
                    loader = build_loader(cfg, 0, 1, 0) if mode else anchor_loader(cfg, pattern, w)
                    rate, mb = timed(loader, args.batch, args.warmup * w, args.steps)
                    results.setdefault((name, w), []).append(Row(name, w, rate, mb))
        rows = []
        for (n, w), rs in results.items():
            rates = [r.images_per_s for r in rs]
            median = statistics.median(rates)
            rows.append(Row(n, w, median, rs[0].batch_mb, (max(rates) - min(rates)) / median))
        if args.profile:
            for mode, resampler in modes:
                print(f"\nprofile of openvtp {mode}/{resampler}, {args.steps} batches in-process:")
                for stage, ms in profile(recipe_config(args.recipe, pattern, args.batch, 1, mode, resampler),
                                         args.steps):
                    print(f"  {stage:<52} {ms:8.1f} ms")
        device = any(m == "device" for m, _ in modes)
        finish = finishing_ms(recipe_config(args.recipe, pattern, args.batch, 1, "device")) if device else None
    rate = args.gpu_rate or gpu_rate(Path("runs/gpu_check.json"), args.recipe) or 1000.0
    report(rows, rate, finish, args.batch)
    if args.out:
        args.out.write_text(json.dumps({"rows": [vars(r) | {"per_core": r.per_core} for r in rows],
                                        "finish_ms_per_batch_cpu": finish, "gpu_rate": rate}, indent=1))


def report(rows: list[Row], rate: float, finish_ms: float | None, batch: int) -> None:
    base = {r.workers: r.per_core for r in rows if r.name == "openvtp sample"}
    anchor = {r.workers: r.per_core for r in rows if r.name == "anchor"}
    print(f"\n{'path':<21} {'workers':>7} {'images/s':>9} {'spread':>7} {'per core':>9} {'x sample':>9} {'x anchor':>9} "
          f"{'MB/batch':>9} {'cores/GPU':>10}")
    for r in rows:
        ratio = (lambda ref: f"{r.per_core / ref[r.workers]:.2f}" if r.workers in ref else "-")
        print(f"{r.name:<21} {r.workers:>7} {r.images_per_s:>9.1f} {r.spread:>7.0%} {r.per_core:>9.1f} {ratio(base):>9} "
              f"{ratio(anchor):>9} {r.batch_mb:>9.1f} {rate / r.per_core:>10.1f}")
    print(f"images/s: median of the repeats; spread: their range over the median; "
          f"cores/GPU: loader cores one GPU needs at {rate:.0f} images/s")
    if finish_ms is not None:
        print(f"openvtp device: finishing a batch's views took {finish_ms:.0f} ms on this CPU, one thread "
              f"({batch / finish_ms * 1e3:.0f} images/s); on a GPU it runs as batched kernels")


if __name__ == "__main__":
    main()
