"""Linear probes on cached frozen features. Two protocols, always reported by name:

- "linear-simple": one linear classifier on standardised features (train mean / std per dimension), AdamW, cosine
  schedule, cross-entropy. A quick single number for last-layer features (CLS or the d-dim bottleneck).
- "dinov2-linear": DINOv2's protocol (the one behind VTP's 85.7%): feature variants made of the CLS token of the last
  1 or 4 blocks, optionally concatenated with the average-pooled patch tokens; for every variant x learning rate a
  linear layer (weight ~ N(0, 0.01), bias 0) trained with SGD momentum 0.9, no weight decay, cosine decay to 0, the
  13 base learning rates scaled by batch / 256; the best (variant, lr) is reported. As in DINOv2's AllClassifiers all
  classifiers train at once, one stacked matmul per variant. Difference: DINOv2 recomputes features of augmented
  crops every step, here the features are cached once (no augmentation), so numbers can sit slightly below.
  Like DINOv2 on ImageNet, the classifier is picked on the set it is reported on.

Accuracies are in percent.
"""

import math

import torch
import torch.nn.functional as F

from openvtp.errors import OpenVTPError

DINOV2_LRS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)


def dinov2_feature_variants(
    cls_tokens: torch.Tensor, patch_mean: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """DINOv2's linear-probe inputs from the CLS of the last blocks (N, n_blocks, D), shallowest first, and the
    average-pooled patch tokens of the last block (N, D): {"cls1", "cls4", "cls1_avgpool", "cls4_avgpool"}
    (the 4-block ones only when 4 blocks are given)."""
    variants = {}
    for n in (1, 4):
        if cls_tokens.shape[1] < n:
            continue
        cls = cls_tokens[:, -n:].flatten(1)  # (N, n * D)
        variants[f"cls{n}"] = cls
        if patch_mean is not None:
            variants[f"cls{n}_avgpool"] = torch.cat([cls, patch_mean], dim=1)
    return variants


def _check(train_feats, train_labels, test_feats, test_labels) -> None:
    if train_feats.ndim != 2 or test_feats.ndim != 2 or train_feats.shape[1] != test_feats.shape[1]:
        raise OpenVTPError(
            f"linear probe: features must be (N, D) with the same D, got {tuple(train_feats.shape)} and "
            f"{tuple(test_feats.shape)}"
        )
    if len(train_feats) != len(train_labels) or len(test_feats) != len(test_labels):
        raise OpenVTPError("linear probe: features and labels differ in length")


def _cosine(step: int, total: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * step / total))


def _batches(n: int, batch_size: int, epochs: int, gen: torch.Generator):
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n - batch_size + 1, batch_size):  # the last partial batch is dropped
            yield perm[start : start + batch_size]


@torch.no_grad()
def _accuracy(logits_fn, feats: torch.Tensor, labels: torch.Tensor, device, chunk: int = 4096):
    """Top-1 / top-5 in percent for each of the L stacked classifiers: two tensors (L,)."""
    correct1 = correct5 = 0
    for start in range(0, len(feats), chunk):
        logits = logits_fn(feats[start : start + chunk].to(device).float())  # (B, L, C)
        y = labels[start : start + chunk].to(device)
        pred = logits.topk(min(5, logits.shape[-1]), dim=-1).indices  # (B, L, 5)
        hits = pred == y[:, None, None]
        correct1 = correct1 + hits[..., 0].sum(0)
        correct5 = correct5 + hits.any(-1).sum(0)
    return 100 * correct1.double().cpu() / len(feats), 100 * correct5.double().cpu() / len(feats)


def linear_probe_simple(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int | None = None,
    epochs: int = 10,
    batch_size: int = 1024,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> dict:
    """One linear classifier (AdamW, cosine) on standardised features: {"protocol": "linear-simple", "top1", "top5"}."""
    _check(train_feats, train_labels, test_feats, test_labels)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    batch_size = min(batch_size, len(train_labels))
    gen = torch.Generator().manual_seed(seed)
    mean = train_feats.float().mean(0).to(device)
    std = train_feats.float().std(0).clamp_min(1e-6).to(device)
    layer = torch.nn.Linear(train_feats.shape[1], num_classes).to(device)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    opt = torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=weight_decay)
    total = epochs * max(1, len(train_feats) // batch_size)
    for step, idx in enumerate(_batches(len(train_feats), batch_size, epochs, gen)):
        for group in opt.param_groups:
            group["lr"] = lr * _cosine(step, total)
        x = (train_feats[idx].to(device).float() - mean) / std
        loss = F.cross_entropy(layer(x), train_labels[idx].to(device).long())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    top1, top5 = _accuracy(lambda x: layer((x - mean) / std)[:, None], test_feats, test_labels.long(), device)
    return {"protocol": "linear-simple", "top1": top1.item(), "top5": top5.item()}


class StackedProbes:
    """DINOv2's linear classifiers, one per (feature variant, learning rate), trained at once (its AllClassifiers):
    per variant every lr's classifier is stacked into one (L * C, D) weight, N(0, 0.01) init, bias 0, SGD
    momentum without dampening or weight decay, the summed loss giving each one its own mean cross-entropy."""

    def __init__(self, dims: dict[str, int], num_classes: int, lrs: torch.Tensor, momentum: float,
                 gen: torch.Generator, device: torch.device):
        """dims: {variant: feature width}; lrs: (L,) the (already scaled) learning rates."""
        self.n_lr, self.c, self.momentum = len(lrs), num_classes, momentum
        self.params, self.bufs = {}, {}
        for name, dim in dims.items():
            weight = (torch.randn(self.n_lr * num_classes, dim, generator=gen) * 0.01).to(device).requires_grad_()
            self.params[name] = [weight, torch.zeros(self.n_lr * num_classes, device=device, requires_grad=True)]
            self.bufs[name] = [torch.zeros_like(p, requires_grad=False) for p in self.params[name]]
        self.lr_rows = lrs.to(device).repeat_interleave(num_classes)  # (L * C,): the lr of each output row

    def logits_fn(self, name: str):
        weight, bias = self.params[name]
        return lambda x: (x @ weight.T + bias).view(len(x), self.n_lr, self.c)  # (B, L, C)

    def step(self, feats: dict[str, torch.Tensor], labels: torch.Tensor, factor: float) -> None:
        """One SGD step of every classifier on a batch; `factor` scales the learning rates (the schedule)."""
        y = labels.long()
        for name, x in feats.items():
            logits = self.logits_fn(name)(x.float())
            loss = F.cross_entropy(logits.flatten(0, 1), y.repeat_interleave(self.n_lr), reduction="sum") / len(y)
            grads = torch.autograd.grad(loss, self.params[name])
            with torch.no_grad():
                for p, g, buf, lr in zip(self.params[name], grads, self.bufs[name],
                                         (self.lr_rows[:, None], self.lr_rows)):
                    buf.mul_(self.momentum).add_(g)  # torch SGD momentum, no dampening
                    p.sub_(lr * factor * buf)

    def accuracy(self, feats: dict[str, torch.Tensor], labels: torch.Tensor, device) -> dict[str, tuple]:
        """{variant: (top1 (L,), top5 (L,))} in percent."""
        return {name: _accuracy(self.logits_fn(name), x, labels.long(), device) for name, x in feats.items()}


def linear_probe_dinov2(
    train_variants: dict[str, torch.Tensor],
    train_labels: torch.Tensor,
    test_variants: dict[str, torch.Tensor],
    test_labels: torch.Tensor,
    num_classes: int | None = None,
    lrs: tuple[float, ...] = DINOV2_LRS,
    epochs: int = 10,
    batch_size: int = 1024,
    momentum: float = 0.9,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> dict:
    """DINOv2's linear protocol over feature variants x learning rates, all trained at once.

    Args:
        train_variants / test_variants: {variant name: (N, D_v)} with the same names (see dinov2_feature_variants).
        lrs: base learning rates, each scaled by batch_size / 256 as DINOv2 does.

    Returns {"protocol": "dinov2-linear", "top1", "top5", "variant", "lr" (base), "scaled_lr",
    "all_top1": {"<variant>@<lr>": top1}} for the best classifier by top-1.
    """
    if set(train_variants) != set(test_variants) or not train_variants:
        raise OpenVTPError(f"linear probe: train variants {sorted(train_variants)} != test {sorted(test_variants)}")
    for name in train_variants:
        _check(train_variants[name], train_labels, test_variants[name], test_labels)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    batch_size = min(batch_size, len(train_labels))
    gen = torch.Generator().manual_seed(seed)
    probes = StackedProbes({k: v.shape[1] for k, v in train_variants.items()}, num_classes,
                           torch.tensor(lrs) * batch_size / 256, momentum, gen, device)
    total = epochs * max(1, len(train_labels) // batch_size)
    for step, idx in enumerate(_batches(len(train_labels), batch_size, epochs, gen)):
        probes.step({k: v[idx].to(device) for k, v in train_variants.items()}, train_labels[idx].to(device),
                    _cosine(step, total))
    best, all_top1 = best_probe(probes.accuracy(test_variants, test_labels, device), lrs)
    return {"protocol": "dinov2-linear", **best, "scaled_lr": best["lr"] * batch_size / 256, "all_top1": all_top1}


def best_probe(accuracy: dict[str, tuple], lrs: tuple[float, ...]) -> tuple[dict, dict]:
    """The classifier with the best top-1 ({"top1", "top5", "variant", "lr"}) and every one's top-1 by name."""
    all_top1, best = {}, None
    for name, (top1, top5) in accuracy.items():
        for i, base in enumerate(lrs):
            all_top1[f"{name}@{base:g}"] = top1[i].item()
            if best is None or top1[i] > best["top1"]:
                best = {"top1": top1[i].item(), "top5": top5[i].item(), "variant": name, "lr": base}
    return best, all_top1
