"""`openvtp eval --protocol vtp`: the computations of the VTP repository's `tools/` scripts where they differ from
openvtp's own protocol.

- Linear probe (`test_linear_probing_hf.py`): CLS of the last 1 or 4 blocks plus the average-pooled patch tokens,
  13 learning rates x 2 variants trained at once with SGD momentum 0.9 and a cosine schedule per iteration, batch
  128, lr scaled by batch / 256; train images random-resized-cropped (bicubic) and flipped afresh every step, eval
  images resized to 256 and centre-cropped to 224; "epochs" of 1250 iterations, the classifiers scored on the eval
  split after each, the best (epoch, classifier) reported.
- Reconstruction (`test_reconstruction_hf.py`): encoder in the eval's precision, decoder in float32; metrics on
  the float reconstructions (PSNR 20 log10(255 / RMSE), torchmetrics SSIM, LPIPS-VGG); rFID with pytorch-fid
  between the originals and reconstructions saved as PNGs truncated to uint8 (`(x * 255).astype(uint8)`).

Zero-shot (`test_zero_shot_hf.py`) needs no code here: a bilinear squash resize and float32 throughout.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from openvtp.constants import IMAGENET_MEAN, IMAGENET_STD

from .datasets import READ_ERRORS, EvalSet
from .linear_probe import DINOV2_LRS, StackedProbes, best_probe
from .preprocess import random_resized_crop_flip

log = logging.getLogger(__name__)

PROBE_BATCH = 128
PROBE_EPOCH_LENGTH = 1250  # iterations per "epoch" (an infinite sampler cut into blocks), not passes over the data
PROBE_BLOCKS = (1, 4)
PROBE_CROP_RATIO = 224 / 256  # crop 224 of a model trained at 256; the eval resize is crop / 0.875 = 256
PROBE_CROP_PCT = 0.875


def probe_crop_size(size: int, patch: int) -> int:
    """The probe's crop for a model of resolution `size`: 224 at 256, in general 7/8 of it rounded down to a
    multiple of the patch size (at least one patch)."""
    return max(patch, int(size * PROBE_CROP_RATIO) // patch * patch)


def probe_epoch_length(n_train: int, batch: int, requested: int = 0) -> int:
    """VTP's 1250 iterations, or one pass over a smaller train split (drop-last), or what was asked."""
    return requested if requested > 0 else max(1, min(PROBE_EPOCH_LENGTH, n_train // batch))


def seed_of(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint32)[0])


def probe_stream(n: int, steps: int, batch: int, seed: int) -> list[list[tuple[int, int]]]:
    """`steps` batches of (position, augmentation seed): consecutive permutations of the train split (VTP's
    infinite random sampler), each permutation and each sample's crop and flip a function of the seed alone."""
    order: list[int] = []
    epoch = 0
    while len(order) < steps * batch:
        order += torch.randperm(n, generator=torch.Generator().manual_seed(seed_of(seed, 1, epoch))).tolist()
        epoch += 1
    return [[(order[s * batch + j], seed_of(seed, 2, s, j)) for j in range(batch)] for s in range(steps)]


class _Augmented(Dataset):
    """Train images random-resized-cropped and flipped with the seed the stream gives them; unreadable ones are
    None (left out of the batch)."""

    def __init__(self, evalset: EvalSet, crop: int):
        self.evalset, self.crop = evalset, crop

    def __len__(self) -> int:
        return len(self.evalset)

    def __getitem__(self, item: tuple[int, int]):
        pos, seed = item
        try:
            return pos, random_resized_crop_flip(self.evalset.pil(pos), self.crop, seed)
        except READ_ERRORS as e:
            log.warning("eval: skipped unreadable image %s (%s)", self.evalset.where(pos), type(e).__name__)
            return pos, None


def _collate(items):
    kept = [(pos, img) for pos, img in items if img is not None]
    if not kept:
        return torch.zeros(0, dtype=torch.long), None
    return torch.tensor([p for p, _ in kept]), torch.stack([img for _, img in kept])


def linear_probe_vtp(
    features: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    train: EvalSet,
    train_labels: torch.Tensor,
    test_variants: dict[str, torch.Tensor],
    test_labels: torch.Tensor,
    num_classes: int,
    crop: int,
    epochs: int = 10,
    batch_size: int = PROBE_BATCH,
    epoch_length: int = 0,
    lrs: tuple[float, ...] = DINOV2_LRS,
    workers: int = 0,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Train VTP's probes on augmented train images, score them after every epoch, report the best.

    Args:
        features: uint8 images (B, 3, crop, crop) -> {variant: (B, D_v)} on any device, the same function that
            made `test_variants` (the eval split's features: fixed, so computed once).
        train_labels: (len(train),) labels of every train image.
    Returns {"top1", "top5", "variant", "lr", "scaled_lr", "best_epoch", "last_epoch_top1", "epoch_top1" (best
    classifier per epoch), "all_top1" (every classifier at the best epoch), "epoch_length", "steps", "batch",
    "train_images_skipped"}.
    """
    device = torch.device(device)
    batch_size = min(batch_size, len(train))
    epoch_length = probe_epoch_length(len(train), batch_size, epoch_length)
    steps = epochs * epoch_length
    gen = torch.Generator().manual_seed(seed)
    dims = {k: v.shape[1] for k, v in test_variants.items()}
    probes = StackedProbes(dims, num_classes, torch.tensor(lrs) * batch_size / 256, 0.9, gen, device)
    loader = DataLoader(_Augmented(train, crop), batch_sampler=probe_stream(len(train), steps, batch_size, seed),
                        num_workers=workers, collate_fn=_collate)
    best, epoch_top1, skipped = None, [], 0
    for step, (positions, images) in enumerate(tqdm(loader, total=steps, desc="vtp probe", disable=not progress)):
        skipped += batch_size - len(positions)
        if images is not None:
            feats = {k: v.to(device).float() for k, v in features(images).items()}
            probes.step(feats, train_labels[positions].to(device), 0.5 * (1 + math.cos(math.pi * step / steps)))
        if (step + 1) % epoch_length == 0:
            top, all_top1 = best_probe(probes.accuracy(test_variants, test_labels, device), lrs)
            epoch_top1.append(top["top1"])
            if best is None or top["top1"] > best["top1"]:  # VTP keeps the first best epoch
                best = top | {"best_epoch": len(epoch_top1) - 1, "all_top1": all_top1}
    return best | {"scaled_lr": best["lr"] * batch_size / 256, "last_epoch_top1": epoch_top1[-1],
                   "epoch_top1": epoch_top1, "epoch_length": epoch_length, "steps": steps, "batch": batch_size,
                   "train_images_skipped": skipped}


def vtp_denormalize(x: torch.Tensor) -> torch.Tensor:
    """torchvision's Normalize(-mean / std, 1 / std), op for op as VTP's script undoes the normalisation: the
    rounding decides which pixel values truncate one step lower."""
    mean = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)], dtype=x.dtype, device=x.device)
    std = torch.tensor([1 / s for s in IMAGENET_STD], dtype=x.dtype, device=x.device)
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def truncate_uint8(images01: torch.Tensor) -> torch.Tensor:
    """`(x * 255).astype(np.uint8)` as VTP's script saves PNGs: truncation, not rounding."""
    return (images01.float() * 255.0).to(torch.uint8)


def recon_compute(model, device: torch.device, amp, lpips_net=None, inception=None, patch: int = 16
                  ) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """uint8 images -> per-image "psnr", "ssim", "lpips", "psnr_patch_mean" and pytorch-fid pool features of the
    truncated originals and reconstructions ("inception_orig", "inception_recon"), VTP's script's way.

    amp: the autocast context the encoder runs under (the eval's precision: by default bf16 on CUDA, as the script).
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    from .recon_metrics import patch_mean_baseline

    def vtp_psnr(a01: torch.Tensor, b01: torch.Tensor) -> torch.Tensor:
        mse = ((a01 * 255.0 - b01 * 255.0) ** 2).flatten(1).mean(1)
        return 20 * torch.log10(255.0 / mse.sqrt())

    def compute(images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = model.normalize(images.to(device).float() / 255)
        with amp:
            latents = model.get_reconstruction_latents(x)
        rec01 = vtp_denormalize(model.get_latents_decoded_images(latents.float()).float()).clamp(0, 1)
        orig01 = vtp_denormalize(x).clamp(0, 1)
        base01 = patch_mean_baseline(orig01, patch)
        out = {"psnr": vtp_psnr(orig01, rec01), "psnr_patch_mean": vtp_psnr(orig01, base01),
               "ssim": structural_similarity_index_measure(orig01, rec01, data_range=1.0, reduction="none")}
        if lpips_net is not None:
            out["lpips"] = lpips_net(orig01, rec01, normalize=True).flatten()  # its [-1, 1] inputs, as VTP's
        out = {k: v.float().cpu() for k, v in out.items()}
        if inception is not None:
            out["inception_orig"] = inception.pool_features_pytorch_fid(truncate_uint8(orig01).cpu())
            out["inception_recon"] = inception.pool_features_pytorch_fid(truncate_uint8(rec01).cpu())
        return out

    return compute
