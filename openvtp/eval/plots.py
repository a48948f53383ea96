"""PNG figures for evaluation: reconstruction grids and metric bar charts comparing checkpoints."""

import math
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure  # no pyplot: no global backend or display involved, Agg renders the PNG
from PIL import Image
from torchvision.utils import make_grid

from openvtp.data.image_io import to_uint8
from openvtp.errors import OpenVTPError


def image_grid(originals01: torch.Tensor, recons01: torch.Tensor, path: str | Path, nrow: int = 4) -> Path:
    """Save a PNG of (original, reconstruction) pairs side by side, `nrow` pairs per row; (B, 3, H, W) in [0, 1]."""
    if originals01.shape != recons01.shape or originals01.ndim != 4:
        raise OpenVTPError(f"originals {tuple(originals01.shape)} and reconstructions {tuple(recons01.shape)} differ")
    pairs = torch.stack([originals01, recons01], dim=1).flatten(0, 1)  # (2B, 3, H, W): orig, recon, orig, ...
    grid = make_grid(pairs.float().clamp(0, 1).cpu(), nrow=2 * nrow, padding=2, pad_value=1.0)  # (3, H', W')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(grid)).save(path)
    return path


def plot_results(results: dict[str, dict[str, float]], path: str | Path) -> Path:
    """Bar chart PNG, one panel per numeric metric, one bar per model: {model: {metric: value}}.

    Non-numeric entries (e.g. a protocol name) are skipped; a metric missing for some model is left out of its panel.
    """
    metrics = []
    for values in results.values():
        for name, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and name not in metrics:
                metrics.append(name)
    if not metrics:
        raise OpenVTPError("plot_results: no numeric metrics to plot")
    models = list(results)
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig = Figure(figsize=(4 * cols, 3 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    colors = matplotlib.colormaps["tab10"](np.arange(len(models)) % 10)
    for ax, metric in zip(axes.flat, metrics):
        present = [(i, m) for i, m in enumerate(models) if isinstance(results[m].get(metric), (int, float))]
        xs = np.arange(len(present))
        values = [float(results[m][metric]) for _, m in present]
        bars = ax.bar(xs, values, color=[colors[i] for i, _ in present])
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
        ax.set_xticks(xs, [m for _, m in present], rotation=30, ha="right", fontsize=7)
        ax.set_title(metric, fontsize=9)
    for ax in axes.flat[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
