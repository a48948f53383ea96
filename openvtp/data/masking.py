"""iBOT/DINOv2 block masking of patch grids, drawn from explicit generators.

A mask is a union of random rectangles (aspect in [min_aspect, 1/min_aspect], each at least
`min_patches` and at most `max_patches` large), added until the target count is reached or no
rectangle adds a new patch; so a mask may hold slightly fewer patches than the target, never more.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=gen).item()


def _add_block(mask: torch.Tensor, budget: int, min_patches: int, log_aspect: tuple[float, float],
               gen: torch.Generator) -> int:
    """Mask one rectangle adding 1..budget new patches; returns how many (0 if 10 tries fail)."""
    h, w = mask.shape
    for _ in range(10):
        area = _uniform(gen, min_patches, budget)
        aspect = math.exp(_uniform(gen, *log_aspect))
        bh = round(math.sqrt(area * aspect))
        bw = round(math.sqrt(area / aspect))
        if bh < 1 or bw < 1 or bh >= h or bw >= w:
            continue
        top = int(torch.randint(0, h - bh + 1, (), generator=gen))
        left = int(torch.randint(0, w - bw + 1, (), generator=gen))
        new = bh * bw - int(mask[top:top + bh, left:left + bw].sum())
        if 0 < new <= budget:
            mask[top:top + bh, left:left + bw] = True
            return new
    return 0


def block_mask(
    h: int,
    w: int,
    ratio: float,
    gen: torch.Generator,
    min_aspect: float = 0.3,
    min_patches: int = 4,
    max_patches: int | None = None,
) -> torch.Tensor:
    """Bool (h, w) mask of about int(ratio * h * w) patches in blocks (DINOv2 truncates).

    max_patches caps one block (default half the grid, as DINOv2).
    """
    assert 0.0 <= ratio <= 1.0, f"mask ratio {ratio} outside [0, 1]"
    mask = torch.zeros(h, w, dtype=torch.bool)
    target = int(ratio * h * w)
    cap = int(0.5 * h * w) if max_patches is None else max_patches
    log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))
    count = 0
    while count < target:
        added = _add_block(mask, min(target - count, cap), min_patches, log_aspect, gen)
        if added == 0:
            break
        count += added
    return mask


def mask_ratios(
    n: int, ratio_range: tuple[float, float], mask_probability: float, gen: torch.Generator
) -> torch.Tensor:
    """Per-sample mask ratios (n,), 0 for unmasked, as DINOv2's collate.

    int(n * mask_probability) samples are masked, the k-th with a ratio drawn from the k-th of
    equal slices of `ratio_range` (so ratios cover the range), in a random order.
    """
    m = int(n * mask_probability)
    edges = torch.linspace(ratio_range[0], ratio_range[1], m + 1)
    ratios = torch.zeros(n)
    if m > 0:
        ratios[:m] = edges[:-1] + (edges[1:] - edges[:-1]) * torch.rand(m, generator=gen)
    return ratios[torch.randperm(n, generator=gen)]


def batch_masks(
    n: int,
    h: int,
    w: int,
    ratio_range: tuple[float, float] = (0.1, 0.5),
    mask_probability: float = 0.5,
    *,
    gen_for: Callable[[int], torch.Generator],
    ratios: torch.Tensor | None = None,
    min_aspect: float = 0.3,
    min_patches: int = 4,
) -> torch.Tensor:
    """Bool (n, h, w) masks for a batch: sample i's block layout is drawn from gen_for(i).

    Which samples are masked, and how much, comes from `ratios` (n,); by default
    `mask_ratios(n, ..., gen_for(-1))`. Under data parallelism pass the rank's slice of
    `mask_ratios(global_batch, ..., <generator shared by all ranks for this step>)`, so
    the masks do not depend on the number of processes.
    """
    if ratios is None:
        ratios = mask_ratios(n, ratio_range, mask_probability, gen_for(-1))
    assert ratios.shape == (n,), f"ratios must have shape ({n},), got {tuple(ratios.shape)}"
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for i in range(n):
        r = float(ratios[i])
        if r > 0:
            masks[i] = block_mask(h, w, r, gen_for(i), min_aspect=min_aspect, min_patches=min_patches)
    return masks
