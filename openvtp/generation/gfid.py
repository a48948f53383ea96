"""gFID: sample N images from a trained DiT, decode them with the tokenizer, FID against a reference.

The reference is ADM's reference batch (or any .npz with `mu`/`sigma`, or with `arr_0` images),
or an image folder; features come from the standard FID Inception of `openvtp.eval.fid`.
Images are featurised batch by batch, so N = 50k never sits in memory; under torchrun each rank
makes a disjoint part and the features are gathered on rank 0.

Beside FID, the other numbers of ADM's evaluator, from the same Inception forward: the
Inception Score as ADM computes it (softmax of `logits_unbiased`, contiguous chunks of 5000
images, mean), sFID (Frechet distance of the first 7 channels of `mixed_6/conv`, the reference's
stored `mu_s`/`sigma_s` when it has them, as ADM's batches do) and precision/recall
(Kynkaenniemi et al. 2019, k = 3, torch-fidelity >= 0.4's function on the pool features; needs
reference images, a folder or an .npz with `arr_0`, not only statistics). Labels are exactly
class-balanced by default, or drawn uniformly at random as LightningDiT does (`fid.labels`).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn

from openvtp.data.image_io import to_uint8
from openvtp.errors import OpenVTPError
from openvtp.eval.fid import (FeatureExtractor, ImageSet, InceptionFeatures, feature_statistics, frechet_distance,
                              inception_score)
from openvtp.generation.config import FIDConfig, SampleConfig, validate
from openvtp.generation.sample import fid_labels, iter_samples, load_dit, load_tokenizer, write_npz
from openvtp.runtime import dist


def batch_features(extractor: FeatureExtractor, images: torch.Tensor) -> dict[str, np.ndarray]:
    """{"pool", and with the FID Inception "logits" and "spatial"} of a batch, from one forward."""
    if hasattr(extractor, "extract_all"):
        return {k: v.numpy() for k, v in extractor.extract_all(images).items()}
    return {"pool": extractor.extract([images], total=len(images)).numpy()}


def stored_statistics(reference: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"pool": (mu, sigma), "spatial": (mu_s, sigma_s)}, whichever the reference .npz stores (ADM's batches: both)."""
    path = Path(reference)
    out = {}
    if path.suffix == ".npz" and path.is_file():
        with np.load(path, allow_pickle=False) as data:
            for name, (mu, sigma) in (("pool", ("mu", "sigma")), ("spatial", ("mu_s", "sigma_s"))):
                if mu in data and sigma in data:
                    out[name] = (data[mu].astype(np.float64), data[sigma].astype(np.float64))
    return out


def reference_features(reference: str | Path, extractor: FeatureExtractor, batch_size: int = 50
                       ) -> dict[str, np.ndarray] | None:
    """Features of the reference images (a folder, or an .npz with `arr_0`); None for a statistics-only .npz."""
    path = Path(reference)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            if "arr_0" not in data:
                return None
    elif not path.is_dir():
        raise OpenVTPError(f"FID reference must be an .npz or an image folder, got {path}")
    images = ImageSet(path, batch_size)
    parts = [batch_features(extractor, batch) for batch in images]
    if not parts:
        raise OpenVTPError(f"no images in the FID reference {path}")
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _gather(feats: np.ndarray) -> np.ndarray:
    if not dist.is_dist():
        return feats
    parts = [None] * dist.world_size()
    torch_dist.all_gather_object(parts, feats)
    return np.concatenate(parts)


def gfid(
    checkpoint: str | Path,
    reference: str | Path | None = None,
    num_samples: int | None = None,
    overrides: SampleConfig | None = None,
    tokenizer: nn.Module | str | None = None,
    fid_weights: str = "",
    extractor: FeatureExtractor | None = None,
    save_npz: str | Path | None = None,
    device: str = "auto",
    progress: bool = True,
    fid: FIDConfig | None = None,
) -> dict:
    """FID of `num_samples` samples of a DiT checkpoint against `reference`.

    Unset arguments fall back to the checkpoint's config (sample.*, fid.*, data.tokenizer);
    `fid` replaces the checkpoint's fid settings (labels, IS chunk size, batch size).
    `extractor` replaces the Inception (tests). save_npz also writes the samples in ADM's
    layout. Returns {"fid", "sfid", "inception_score", "inception_score_std", "precision",
    "recall", "num_samples", "labels", "reference", "sample": settings} (IS and sFID need the
    FID Inception, sFID reference images or stored `mu_s`/`sigma_s`, precision/recall reference
    images; otherwise they are None); every rank gets the same dict.
    """
    info = dist.info(device)
    model, cfg, stats = load_dit(checkpoint, overrides.use_ema if overrides else None, info.device)
    scfg = overrides or cfg.sample
    if num_samples is not None:
        scfg = replace(scfg, num_samples=num_samples)
    fcfg = fid or cfg.fid
    validate(replace(cfg, sample=scfg, fid=fcfg))
    reference = reference or fcfg.reference
    if not reference:
        raise OpenVTPError("no FID reference: pass one (ADM .npz, stats .npz or image folder) or set fid.reference")
    if extractor is None:
        extractor = InceptionFeatures(fid_weights or fcfg.weights, info.device, fcfg.batch, progress=False)
    decoder = tokenizer.to(info.device).eval() if isinstance(tokenizer, nn.Module) \
        else load_tokenizer(tokenizer or cfg.data.tokenizer, info.device)

    labels = fid_labels(fcfg.labels, scfg.num_samples, model.num_classes, scfg.seed)
    mine = torch.arange(len(labels))[dist.rank()::dist.world_size()]
    feats, kept, kept_idx = [], [], []
    for idx, _, images in iter_samples(model, decoder.decode, stats, labels, scfg, cfg.data.latent_multiplier,
                                       mine, progress and dist.is_main()):
        feats.append(batch_features(extractor, images))
        feats[-1]["index"] = idx.numpy()
        if save_npz:
            kept.append(to_uint8(images))
            kept_idx.append(idx.numpy())
    # every rank's features in sample order: contiguous IS chunks must not depend on the number of processes
    feats = {k: _gather(np.concatenate([f[k] for f in feats])) for k in feats[0]}
    order = np.argsort(feats.pop("index"), kind="stable")
    feats = {k: v[order] for k, v in feats.items()}
    result = None
    if dist.is_main():
        from torch_fidelity.metric_prc import calculate_precision_recall_part

        # ADM's evaluator: stored statistics when the reference has them, its images' features for the rest
        stored = stored_statistics(reference)
        ref_feats = reference_features(reference, extractor, fcfg.batch)
        ref_stats = {k: stored[k] if k in stored else feature_statistics(ref_feats[k])
                     for k in ("pool", "spatial") if k in stored or (ref_feats is not None and k in ref_feats)}
        if "pool" not in ref_stats:
            raise OpenVTPError(f"{reference} holds neither `mu`/`sigma` nor `arr_0` images")
        result = {"fid": frechet_distance(*feature_statistics(feats["pool"]), *ref_stats["pool"]), "sfid": None,
                  "inception_score": None, "inception_score_std": None, "precision": None, "recall": None,
                  "num_samples": int(len(feats["pool"])), "labels": fcfg.labels, "reference": str(reference),
                  "sample": vars(scfg)}
        if "spatial" in feats and "spatial" in ref_stats:
            result["sfid"] = frechet_distance(*feature_statistics(feats["spatial"]), *ref_stats["spatial"])
        if "logits" in feats:
            result["inception_score"], result["inception_score_std"] = inception_score(feats["logits"],
                                                                                       fcfg.is_split_size)
        k = 3  # ADM's evaluator and Kynkaenniemi et al.
        if ref_feats is not None and min(len(ref_feats["pool"]), len(feats["pool"])) > k:
            # torch-fidelity >= 0.4: generated features first (0.3 had the two swapped)
            result["precision"], result["recall"] = calculate_precision_recall_part(
                torch.from_numpy(feats["pool"]), torch.from_numpy(ref_feats["pool"]), neighborhood=k)
    if save_npz:
        images = _gather(np.concatenate(kept))
        order = _gather(np.concatenate(kept_idx))
        if dist.is_main():
            write_npz(save_npz, images[np.argsort(order)], labels.numpy())
    if dist.is_dist():
        box = [result]
        torch_dist.broadcast_object_list(box, src=0)
        result = box[0]
    return result
