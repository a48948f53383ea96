"""Configuration of the generation side: DiT size, latent data, flow loss, training, sampling, FID.

The defaults are the VTP repository's published LightningDiT-XL/1 setting (generation/configs/
train_vtp_l_dit_xl.yaml): 100k steps at batch 1024, AdamW lr 2e-4, beta2 0.95, EMA 0.9999,
class dropout 0.1, logit-normal t (mu -0.75, sigma 1), cosine loss term, Euler 250 steps with
timestep shift 0.075 and no guidance, FID-50K. Times follow SiT's convention (t = 0 noise,
t = 1 data; see `openvtp.losses.flow`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from openvtp.config.schema import require
from openvtp.models.dit_sizes import DIT_PRESETS
from openvtp.runtime.precision import PRECISIONS

SAMPLERS = ("euler", "heun", "dopri5")
TIMESTEP_SAMPLING = ("logit_normal", "uniform")  # openvtp.losses.flow's modes, named here so configs load without torch
FID_LABELS = ("balanced", "random")


@dataclass
class DiTConfig:
    arch: str = "dit-xl-1"  # a name from models.dit.DIT_PRESETS: dit-{tiny,mini,s,b,l,xl}-{1,2}
    hidden_size: int = 0  # 0 takes the arch's value; >0 overrides it
    depth: int = 0
    num_heads: int = 0
    patch_size: int = 0
    mlp_ratio: float = 4.0
    use_qk_norm: bool = False  # VTP's configs: off
    use_swiglu: bool = True
    use_rmsnorm: bool = True
    use_rope: bool = True
    class_dropout_prob: float = 0.1  # labels replaced by the null class in training, for guidance


@dataclass
class LatentDataConfig:
    latents_dir: str = ""  # written by extract_latents
    stats: str = ""  # latents_stats.pt; '' means <latents_dir>/latents_stats.pt
    num_classes: int = 1000
    latent_multiplier: float = 1.0  # LightningDiT's: normalised latents are multiplied by it
    workers: int = 2  # DataLoader worker processes
    tokenizer: str = ""  # VTP checkpoint dir; decodes samples (sample, gfid)
    flip: bool = True  # train on the stored mirror images half the time; false for classes a mirror changes (digits)


@dataclass
class FlowConfig:
    timestep_sampling: str = "logit_normal"  # or "uniform"
    lognorm_mu: float = -0.75  # VTP's value, SiT time convention; LightningDiT's default is 0
    lognorm_sigma: float = 1.0
    cos_weight: float = 1.0  # LightningDiT's use_cosine_loss; 0 turns the term off


@dataclass
class DiTOptimConfig:
    """AdamW at a constant learning rate: no warmup, no decay schedule (VTP's configs)."""

    lr: float = 2e-4
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # 0: no clipping (VTP's configs set none); the norm is logged anyway


@dataclass
class DiTTrainConfig:
    out_dir: str = "runs/dit"
    steps: int = 100_000
    batch: int = 1024  # global, split over ranks
    ema_decay: float = 0.9999
    seed: int = 0
    log_every: int = 100
    ckpt_every: int = 20_000  # 0: only at the end
    keep_last: int = 3  # 0: keep every checkpoint
    max_bad_steps: int = 5  # consecutive non-finite steps (skipped) before the run stops
    resume: str = ""  # '' fresh, 'latest' newest checkpoint in out_dir, or a checkpoint dir
    time_limit_s: float = 0.0  # stop (and checkpoint) after this long; 0: no limit
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    tensorboard: bool = True
    progress: bool = True


@dataclass
class SampleConfig:
    method: str = "euler"  # euler | heun | dopri5
    num_steps: int = 250  # time-grid points as LightningDiT (Euler does num_steps - 1 updates)
    timestep_shift: float = 0.075  # 0 = uniform grid; t' = s t / (1 + (s - 1) t)
    atol: float = 1e-6  # dopri5 only
    rtol: float = 1e-3
    cfg_scale: float = 1.0  # 1 = no guidance (one model pass per step)
    cfg_interval_start: float = 0.0  # guidance only for t in [start, end]
    cfg_interval_end: float = 1.0
    guided_channels: int = 0  # 0 = all channels; 3 = LightningDiT's released code
    num_samples: int = 50_000
    batch: int = 64  # per process
    seed: int = 0
    use_ema: bool = True
    save_png: bool = True
    grid_images: int = 64  # images in grid.png


@dataclass
class FIDConfig:
    reference: str = ""  # ADM reference batch / stats .npz, or an image folder
    weights: str = "auto"  # the Inception network's: "auto" | weights path | "random" (tests only)
    batch: int = 50
    labels: str = "balanced"  # class labels of the samples: "balanced" (exact counts) | "random" (LightningDiT)
    is_split_size: int = 5000  # Inception Score over contiguous chunks of this many images, as ADM's evaluator


@dataclass
class GenerationConfig:
    model: DiTConfig = field(default_factory=DiTConfig)
    data: LatentDataConfig = field(default_factory=LatentDataConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    optim: DiTOptimConfig = field(default_factory=DiTOptimConfig)
    train: DiTTrainConfig = field(default_factory=DiTTrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    fid: FIDConfig = field(default_factory=FIDConfig)


def dit_kwargs(cfg: DiTConfig) -> dict:
    """Size and feature arguments of LightningDiT (without input_size, in_channels, num_classes)."""
    size = dict(DIT_PRESETS[cfg.arch])
    for key in ("hidden_size", "depth", "num_heads", "patch_size"):
        if getattr(cfg, key) > 0:
            size[key] = getattr(cfg, key)
    return dict(size, mlp_ratio=cfg.mlp_ratio, use_qknorm=cfg.use_qk_norm, use_swiglu=cfg.use_swiglu,
                use_rmsnorm=cfg.use_rmsnorm, use_rope=cfg.use_rope, class_dropout_prob=cfg.class_dropout_prob)


def validate(cfg: GenerationConfig, world_size: int = 1) -> None:
    """Reject impossible values before any data or model is built."""
    m, d, f, o, t, s, q = cfg.model, cfg.data, cfg.flow, cfg.optim, cfg.train, cfg.sample, cfg.fid
    require(m.arch in DIT_PRESETS, "model.arch", f"unknown '{m.arch}' (known: {', '.join(DIT_PRESETS)})")
    for key in ("hidden_size", "depth", "num_heads", "patch_size"):
        require(getattr(m, key) >= 0, f"model.{key}", "must be >= 0 (0 takes the arch's value)")
    k = dit_kwargs(m)
    require(k["patch_size"] in (1, 2), "model.patch_size", f"must be 1 or 2, got {k['patch_size']}")
    require(k["hidden_size"] % k["num_heads"] == 0, "model.hidden_size",
           f"{k['hidden_size']} is not divisible by num_heads {k['num_heads']}")
    require(k["hidden_size"] % 4 == 0, "model.hidden_size", "must be a multiple of 4 (2-D sin-cos positions)")
    if m.use_rope:
        require((k["hidden_size"] // k["num_heads"]) % 4 == 0, "model.num_heads",
               f"head dim {k['hidden_size'] // k['num_heads']} must be a multiple of 4 for 2-D RoPE")
    require(m.mlp_ratio > 0, "model.mlp_ratio", "must be > 0")
    require(0.0 <= m.class_dropout_prob < 1.0, "model.class_dropout_prob", "must be in [0, 1)")
    require(d.num_classes >= 1, "data.num_classes", "must be >= 1")
    require(d.latent_multiplier > 0, "data.latent_multiplier", "must be > 0")
    require(d.workers >= 0, "data.workers", "must be >= 0")
    require(f.timestep_sampling in TIMESTEP_SAMPLING, "flow.timestep_sampling",
           f"unknown '{f.timestep_sampling}' (choose from {', '.join(TIMESTEP_SAMPLING)})")
    require(f.lognorm_sigma > 0, "flow.lognorm_sigma", "must be > 0")
    require(f.cos_weight >= 0, "flow.cos_weight", "must be >= 0")
    require(t.steps > 0, "train.steps", "must be > 0")
    require(o.lr > 0, "optim.lr", "must be > 0")
    require(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, "optim.beta1/beta2", "must be in [0, 1)")
    require(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    require(o.grad_clip >= 0, "optim.grad_clip", "must be >= 0 (0 = off)")
    require(t.batch > 0 and t.batch % world_size == 0, "train.batch",
           f"{t.batch} must be positive and divisible by the world size {world_size}")
    require(0 <= t.ema_decay <= 1, "train.ema_decay", "must be in [0, 1]")
    require(t.log_every > 0, "train.log_every", "must be > 0")
    require(t.ckpt_every >= 0, "train.ckpt_every", "must be >= 0")
    require(t.keep_last >= 0, "train.keep_last", "must be >= 0 (0 = keep every checkpoint)")
    require(t.max_bad_steps >= 1, "train.max_bad_steps", "must be >= 1")
    require(t.time_limit_s >= 0, "train.time_limit_s", "must be >= 0 (0 = no limit)")
    require(t.precision in PRECISIONS, "train.precision", f"choose from {', '.join(PRECISIONS)}")
    require(s.method in SAMPLERS, "sample.method", f"unknown '{s.method}' (choose from {', '.join(SAMPLERS)})")
    require(s.num_steps >= 2, "sample.num_steps", "must be >= 2 (grid points including both ends)")
    require(s.timestep_shift >= 0, "sample.timestep_shift", "must be >= 0 (0 = no shift)")
    require(s.atol > 0 and s.rtol > 0, "sample.atol/rtol", "must be > 0")
    require(s.cfg_scale >= 0, "sample.cfg_scale", "must be >= 0")
    require(0 <= s.cfg_interval_start <= s.cfg_interval_end <= 1, "sample.cfg_interval_start/end",
           "need 0 <= start <= end <= 1")
    require(s.guided_channels >= 0, "sample.guided_channels", "must be >= 0 (0 = all)")
    require(s.num_samples > 0, "sample.num_samples", "must be > 0")
    require(s.batch > 0, "sample.batch", "must be > 0")
    require(s.grid_images >= 0, "sample.grid_images", "must be >= 0")
    require(q.batch > 0, "fid.batch", "must be > 0")
    require(q.labels in FID_LABELS, "fid.labels", f"unknown '{q.labels}' (choose from {', '.join(FID_LABELS)})")
    require(q.is_split_size > 0, "fid.is_split_size", "must be > 0")
