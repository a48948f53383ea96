"""Sampling a trained LightningDiT: ODE solvers, guidance, decoding, PNG / ADM .npz / grid output.

Time runs from t = 0 (noise) to t = 1 (data) (SiT's convention, `openvtp.losses.flow`).

Timestep shift is LightningDiT's definition (its `transport/integrators.py`): the solver's time
grid is `linspace(0, 1, num_steps)` mapped through t' = s t / (1 + (s - 1) t). With s < 1 (VTP:
0.075) the grid crowds towards t = 0, so most steps are spent at high noise, where the global
structure forms; s = 0 (or 1) leaves the grid uniform. `num_steps` counts grid points as LightningDiT
does, so Euler "250 steps" makes 249 updates, exactly the published sampler. For dopri5 the grid
only marks output times; the solver picks its own steps within atol / rtol.

The noise of sample i is a function of (seed, i) alone, so results do not depend on the batch
size or the number of processes that share the work.
"""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from openvtp.config.load import config_from_dict
from openvtp.data.image_io import to_uint8
from openvtp.errors import OpenVTPError
from openvtp.generation import seeding
from openvtp.generation.config import FID_LABELS, GenerationConfig, SampleConfig, validate
from openvtp.models.dit import LightningDiT
from openvtp.runtime import dist
from openvtp.runtime.checkpoint import list_checkpoints, load_checkpoint

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x (B, ...), t (B,)) -> v


# ---------------------------------------------------------------------------- ODE solvers


def timestep_grid(num_steps: int, shift: float = 0.0) -> torch.Tensor:
    """(num_steps,) times from 0 to 1, LightningDiT's shifted grid when shift > 0."""
    t = torch.linspace(0.0, 1.0, num_steps, dtype=torch.float64)
    if shift > 0:
        t = shift * t / (1 + (shift - 1) * t)
    return t.float()


def _batch_t(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.to(device=x.device, dtype=torch.float32).expand(x.shape[0])


def euler(velocity: VelocityFn, x: torch.Tensor, grid: torch.Tensor, progress: bool = False) -> torch.Tensor:
    for t0, t1 in tqdm(list(zip(grid[:-1], grid[1:])), desc="euler", disable=not progress, leave=False):
        x = x + (t1 - t0).item() * velocity(x, _batch_t(t0, x))
    return x


def heun(velocity: VelocityFn, x: torch.Tensor, grid: torch.Tensor, progress: bool = False) -> torch.Tensor:
    """Heun's second-order method (explicit trapezoid): two model evaluations per interval."""
    for t0, t1 in tqdm(list(zip(grid[:-1], grid[1:])), desc="heun", disable=not progress, leave=False):
        dt = (t1 - t0).item()
        v0 = velocity(x, _batch_t(t0, x))
        v1 = velocity(x + dt * v0, _batch_t(t1, x))
        x = x + dt * 0.5 * (v0 + v1)
    return x


def dopri5(velocity: VelocityFn, x: torch.Tensor, grid: torch.Tensor, atol: float = 1e-6,
           rtol: float = 1e-3) -> torch.Tensor:
    """Adaptive Dormand-Prince 5(4) (torchdiffeq), as LightningDiT's default ODE sampler."""
    from torchdiffeq import odeint

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return velocity(y, _batch_t(t, y))

    return odeint(f, x, grid.to(x.device), method="dopri5", atol=atol, rtol=rtol)[-1]


def integrate(velocity: VelocityFn, noise: torch.Tensor, method: str = "euler", num_steps: int = 250,
              shift: float = 0.0, atol: float = 1e-6, rtol: float = 1e-3, progress: bool = False) -> torch.Tensor:
    """Solve dx/dt = velocity(x, t) from t = 0 (x = noise) to t = 1."""
    grid = timestep_grid(num_steps, shift)
    if method == "euler":
        return euler(velocity, noise, grid, progress)
    if method == "heun":
        return heun(velocity, noise, grid, progress)
    if method == "dopri5":
        return dopri5(velocity, noise, grid, atol, rtol)
    raise OpenVTPError(f"unknown sampler '{method}' (euler, heun, dopri5)")


# ---------------------------------------------------------------------------- labels, noise, guidance


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """(n,) labels cycling 0..num_classes-1: every class appears floor(n/K) or ceil(n/K) times."""
    return torch.arange(n, dtype=torch.long) % num_classes


def random_labels(n: int, num_classes: int, seed: int) -> torch.Tensor:
    """(n,) labels drawn uniformly at random, as LightningDiT's FID sampling does; a function of the seed alone."""
    return torch.randint(0, num_classes, (n,), generator=seeding.generator(seed, seeding.LABELS, 0))


def fid_labels(mode: str, n: int, num_classes: int, seed: int) -> torch.Tensor:
    """The class labels of an FID run: "balanced" (each class floor(n/K) or ceil(n/K) times) or "random"."""
    if mode == "balanced":
        return balanced_labels(n, num_classes)
    if mode == "random":
        return random_labels(n, num_classes, seed)
    raise OpenVTPError(f"unknown FID labels '{mode}' (choose from {', '.join(FID_LABELS)})")


def sample_noise(indices: Sequence[int] | torch.Tensor, shape: Sequence[int], seed: int) -> torch.Tensor:
    """(len(indices), *shape) standard normal noise; row j depends only on (seed, indices[j])."""
    out = torch.empty(len(indices), *shape)
    for j, i in enumerate(torch.as_tensor(indices).tolist()):
        out[j] = torch.randn(*shape, generator=seeding.generator(seed, seeding.SAMPLE, i))
    return out


def velocity_fn(model: LightningDiT, y: torch.Tensor, cfg: SampleConfig) -> VelocityFn:
    """The model as an ODE right-hand side, with classifier-free guidance when cfg_scale != 1."""
    if cfg.cfg_scale == 1.0:
        return lambda x, t: model(x, t, y)
    interval = (cfg.cfg_interval_start, cfg.cfg_interval_end)
    channels = cfg.guided_channels or None
    return lambda x, t: model.forward_with_cfg(x, t, y, cfg.cfg_scale, interval, channels)


@torch.no_grad()
def sample_latents(model: LightningDiT, labels: torch.Tensor, noise: torch.Tensor, cfg: SampleConfig,
                   progress: bool = False) -> torch.Tensor:
    """Normalised latents (B, C, H, W) for `labels` (B,) starting from `noise` (B, C, H, W)."""
    device = next(model.parameters()).device
    v = velocity_fn(model, labels.to(device), cfg)
    return integrate(v, noise.to(device), cfg.method, cfg.num_steps, cfg.timestep_shift, cfg.atol, cfg.rtol,
                     progress)


def denormalize(latents: torch.Tensor, stats: dict, multiplier: float = 1.0) -> torch.Tensor:
    """Inverse of the training normalisation ((z - mean) / std * multiplier), LightningDiT's."""
    mean, std = stats["mean"].to(latents), stats["std"].to(latents)
    return latents / multiplier * std + mean




# ---------------------------------------------------------------------------- checkpoints


def resolve_dit_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir (`.../step_XXXXXXX`) or a run dir (its newest checkpoint)."""
    path = Path(path)
    if (path / "state.pt").is_file():
        return path
    found = list_checkpoints(path)
    if found:
        return found[-1]
    raise OpenVTPError(f"no DiT checkpoint at {path} (expected state.pt or checkpoints/step_*/)")


def load_dit(path: str | Path, use_ema: bool | None = None, device: str | torch.device = "cpu"
             ) -> tuple[LightningDiT, GenerationConfig, dict]:
    """(model in eval mode, its training config, latent stats) from a DiT checkpoint or run dir.

    use_ema: EMA weights (True) or raw weights (False); None follows the stored sample.use_ema.
    """
    ckpt = resolve_dit_checkpoint(path)
    state = load_checkpoint(ckpt)
    if "dit_kwargs" not in state:
        raise OpenVTPError(f"{ckpt} is not a DiT checkpoint (no dit_kwargs)")
    cfg = config_from_dict(GenerationConfig, state["config"])
    model = LightningDiT(**state["dit_kwargs"])
    model.load_state_dict(state["ema" if (cfg.sample.use_ema if use_ema is None else use_ema) else "model"])
    return model.to(device).eval(), cfg, state["latent_stats"]


# ---------------------------------------------------------------------------- images


def iter_samples(model: LightningDiT, decode: Callable[[torch.Tensor], torch.Tensor], stats: dict,
                 labels: torch.Tensor, cfg: SampleConfig, multiplier: float = 1.0,
                 indices: Sequence[int] | None = None, progress: bool = True
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yields (indices, labels, images01 (B, 3, H, W) on CPU) batch by batch.

    `labels` covers all samples; `indices` selects the ones to make here (default: all).
    """
    indices = torch.arange(len(labels)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
    shape = (model.in_channels, model.input_size, model.input_size)
    batches = indices.split(cfg.batch)
    for idx in tqdm(batches, desc="sampling", unit="batch", disable=not progress):
        y = labels[idx]
        z = sample_latents(model, y, sample_noise(idx, shape, cfg.seed), cfg)
        with torch.no_grad():
            images = decode(denormalize(z, stats, multiplier)).float().cpu()
        yield idx, y, images


def save_grid(images01: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """A PNG grid of (B, 3, H, W) images in [0, 1]; nrow images per row (default ~sqrt(B))."""
    from torchvision.utils import make_grid

    nrow = nrow or max(1, math.ceil(math.sqrt(len(images01))))
    grid = make_grid(images01.float().clamp(0, 1), nrow=nrow, padding=2, pad_value=1.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(grid[None])[0]).save(path)
    return path


def write_npz(path: str | Path, images_uint8: np.ndarray, labels: np.ndarray | None = None) -> Path:
    """ADM's sample layout: `arr_0` uint8 (N, H, W, 3) (and `labels`, which ADM's evaluator ignores)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"arr_0": images_uint8} if labels is None else {"arr_0": images_uint8, "labels": labels}
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def load_tokenizer(path: str, device: str | torch.device) -> nn.Module:
    """The VTP model that decodes samples (`decode(latents) -> images01`)."""
    if not path:
        raise OpenVTPError("no tokenizer given to decode samples: set data.tokenizer=<VTP checkpoint dir>")
    from openvtp.models.vtp import VTPModel

    return VTPModel.from_pretrained(path, map_location=device).eval()


def sample(
    checkpoint: str | Path,
    out_dir: str | Path,
    overrides: SampleConfig | None = None,
    tokenizer: nn.Module | str | None = None,
    labels: torch.Tensor | None = None,
    num_samples: int | None = None,
    device: str = "auto",
    progress: bool = True,
    grid_nrow: int | None = None,
) -> Path:
    """Sample a trained DiT and write `out_dir/samples/NNNNNN.png`, `samples.npz` (ADM) and `grid.png`.

    `overrides` replaces the checkpoint's sampling settings; `tokenizer` is a decoder module or a
    path (default: the config's data.tokenizer); `labels` (one per sample) default to
    `balanced_labels` of num_samples (default: the settings' num_samples). Under
    torchrun each rank makes a disjoint part; rank 0 assembles the .npz. `grid_nrow` images per grid
    row (e.g. the number of samples per class when labels are grouped by class). Returns the .npz path.
    """
    info = dist.info(device)
    model, cfg, stats = load_dit(checkpoint, overrides.use_ema if overrides else None, info.device)
    scfg = overrides or cfg.sample
    if num_samples is not None or labels is not None:
        scfg = replace(scfg, num_samples=len(labels) if labels is not None else num_samples)
    validate(replace(cfg, sample=scfg))
    if labels is None:
        labels = balanced_labels(scfg.num_samples, model.num_classes)
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.numel() and (labels.min() < 0 or labels.max() > model.num_classes):
        raise OpenVTPError(f"labels must be in [0, {model.num_classes}] ({model.num_classes} = unconditional)")
    decoder = load_tokenizer(tokenizer or cfg.data.tokenizer, info.device) if not isinstance(tokenizer, nn.Module) \
        else tokenizer.to(info.device).eval()
    out = Path(out_dir)
    png_dir = out / "samples"
    png_dir.mkdir(parents=True, exist_ok=True) if scfg.save_png else out.mkdir(parents=True, exist_ok=True)
    if dist.is_main():  # parts left by a killed run
        for f in out.glob(".part_*.npz"):
            f.unlink()
    dist.barrier()

    mine = torch.arange(len(labels))[dist.rank()::dist.world_size()]
    images, index = [], []
    for idx, _, batch in iter_samples(model, decoder.decode, stats, labels, scfg, cfg.data.latent_multiplier,
                                      mine, progress and dist.is_main()):
        arr = to_uint8(batch)
        if scfg.save_png:
            for i, a in zip(idx.tolist(), arr):
                Image.fromarray(a).save(png_dir / f"{i:06d}.png")
        images.append(arr)
        index.append(idx.numpy())
    if images:  # a rank may have nothing to do when there are fewer samples than ranks
        np.savez(out / f".part_{dist.rank():03d}.npz", images=np.concatenate(images), index=np.concatenate(index))
    dist.barrier()
    npz = out / "samples.npz"
    if dist.is_main():
        files = sorted(out.glob(".part_*.npz"))
        parts = [dict(np.load(f)) for f in files]
        order = np.concatenate([p["index"] for p in parts])
        allimg = np.concatenate([p["images"] for p in parts])[np.argsort(order)]
        write_npz(npz, allimg, labels.numpy())
        for f in files:
            f.unlink()
        if scfg.grid_images:
            grid = torch.from_numpy(allimg[: scfg.grid_images]).permute(0, 3, 1, 2).float() / 255
            save_grid(grid, out / "grid.png", grid_nrow)
        (out / "sample_config.json").write_text(json.dumps(vars(scfg), indent=2))
    dist.barrier()
    return npz
