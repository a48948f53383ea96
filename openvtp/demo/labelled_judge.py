"""The judge of a labelled set's generated images: a small CNN classifier trained on the set's own train split.

Inception knows nothing of 8 px digits or of a set's own classes, so, as the embedded demo does with its attribute
probe, a classifier trained on the data judges the samples: how often it sees the requested class, and the Frechet
distance between generated and real held-out images in its penultimate features (FID's recipe with a
domain-specific feature extractor). Its held-out accuracy says how far it can be trusted.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from openvtp.eval.fid import feature_statistics, frechet_distance

from .labelled import LabelledSet

log = logging.getLogger("openvtp.judge")
WIDTH, BATCH, LR = 32, 64, 3e-3


class ClassJudge(nn.Module):
    """Strided 3x3 conv stages that halve the image down to 2-4 px (at most four), global average pooling, a class
    head. Fewer stages for small images also keep the features (the Frechet distance's space) few: 64 at 8 px."""

    def __init__(self, num_classes: int, size: int, width: int = WIDTH):
        super().__init__()
        stages = max(1, min(4, int(math.log2(size)) - 1))
        chans = [3] + [width * min(2 ** i, 4) for i in range(stages)]
        layers = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.trunk = nn.Sequential(*layers)
        self.dim = chans[-1]
        self.head = nn.Linear(self.dim, num_classes)

    def features(self, images01: torch.Tensor) -> torch.Tensor:
        return self.trunk((images01 - 0.5) / 0.25).mean(dim=(2, 3))

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images01))


@torch.no_grad()
def predict(judge: ClassJudge, images01: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, dim), predicted classes (N,))."""
    judge.eval()
    feats = torch.cat([judge.features(chunk.float()) for chunk in images01.split(batch)])
    return feats, judge.head(feats).argmax(-1)


def _augment(x: torch.Tensor, gen: torch.Generator, mirror: bool) -> torch.Tensor:
    """Shifts by up to an eighth of the side (edge padding), and mirror images where they keep the class."""
    n, size = len(x), x.shape[-1]
    pad = max(1, size // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dx, dy = (torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist() for _ in range(2))
    x = torch.stack([padded[i, :, dy[i]:dy[i] + size, dx[i]:dx[i] + size] for i in range(n)])
    if mirror:
        flip = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def train_judge(data: LabelledSet, steps: int, seed: int, mirror: bool, progress: bool = True) -> ClassJudge:
    """Train on the train split; its accuracy on the whole held-out split is kept as `judge.heldout_acc`."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    judge = ClassJudge(data.num_classes, data.size)
    opt = torch.optim.AdamW(judge.parameters(), lr=LR, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps, pct_start=0.1)
    judge.train()
    n = len(data.train_labels)
    for _ in tqdm(range(steps), desc="judge", disable=not progress):
        idx = torch.randint(0, n, (BATCH,), generator=gen)
        x = _augment(data.train_images[idx].float() / 255, gen, mirror)
        loss = F.cross_entropy(judge(x), data.train_labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    _, pred = predict(judge, data.heldout_images.float() / 255)
    judge.heldout_acc = float((pred == data.heldout_labels).float().mean())
    log.info("judge: held-out accuracy %.3f (%d classes, chance %.3f)", judge.heldout_acc, data.num_classes,
             1 / data.num_classes)
    return judge.eval()


def cached_judge(cache_dir: str | Path | None, data: LabelledSet, steps: int, seed: int, threads: int, mirror: bool,
                 progress: bool = True) -> ClassJudge:
    """`train_judge` on `threads` torch threads (its convolutions round otherwise with another count), read from
    `cache_dir` when an earlier call wrote it: a study trains it once and judges every cell with it."""
    path = None if cache_dir is None else Path(cache_dir) / (
        f"judge-{data.digest}-{data.size}px-{steps}steps-seed{seed}-{threads}threads"
        f"{'' if mirror else '-nomirror'}.safetensors")
    if path is not None and path.is_file():
        judge = ClassJudge(data.num_classes, data.size)
        judge.load_state_dict(load_file(path))
        judge.heldout_acc = float(safe_open(path, "pt").metadata()["heldout_acc"])
        return judge.eval()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        judge = train_judge(data, steps, seed, mirror, progress)
    finally:
        torch.set_num_threads(previous)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(judge.state_dict(), tmp, metadata={"heldout_acc": repr(judge.heldout_acc)})
        os.replace(tmp, path)
    return judge


def judged(judge: ClassJudge, images01: torch.Tensor, requested: torch.Tensor,
           reference_feats: torch.Tensor) -> dict[str, float]:
    """{"class_acc": how often the judge sees the requested class, "frechet_judge": Frechet distance to the
    reference images' features}."""
    feats, pred = predict(judge, images01)
    return {"class_acc": float((pred == requested).float().mean()),
            "frechet_judge": frechet_distance(*feature_statistics(feats.double().numpy()),
                                              *feature_statistics(reference_feats.double().numpy()))}
