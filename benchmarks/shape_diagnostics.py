"""Why a demo tokenizer's zero-shot shape accuracy is what it is: image side vs text side.

    python benchmarks/shape_diagnostics.py runs/demo/tokenizer [more tokenizers ...]

For each tokenizer, on held-out scenes of the unseen (shape, colour) pairs:
- `text`: the zero-shot shape classifier of `openvtp demo` / `openvtp eval` (prompt templates);
- `image-centroid`: the same images classified by the nearest mean CLIP image embedding of each
  shape over train scenes; below chance means the image embedding is led by colour (a shape's
  centroid carries the colours it was seen in, never the held-out one);
- the two shape prompts whose text embeddings are closest (cosine near 1: the classifier cannot
  tell them apart), and per shape the cosine between its prompt embedding and its image centroid;
- on train scenes with one object (seen pairs): the mean cosine between image embeddings of the
  same colour and the same vs another shape (does the image side separate shapes at all?), and
  shape accuracy when the colour is given, among the prompts "a {colour} {shape}" (has the model
  learnt shape where colour cannot mislead it?);
- on shape twins of train scenes (`CaptionedScenes(shape_twins=True)`: the same scene and caption
  with another shape of the same colour), how often an image is closer to its own caption than to
  its twin's: the least noisy measure of how much shape the two towers share (over seeds of the
  demo preset it moves by about a point, zero-shot accuracy by about five).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from openvtp.demo.scenes import COLOURS, SHAPES, CaptionedScenes, shape_prompts
from openvtp.demo.heldout import stack_scenes
from openvtp.eval.zero_shot import build_zero_shot_classifier, zero_shot_accuracy
from openvtp.models import VTPModel


@torch.inference_mode()
def image_features(model: VTPModel, split: str, n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L2-normalised CLIP image embeddings (n, D) of the first n scenes of `split`, and their labels."""
    scenes = stack_scenes(CaptionedScenes(split, size=model.config.image_size, length=n, seed=0), n)
    feats = torch.cat([model.encode_image(chunk) for chunk in scenes["images"].split(250)]).float()
    return F.normalize(feats, dim=-1), scenes


@torch.inference_mode()
def seen_pair_shape(model: VTPModel, feats: torch.Tensor, labels: dict[str, torch.Tensor]) -> tuple[float, float, float]:
    """(same-shape cos, other-shape cos, shape accuracy given the colour) over one-object scenes."""
    one = labels["count"] == 1
    f, shape, colour = feats[one], labels["shape"][one], labels["colour"][one]
    sim = f @ f.T
    same_colour = (colour[:, None] == colour[None]) & ~torch.eye(len(f), dtype=torch.bool)
    same_shape = shape[:, None] == shape[None]
    prompts = [f"{'an' if c[0] in 'aeiou' else 'a'} {c} {s}" for c in COLOURS for s in SHAPES]  # as captions say it
    text = model.encode_text(prompts).float()  # L2-normalised
    logits = (f @ text.T).view(len(f), len(COLOURS), len(SHAPES))[torch.arange(len(f)), colour]  # (n, shapes)
    acc = 100.0 * (logits.argmax(1) == shape).float().mean().item()
    return sim[same_colour & same_shape].mean().item(), sim[same_colour & ~same_shape].mean().item(), acc


@torch.inference_mode()
def twin_accuracy(model: VTPModel, n_pairs: int) -> float:
    """% of train scenes and shape twins whose image is closer to its own caption than to its twin's."""
    scenes = CaptionedScenes("train", size=model.config.image_size, length=2 * n_pairs, seed=10_000,
                             shape_twins=True)  # seen pairs, in images no seeded demo run trained on
    items = [scenes[i] for i in range(2 * n_pairs)]
    images = torch.stack([it["image"] for it in items]).float().div(255)
    f = torch.cat([model.encode_image(chunk) for chunk in images.split(250)]).float()
    t = model.encode_text([it["caption"] for it in items]).float()
    own, twin = (f * t).sum(1), (f * t.view(n_pairs, 2, -1).flip(1).reshape_as(t)).sum(1)
    return 100.0 * (own > twin).float().mean().item()


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tokenizers", nargs="+")
    ap.add_argument("--train-images", type=int, default=2000)
    ap.add_argument("--heldout-images", type=int, default=1000)
    ap.add_argument("--twin-pairs", type=int, default=1000)
    args = ap.parse_args()
    names, templates = shape_prompts()
    for path in args.tokenizers:
        model = VTPModel.from_pretrained(path).eval()
        f_train, train = image_features(model, "train", args.train_images)
        f_test, test = image_features(model, "heldout", args.heldout_images)
        s_train, s_test = train["shape"], test["shape"]
        centroids = F.normalize(torch.stack([f_train[s_train == k].mean(0) for k in range(len(SHAPES))]), dim=-1)
        text = build_zero_shot_classifier(model.get_clip_text_feature, names, templates, model.tokenize)  # (D, classes)
        acc_text = zero_shot_accuracy(f_test, text, s_test, topk=(1,))["top1"]
        acc_img = zero_shot_accuracy(f_test, centroids.T, s_test, topk=(1,))["top1"]
        sim = text.T @ text
        sim.fill_diagonal_(-1)
        i = int(sim.argmax())
        print(f"{path}: zero-shot shape (text) {acc_text:.1f}%, image-centroid {acc_img:.1f}% "
              f"(chance {100 / len(SHAPES):.1f}%)")
        print(f"  closest shape prompts: {SHAPES[i // len(SHAPES)]} / {SHAPES[i % len(SHAPES)]} cos {sim.max():.3f}")
        print("  prompt-to-centroid cos: " + ", ".join(f"{s} {c:.2f}" for s, c in zip(SHAPES, (text.T * centroids).sum(1))))
        same, other, acc_given = seen_pair_shape(model, f_train, train)
        print(f"  train scenes, one object: image cos same colour & shape {same:.2f}, same colour & other shape "
              f"{other:.2f}; shape given the colour ('a {{colour}} {{shape}}') {acc_given:.1f}%")
        print(f"  shape twins (train scenes, same layout and caption, another shape): image closer to its own "
              f"caption {twin_accuracy(model, args.twin_pairs):.1f}% (chance 50%)")


if __name__ == "__main__":
    main()
