"""A tokenizer's figures on a labelled set's held-out split: what `embedded_eval` is for the scenes.

Zero-shot class accuracy (the class names in the caption templates), linear probes for the class on the last-block
CLS and on the flattened latent the DiT sees (trained on train-split features), kNN on the CLS, and reconstruction
PSNR and SSIM next to the per-patch mean-colour baseline a tokenizer must beat. Accuracies in percent.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import structural_similarity_index_measure

from openvtp.eval.knn import knn_classify
from openvtp.eval.linear_probe import linear_probe_simple
from openvtp.eval.recon_metrics import patch_mean_baseline, psnr
from openvtp.eval.zero_shot import build_zero_shot_classifier, zero_shot_accuracy
from openvtp.models import VTPModel

from .heldout import PROBE_BATCH, PROBE_EPOCHS, PROBE_LR, tokenizer_features
from .labelled import TEMPLATES, LabelledSet

PROBE_TRAIN = 2000  # train images whose features train the probes and fill the kNN bank, as embedded_eval's


def labelled_eval(model: VTPModel, data: LabelledSet, n_images: int, zero_shot: bool, seed: int = 0,
                  batch: int = 64) -> dict[str, float]:
    """Figures on the first `n_images` held-out images (the held-out split is in a seeded random order); zero-shot
    only with a trained text tower (`zero_shot`)."""
    was_training = model.training
    model.eval()
    held, labels = data.heldout_images[:n_images].float() / 255, data.heldout_labels[:n_images]
    bank, bank_labels = data.train_images[:PROBE_TRAIN].float() / 255, data.train_labels[:PROBE_TRAIN]
    c = data.num_classes
    out: dict[str, float] = {"images": float(len(held))}
    with torch.inference_mode():
        if zero_shot and model.config.train_clip:
            device = model.trunk.cls_token.device
            img = torch.cat([model.encode_image(x.to(device)).float().cpu() for x in held.split(batch)])
            clf = build_zero_shot_classifier(lambda t: model.get_clip_text_feature(t.to(device)), data.classnames,
                                             list(TEMPLATES), model.tokenize).float().cpu()
            out["zeroshot_class"] = zero_shot_accuracy(img, clf, labels, topk=(1,))["top1"]
            out["zeroshot_class_chance"] = 100.0 / c
        feats = {"held": tokenizer_features(model, held, batch), "bank": tokenizer_features(model, bank, batch)}
        out["knn_class"] = knn_classify(F.normalize(feats["bank"]["cls"], dim=-1), bank_labels,
                                        F.normalize(feats["held"]["cls"], dim=-1), labels, k=20, num_classes=c)["top1"]
    for name in feats["bank"]:
        out[f"probe_class_{name}"] = linear_probe_simple(
            feats["bank"][name], bank_labels, feats["held"][name], labels, num_classes=c, epochs=PROBE_EPOCHS,
            batch_size=PROBE_BATCH, lr=PROBE_LR, device="cpu", seed=seed)["top1"]
    if model.config.train_reconstruction:
        out.update(reconstruction_figures(model, held, batch))
    model.train(was_training)
    return out


@torch.inference_mode()
def reconstruction_figures(model: VTPModel, images01: torch.Tensor, batch: int = 64) -> dict[str, float]:
    """Mean PSNR and SSIM (torchmetrics' Gaussian window, sigma 1.5, as `openvtp eval`) of encode -> decode, and of
    the per-patch mean-colour baseline at the model's patch size."""
    device = model.trunk.cls_token.device
    rec = torch.cat([model.decode(model.encode(x.to(device))).float().cpu().clamp(0, 1) for x in images01.split(batch)])
    base = patch_mean_baseline(images01, model.config.vision_patch_size)

    def ssim(x: torch.Tensor) -> float:
        return structural_similarity_index_measure(x, images01, data_range=1.0, reduction="none").mean().item()

    return {"psnr": psnr(images01, rec).mean().item(), "psnr_patch_mean_baseline": psnr(images01, base).mean().item(),
            "ssim": ssim(rec), "ssim_patch_mean_baseline": ssim(base)}
