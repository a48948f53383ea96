"""gFID: sample N images from a trained DiT, decode them with the tokenizer, FID against a reference.

The reference is ADM's reference batch (or any .npz with `mu`/`sigma`, or with `arr_0` images),
or an image folder; features come from the standard FID Inception of `openvtp.eval.fid`.
Images are featurised batch by batch, so N = 50k never sits in memory; under torchrun each rank
makes a disjoint part and the features are gathered on rank 0.

Inception Score and precision/recall come from torch-fidelity's metric functions applied to the
features computed here (its own entry points would fetch and unpickle the weights themselves):
IS from the Inception's `logits_unbiased` (10 splits), precision/recall (Kynkaenniemi et al. 2019,
k = 3, as ADM's evaluator) on the pool features, which needs reference images (a folder, or an
.npz with `arr_0` such as ADM's reference batch), not only mu/sigma.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn

from openvtp.errors import OpenVTPError
from openvtp.eval.fid import (FeatureExtractor, InceptionFeatures, feature_statistics, frechet_distance,
                              image_set_features, load_stats, to_uint8)
from openvtp.generation.config import SampleConfig, validate
from openvtp.generation.sample import (balanced_labels, iter_samples, load_dit, load_tokenizer, to_uint8_hwc,
                                       write_npz)
from openvtp.train import dist


def reference_statistics(reference: str | Path, extractor: FeatureExtractor, batch_size: int = 50
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of a reference: stats / ADM .npz, or a folder of images."""
    path = Path(reference)
    if path.is_dir():
        feats, _ = image_set_features(path, extractor, batch_size)
        return feature_statistics(feats)
    if path.suffix == ".npz":
        return load_stats(path, extractor, batch_size)
    raise OpenVTPError(f"FID reference must be an .npz or an image folder, got {path}")


def reference_features(reference: str | Path, extractor: FeatureExtractor, batch_size: int = 50
                       ) -> np.ndarray | None:
    """Pool features of the reference images (folder, or .npz with `arr_0`); None for statistics only."""
    path = Path(reference)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            if "arr_0" not in data:
                return None
    feats, _ = image_set_features(path, extractor, batch_size)
    return np.asarray(feats, dtype=np.float64)


def _has_statistics(reference: str | Path) -> bool:
    path = Path(reference)
    if path.suffix != ".npz":
        return False
    with np.load(path, allow_pickle=False) as data:
        return "mu" in data and "sigma" in data


@torch.inference_mode()
def inception_logits(extractor: FeatureExtractor, images01: torch.Tensor) -> np.ndarray | None:
    """(B, 1008) `logits_unbiased` of the FID Inception for IS; None for other extractors."""
    model = getattr(extractor, "model", None)
    if not isinstance(extractor, InceptionFeatures) or not hasattr(model, "features_list"):
        return None
    saved, model.features_list = model.features_list, ["logits_unbiased"]
    try:
        out = [model(chunk.to(extractor.device))[0].double().cpu() for chunk in to_uint8(images01).split(
            extractor.batch_size)]
    finally:
        model.features_list = saved
    return torch.cat(out).numpy()


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
    inception: str = "",
    extractor: FeatureExtractor | None = None,
    save_npz: str | Path | None = None,
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """FID of `num_samples` class-balanced samples of a DiT checkpoint against `reference`.

    Unset arguments fall back to the checkpoint's config (sample.*, fid.reference, fid.inception,
    data.tokenizer). `extractor` replaces the Inception (tests). save_npz also writes the samples
    in ADM's layout. Returns {"fid", "inception_score", "inception_score_std", "precision",
    "recall", "num_samples", "reference", "sample": settings} (IS needs the FID Inception,
    precision/recall reference images; otherwise they are None); every rank gets the same dict.
    """
    info = dist.init(device)
    model, cfg, stats = load_dit(checkpoint, overrides.use_ema if overrides else None, info.device)
    scfg = overrides or cfg.sample
    if num_samples is not None:
        scfg = replace(scfg, num_samples=num_samples)
    validate(replace(cfg, sample=scfg))
    reference = reference or cfg.fid.reference
    if not reference:
        raise OpenVTPError("no FID reference: pass one (ADM .npz, stats .npz or image folder) or set fid.reference")
    if extractor is None:
        extractor = InceptionFeatures(inception or cfg.fid.inception, info.device, cfg.fid.batch_size,
                                      progress=False)
    decoder = tokenizer.to(info.device).eval() if isinstance(tokenizer, nn.Module) \
        else load_tokenizer(tokenizer or cfg.data.tokenizer, info.device)

    labels = balanced_labels(scfg.num_samples, model.num_classes)
    mine = torch.arange(len(labels))[dist.rank()::dist.world_size()]
    feats, logits, kept, kept_idx = [], [], [], []
    for idx, _, images in iter_samples(model, decoder.decode, stats, labels, scfg, cfg.data.latent_multiplier,
                                       mine, progress and dist.is_main()):
        feats.append(extractor.extract([images], total=len(images)).numpy())
        logits.append(inception_logits(extractor, images))
        if save_npz:
            kept.append(to_uint8_hwc(images))
            kept_idx.append(idx.numpy())
    feats = _gather(np.concatenate(feats))
    logits = None if logits[0] is None else _gather(np.concatenate(logits))
    result = None
    if dist.is_main():
        from torch_fidelity.metric_isc import isc_features_to_metric
        from torch_fidelity.metric_prc import calculate_precision_recall_part

        # ADM's evaluator: stored mu/sigma when the reference has them, its images' features for precision/recall
        ref_feats = reference_features(reference, extractor, cfg.fid.batch_size)
        if ref_feats is not None and not _has_statistics(reference):
            mu_ref, sigma_ref = feature_statistics(ref_feats)
        else:
            mu_ref, sigma_ref = reference_statistics(reference, extractor, cfg.fid.batch_size)
        fid = frechet_distance(*feature_statistics(feats), mu_ref, sigma_ref)
        result = {"fid": fid, "inception_score": None, "inception_score_std": None, "precision": None,
                  "recall": None, "num_samples": int(len(feats)), "reference": str(reference), "sample": vars(scfg)}
        if logits is not None:
            isc = isc_features_to_metric(torch.from_numpy(logits), splits=min(10, len(logits)))
            result["inception_score"], result["inception_score_std"] = isc["inception_score_mean"], \
                isc["inception_score_std"]
        k = 3  # ADM's evaluator and Kynkaenniemi et al.
        if ref_feats is not None and min(len(ref_feats), len(feats)) > k:
            result["precision"], result["recall"] = calculate_precision_recall_part(
                torch.from_numpy(feats), torch.from_numpy(ref_feats), neighborhood=k)
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

