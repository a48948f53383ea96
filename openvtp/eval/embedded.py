"""Quick evaluation on the embedded held-out scenes: what the demo and in-training eval report.

Zero-shot shape and colour accuracy on held-out images of (shape, colour) pairs never seen in
training, kNN shape accuracy (train scenes as the memory bank), and reconstruction PSNR next
to the per-patch mean-colour baseline that a tokenizer must beat to have learnt anything.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from openvtp.data.scenes import COLOURS, SHAPES, CaptionedScenes, colour_prompts, shape_prompts
from openvtp.models import VTPModel

from .knn import knn_classify
from .recon_metrics import patch_mean_baseline, psnr
from .zero_shot import build_zero_shot_classifier, zero_shot_accuracy


def stack_scenes(ds: CaptionedScenes, n: int) -> dict[str, torch.Tensor]:
    """The first n scenes as {"images": (n, 3, H, W) in [0, 1], "shape", "colour", "count": (n,)}."""
    items = [ds[i] for i in range(min(n, len(ds)))]
    return {"images": torch.stack([it["image"] for it in items]).float().div(255),
            **{k: torch.tensor([it[k] for it in items]) for k in ("shape", "colour", "count")}}


@torch.inference_mode()
def embedded_eval(model: VTPModel, n_images: int = 256, size: int | None = None, seed: int = 0,
                  batch: int = 64, knn_train: int = 512) -> dict[str, float]:
    was_training = model.training
    model.eval()
    size = size or model.config.image_size
    device = model.trunk.cls_token.device
    held = stack_scenes(CaptionedScenes("heldout", size=size, length=n_images, seed=seed), n_images)
    out: dict[str, float] = {"images": float(len(held["images"]))}

    def batched(fn, x):
        return torch.cat([fn(x[i:i + batch].to(device)).float().cpu() for i in range(0, len(x), batch)])

    feats = batched(lambda x: model.get_last_layer_feature(model.normalize(x))["cls_token"], held["images"])
    if model.config.train_clip:
        img = batched(model.encode_image, held["images"])
        for attr, (names, templates), n_cls in (("shape", shape_prompts(), len(SHAPES)),
                                                ("colour", colour_prompts(), len(COLOURS))):
            clf = build_zero_shot_classifier(lambda t: model.get_clip_text_feature(t.to(device)), names, templates,
                                             model.tokenize).float().cpu()
            out[f"zeroshot_{attr}"] = zero_shot_accuracy(img, clf, held[attr], topk=(1,))["top1"]
            out[f"zeroshot_{attr}_chance"] = 100.0 / n_cls
    bank = stack_scenes(CaptionedScenes("train", size=size, length=knn_train, seed=seed + 1), knn_train)
    bank_feats = batched(lambda x: model.get_last_layer_feature(model.normalize(x))["cls_token"], bank["images"])
    out["knn_shape"] = knn_classify(F.normalize(bank_feats, dim=-1), bank["shape"], F.normalize(feats, dim=-1),
                                    held["shape"], k=20, num_classes=len(SHAPES))["top1"]
    if model.config.train_reconstruction:
        out.update(reconstruction_psnr(model, held["images"], batch))
    model.train(was_training)
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
