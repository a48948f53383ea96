"""Why a demo tokenizer's zero-shot shape accuracy is what it is: image side vs text side.

    python benchmarks/shape_diagnostics.py runs/demo/tokenizer [more tokenizers ...]

For each tokenizer, on held-out scenes of the unseen (shape, colour) pairs:
- `text`: the zero-shot shape classifier of `openvtp demo` / `openvtp eval` (prompt templates);
- `image-centroid`: the same images classified by the nearest mean CLIP image embedding of each
  shape over train scenes; below chance means the image embedding is led by colour (a shape's
  centroid carries the colours it was seen in, never the held-out one);
- the two shape prompts whose text embeddings are closest (cosine near 1: the classifier cannot
  tell them apart), and per shape the cosine between its prompt embedding and its image centroid.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from openvtp.data.scenes import SHAPES, CaptionedScenes, shape_prompts
from openvtp.eval.embedded import stack_scenes
from openvtp.eval.zero_shot import build_zero_shot_classifier, zero_shot_accuracy
from openvtp.models import VTPModel


@torch.inference_mode()
def image_features(model: VTPModel, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised CLIP image embeddings (n, D) of the first n scenes of `split`, and their shapes."""
    scenes = stack_scenes(CaptionedScenes(split, size=model.config.image_size, length=n, seed=0), n)
    feats = torch.cat([model.encode_image(chunk) for chunk in scenes["images"].split(250)]).float()
    return F.normalize(feats, dim=-1), scenes["shape"]


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tokenizers", nargs="+")
    ap.add_argument("--train-images", type=int, default=2000)
    ap.add_argument("--heldout-images", type=int, default=1000)
    args = ap.parse_args()
    names, templates = shape_prompts()
    for path in args.tokenizers:
        model = VTPModel.from_pretrained(path).eval()
        f_train, s_train = image_features(model, "train", args.train_images)
        f_test, s_test = image_features(model, "heldout", args.heldout_images)
        centroids = F.normalize(torch.stack([f_train[s_train == k].mean(0) for k in range(len(SHAPES))]), dim=-1)
        text = build_zero_shot_classifier(lambda t: model.get_clip_text_feature(t), names, templates,
                                          model.tokenize)  # (D, classes)
        acc_text = zero_shot_accuracy(f_test, text, s_test, topk=(1,))["top1"]
        acc_img = zero_shot_accuracy(f_test, centroids.T, s_test, topk=(1,))["top1"]
        sim = text.T @ text
        sim.fill_diagonal_(-1)
        i = int(sim.argmax())
        print(f"{path}: zero-shot shape (text) {acc_text:.1f}%, image-centroid {acc_img:.1f}% "
              f"(chance {100 / len(SHAPES):.1f}%)")
        print(f"  closest shape prompts: {SHAPES[i // len(SHAPES)]} / {SHAPES[i % len(SHAPES)]} cos {sim.max():.3f}")
        print("  prompt-to-centroid cos: " + ", ".join(f"{s} {c:.2f}" for s, c in zip(SHAPES, (text.T * centroids).sum(1))))


if __name__ == "__main__":
    main()
