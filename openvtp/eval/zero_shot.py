"""Zero-shot classification the CLIP way: class embeddings from prompt templates, logits 100 * img @ W.

Per class the text features of all templates are L2-normalised, averaged and re-normalised (OpenAI CLIP, OpenCLIP).
ImageNet names and the 80 OpenAI templates come from the installed open_clip, so they match OpenCLIP's evaluation.
Templates are strings with one "{}" where the class name goes. Accuracies are in percent.
"""

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from openvtp.errors import OpenVTPError


def imagenet_classnames() -> list[str]:
    """OpenCLIP's 1000 cleaned ImageNet class names, in class-index order."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def imagenet_templates() -> list[str]:
    """The 80 OpenAI ImageNet prompt templates as "{}" strings (open_clip stores them as lambdas)."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [t("{}") if callable(t) else t for t in OPENAI_IMAGENET_TEMPLATES]


def read_lines(path: str | Path) -> list[str]:
    """Non-empty stripped lines of a UTF-8 text file (class names or templates, one per line)."""
    path = Path(path)
    if not path.is_file():
        raise OpenVTPError(f"file not found: {path}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise OpenVTPError(f"{path} is empty")
    return lines


@torch.no_grad()
def build_zero_shot_classifier(
    encode_text_fn: Callable[[torch.Tensor], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[str],
    tokenize_fn: Callable[[list[str]], torch.Tensor],
    batch: int = 256,
) -> torch.Tensor:
    """(D, C) matrix of normalised class embeddings.

    Args:
        encode_text_fn: tokens -> (B, D) text features (normalised or not; they are normalised here).
        tokenize_fn: list of strings -> tokens for encode_text_fn.
        batch: prompts per encode_text_fn call.
    """
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise OpenVTPError(f"each template needs exactly one '{{}}' for the class name, not: {bad[0]!r}")
    if not classnames or not templates:
        raise OpenVTPError("zero-shot classifier needs at least one class name and one template")
    prompts = [t.format(name) for name in classnames for t in templates]  # class-major
    feats = torch.cat([F.normalize(encode_text_fn(tokenize_fn(prompts[i : i + batch])).float(), dim=-1)
                       for i in range(0, len(prompts), batch)])
    per_class = feats.view(len(classnames), len(templates), -1).mean(1)  # (C, D)
    return F.normalize(per_class, dim=-1).T.contiguous()  # (D, C)


@torch.no_grad()
def zero_shot_accuracy(
    image_feats_normed: torch.Tensor,
    classifier: torch.Tensor,
    labels: torch.Tensor,
    topk: Sequence[int] = (1, 5),
    chunk: int = 4096,
) -> dict:
    """{"top1": %, "top5": %, ...} of logits 100 * img @ W for L2-normalised image features (N, D)."""
    if image_feats_normed.shape[1] != classifier.shape[0]:
        raise OpenVTPError(
            f"image features are {image_feats_normed.shape[1]}-d but the classifier expects {classifier.shape[0]}-d"
        )
    kmax = min(max(topk), classifier.shape[1])
    correct = dict.fromkeys(topk, 0)
    for start in range(0, len(image_feats_normed), chunk):
        img = image_feats_normed[start : start + chunk].to(classifier)
        pred = (100.0 * img @ classifier).topk(kmax, dim=1).indices  # (B, kmax)
        hits = pred == labels[start : start + chunk].to(pred.device)[:, None]
        for k in topk:
            correct[k] += hits[:, :k].any(1).sum().item()
    return {f"top{k}": 100 * correct[k] / len(image_feats_normed) for k in topk}
