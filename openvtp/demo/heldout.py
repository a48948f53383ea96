"""Quick evaluation on the embedded held-out scenes: what the demo and in-training eval report.

Zero-shot shape and colour accuracy on held-out images of (shape, colour) pairs never seen in
training, kNN shape accuracy (train scenes as the memory bank), linear probes on the CLS and on the
latent, and reconstruction PSNR next to the per-patch mean-colour baseline that a tokenizer must
beat to have learnt anything.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from openvtp.demo.scenes import COLOURS, SHAPES, CaptionedScenes, colour_prompts, shape_prompts
from openvtp.models import VTPModel

from openvtp.eval.knn import knn_classify
from openvtp.eval.linear_probe import linear_probe_simple
from openvtp.eval.recon_metrics import patch_mean_baseline, psnr
from openvtp.eval.zero_shot import build_zero_shot_classifier, zero_shot_accuracy

# the probes: a few hundred AdamW steps on a few thousand features, a second on CPU
PROBE_EPOCHS, PROBE_BATCH, PROBE_LR = 30, 256, 1e-3


def stack_scenes(ds: CaptionedScenes, n: int) -> dict[str, torch.Tensor]:
    """The first n scenes as {"images": (n, 3, H, W) in [0, 1], "shape", "colour", "count": (n,)}."""
    items = [ds[i] for i in range(min(n, len(ds)))]
    return {"images": torch.stack([it["image"] for it in items]).float().div(255),
            **{k: torch.tensor([it[k] for it in items]) for k in ("shape", "colour", "count")}}


def embedded_eval(model: VTPModel, n_images: int = 256, size: int | None = None, seed: int = 0,
                  batch: int = 64, n_train: int = 2000, zero_shot: bool = True) -> dict[str, float]:
    """Held-out figures of a tokenizer, on `n_images` scenes of the (shape, colour) pairs never seen in
    training, drawn with `seed`; `n_train` train scenes are the kNN bank and the probes' training set.

    zeroshot_{shape,colour} (with a text tower, unless `zero_shot` is false: one never trained), knn_shape
    (last-block CLS), probe_{shape,colour}_{cls,latent} (a linear classifier on the CLS or on the
    flattened latent a generator sees, trained on seen pairs and tested on the unseen ones: high only
    where the attribute is encoded apart from the other) and the same tested on `n_images` new scenes of
    the seen pairs (`..._seen`: how much of the attribute the features carry at all), psnr (with a
    decoder) next to the per-patch mean-colour baseline. Accuracies in percent.
    """
    was_training = model.training
    model.eval()
    size = size or model.config.image_size
    held = stack_scenes(CaptionedScenes("heldout", size=size, length=n_images, seed=seed), n_images)
    bank = stack_scenes(CaptionedScenes("train", size=size, length=n_train, seed=seed + 1), n_train)
    seen = stack_scenes(CaptionedScenes("train", size=size, length=n_images, seed=seed + 2), n_images)
    out: dict[str, float] = {"images": float(len(held["images"]))}
    with torch.inference_mode():
        if zero_shot and model.config.train_clip:
            out.update(_zero_shot(model, held, batch))
        feats = {split: tokenizer_features(model, data["images"], batch)
                 for split, data in (("held", held), ("bank", bank), ("seen", seen))}
        out["knn_shape"] = knn_classify(F.normalize(feats["bank"]["cls"], dim=-1), bank["shape"],
                                        F.normalize(feats["held"]["cls"], dim=-1), held["shape"], k=20,
                                        num_classes=len(SHAPES))["top1"]
    for attr, n_cls in (("shape", len(SHAPES)), ("colour", len(COLOURS))):
        for name in feats["bank"]:
            for test, data, suffix in (("held", held, ""), ("seen", seen, "_seen")):
                out[f"probe_{attr}_{name}{suffix}"] = linear_probe_simple(
                    feats["bank"][name], bank[attr], feats[test][name], data[attr], num_classes=n_cls,
                    epochs=PROBE_EPOCHS, batch_size=PROBE_BATCH, lr=PROBE_LR, device="cpu", seed=seed)["top1"]
    if model.config.train_reconstruction:
        out.update(reconstruction_psnr(model, held["images"], batch))
    model.train(was_training)
    return out


def _batched(fn, x: torch.Tensor, batch: int, device) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch].to(device)).float().cpu() for i in range(0, len(x), batch)])


def tokenizer_features(model: VTPModel, images: torch.Tensor, batch: int) -> dict[str, torch.Tensor]:
    """{"cls": last-block CLS, "latent": the flattened reconstruction latent (only with a decoder)}."""
    device = model.trunk.cls_token.device
    out = {"cls": _batched(lambda x: model.get_last_layer_feature(model.normalize(x))["cls_token"], images, batch,
                           device)}
    if model.config.train_reconstruction:
        out["latent"] = _batched(lambda x: model.encode(x).flatten(1), images, batch, device)
    return out


def _zero_shot(model: VTPModel, held: dict[str, torch.Tensor], batch: int) -> dict[str, float]:
    device = model.trunk.cls_token.device
    img = _batched(model.encode_image, held["images"], batch, device)
    out = {}
    for attr, (names, templates), n_cls in (("shape", shape_prompts(), len(SHAPES)),
                                            ("colour", colour_prompts(), len(COLOURS))):
        clf = build_zero_shot_classifier(lambda t: model.get_clip_text_feature(t.to(device)), names, templates,
                                         model.tokenize).float().cpu()
        out[f"zeroshot_{attr}"] = zero_shot_accuracy(img, clf, held[attr], topk=(1,))["top1"]
        out[f"zeroshot_{attr}_chance"] = 100.0 / n_cls
    return out


@torch.inference_mode()
def reconstruction_psnr(model: VTPModel, images: torch.Tensor, batch: int = 64) -> dict[str, float]:
    """Mean PSNR of encode -> decode on `images` (n, 3, H, W) in [0, 1], and of the per-patch
    mean-colour baseline at the model's patch size. Pre-training and stage 2 report this."""
    device = model.trunk.cls_token.device
    rec = torch.cat([model.decode(model.encode(images[i:i + batch].to(device))).float().cpu()
                     for i in range(0, len(images), batch)])
    base = patch_mean_baseline(images, model.config.vision_patch_size)
    return {"psnr": psnr(images, rec).mean().item(), "psnr_patch_mean_baseline": psnr(images, base).mean().item()}


@torch.inference_mode()
def embedded_recon_examples(model: VTPModel, n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(originals, reconstructions) in [0, 1] for a PNG grid."""
    held = stack_scenes(CaptionedScenes("heldout", size=model.config.image_size, length=n, seed=seed), n)["images"]
    device = model.trunk.cls_token.device
    return held, model.decode(model.encode(held.to(device))).float().cpu()
