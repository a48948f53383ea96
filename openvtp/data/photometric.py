"""Multi-crop photometrics for a whole batch of crops at once, on any device.

The host draws every crop's choices (`MultiCrop.plan`) and renders only its geometry; this module
applies the colour jitter, grayscale, blur, solarisation and normalisation of all crops of one size
together, from a (N, PLAN_COLUMNS) table of those choices. The crops equal the per-sample path's
(`MultiCrop.photometric`) up to float rounding: the same formulas, reassociated (the blur is separable,
the HSV round trip of the hue shift is written out here), so a run keeps its (seed, step, position)
determinism wherever the photometrics run. Which crops an op touches is read from the table on the
host, so a CUDA device never waits for the host to learn it.
"""
from __future__ import annotations

import torch

from openvtp.data.views import CropPlan, normalize

# jitter on, brightness, contrast, saturation, hue, the 4-op order, gray, blur on, sigma, kernel, solarise
PLAN_COLUMNS = 14
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)
_ORDER, _GRAY, _BLUR, _SIGMA, _KERNEL, _SOLARIZE = 5, 9, 10, 11, 12, 13
_TINY_TAP = 1e-20  # Gaussian taps below this are 0: they change no float32 pixel, and denormals are slow on CPUs


def plan_rows(plans: list[CropPlan]) -> torch.Tensor:
    """(len(plans), PLAN_COLUMNS) float64 table of the crops' photometric choices (exact for every drawn value)."""
    rows = torch.zeros(len(plans), PLAN_COLUMNS, dtype=torch.float64)
    for row, p in zip(rows, plans):
        if p.jitter is not None:
            row[0], row[1:5], row[_ORDER:_ORDER + 4] = 1, torch.tensor(p.jitter), torch.tensor(p.order)
        row[_GRAY] = p.gray
        if p.blur is not None:
            row[_BLUR], row[_SIGMA], row[_KERNEL] = 1, p.blur[0], p.blur[1]
        row[_SOLARIZE] = p.solarize
    return rows


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma with torchvision's ITU-R 601 weights."""
    r, g, b = x.unbind(1)
    return (r * 0.2989 + g * 0.587 + b * 0.114).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor + other * (1.0 - factor)).clamp_(0, 1)


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of (N, 3, H, W) pixels in [0, 1] by `shift` (N, 1, 1, 1) turns.

    torchvision's RGB -> HSV -> RGB round trip without the HSV image: a hue rotation keeps each pixel's
    max and min, and each output channel is max - (max - min) * clamp(min(k, 4 - k), 0, 1), with k the
    rotated hue in sixths offset by 5, 3, 1 for R, G, B.
    """
    r, g, b = x.unbind(1)
    minc, maxc = torch.aminmax(x, dim=1)
    span = maxc - minc
    inv = 1.0 / torch.where(span == 0, 1.0, span)
    sixths = torch.where(maxc == r, (g - b) * inv, torch.where(maxc == g, (b - r) * inv + 2.0, (r - g) * inv + 4.0))
    sixths = sixths + 6.0 * shift.view(-1, 1, 1)
    channels = []
    for offset in (5.0, 3.0, 1.0):
        k = (sixths + offset).remainder_(6.0)
        channels.append(maxc - span * torch.minimum(k, 4.0 - k).clamp_(0, 1))
    return torch.stack(channels, dim=1)


def _jitter_op(k: int, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    if k == _BRIGHTNESS:
        return (x * factor).clamp_(0, 1)
    if k == _CONTRAST:
        return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), factor)
    if k == _SATURATION:
        return _blend(x, _gray(x), factor)
    return _hue(x, factor)


def _blur(x: torch.Tensor, sigma: torch.Tensor, k: int) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding and a per-crop sigma (N,); kernel size k."""
    n, c, h, w = x.shape
    offsets = torch.arange(k, device=x.device, dtype=x.dtype) - (k - 1) / 2
    taps = torch.exp(-0.5 * (offsets / sigma.to(x.dtype).unsqueeze(1)) ** 2)
    taps = taps / taps.sum(dim=1, keepdim=True)
    taps = torch.where(taps < _TINY_TAP, 0.0, taps).repeat_interleave(c, dim=0)  # (N * C, k): one per plane
    r = k // 2
    y = torch.nn.functional.pad(x, (r, r, r, r), mode="reflect").reshape(1, n * c, h + 2 * r, w + 2 * r)
    y = torch.nn.functional.conv2d(y, taps.view(n * c, 1, 1, k), groups=n * c)
    y = torch.nn.functional.conv2d(y, taps.view(n * c, 1, k, 1), groups=n * c)
    return y.view(n, c, h, w)


def _apply(x: torch.Tensor, rows: torch.Tensor, fn) -> None:
    """x[rows] = fn(x[rows], index) in place, for a host bool mask `rows` (index: the rows' positions, on x's
    device); nothing when it is empty. Host-to-device copies are asynchronous: no wait on a GPU's queue."""
    idx = rows.nonzero().squeeze(1)
    if not len(idx):
        return
    on = idx.to(x.device, non_blocking=True)
    if len(idx) == len(x):
        x.copy_(fn(x, on))
    else:
        x[on] = fn(x[on], on)


def photometric_batch(crops: torch.Tensor, plan: torch.Tensor) -> torch.Tensor:
    """Batched `MultiCrop.photometric`: crops (N, 3, s, s) uint8 (or float in [0, 1]) on any device, plan the
    (N, PLAN_COLUMNS) host table of `plan_rows`; float (N, 3, s, s) normalised, on the crops' device."""
    assert plan.device.type == "cpu" and plan.shape == (len(crops), PLAN_COLUMNS), "plan: host (N, PLAN_COLUMNS)"
    x = crops.float() / 255.0 if crops.dtype == torch.uint8 else crops.float().clamp(0, 1)
    factors = plan[:, 1:5].to(x.device, torch.float32, non_blocking=True).view(-1, 4, 1, 1, 1)
    sigma = plan[:, _SIGMA].to(x.device, torch.float32, non_blocking=True)
    jittered = plan[:, 0] > 0
    for position in range(4):
        for k in range(4):
            _apply(x, jittered & (plan[:, _ORDER + position] == k), lambda y, i, k=k: _jitter_op(k, y, factors[i, k]))
    _apply(x, plan[:, _GRAY] > 0, lambda y, i: _gray(y).expand_as(y))
    for k in plan[plan[:, _BLUR] > 0, _KERNEL].unique().tolist():
        _apply(x, (plan[:, _BLUR] > 0) & (plan[:, _KERNEL] == k), lambda y, i, k=int(k): _blur(y, sigma[i], k))
    _apply(x, plan[:, _SOLARIZE] > 0, lambda y, i: torch.where(y >= 0.5, 1.0 - y, y))
    return normalize(x.clamp_(0, 1))
