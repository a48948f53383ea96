"""The pre-training config tree: the only place where defaults are set.

Presets (`presets/*.yaml`) hold differences from these defaults; `key.sub=value` overrides
come last. Defaults for the objectives follow method.md §3 (DINOv2 / OpenCLIP where VTP is
silent); sizes default to the released VTP-L.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from openvtp.errors import OpenVTPError
from openvtp.models.config import VTPConfig
from openvtp.runtime.precision import PRECISIONS


PHOTOMETRIC_PLACES = ("sample", "batch", "device")
RESAMPLERS = ("pil", "torch")  # openvtp.data.images.decode_image's


@dataclass
class DataConfig:
    source: str = "embedded"        # embedded | shards | folder
    path: str = ""                  # shards: brace pattern / list joined by '::'; folder: root
    captions: str = ""              # folder: CSV/JSONL file of (file, caption); empty: class folder names
    photo_fraction: float = 0.1     # embedded: share of real photographs among the procedural scenes
    colours_per_batch: int = 0      # embedded: >0 draws each step's scenes from this many colours (hard negatives)
    shape_twins: bool = False       # embedded: every other scene is its neighbour with another shape (minimal pairs)
    workers: int = 0                # DataLoader worker processes
    # where the multi-crop photometrics run: sample (crop by crop in the loader; bit-stable, the demo's),
    # batch (all crops of a batch at once in the loader), device (at once on the training device: for GPUs)
    photometric: str = "sample"
    # shards and folders: the resize to model.image_size at decode, pil (Pillow bicubic, sub-pixel box) | torch
    # (torch's uint8 antialiased bicubic over a whole-pixel box: faster, pixels within a few levels of pil's)
    resampler: str = "pil"
    shuffle_buffer: int = 1000      # shards


@dataclass
class ClipConfig:
    weight: float = 1.0             # lambda_clip; 0 removes the branch
    max_logit_scale: float = 100.0  # exp(logit_scale) is clamped here (OpenCLIP)
    crop_scale: tuple[float, float] = (0.9, 1.0)
    drop_path: float = 0.0


@dataclass
class SSLConfig:
    """DINOv2's recipe as its code runs it (ssl_default_config.yaml, the ViT-L/16 recipe), where VTP is silent.

    Step counts are DINOv2's iterations: an epoch is 1250 of them (OFFICIAL_EPOCH_LENGTH).
    """

    weight: float = 1.0             # lambda_ssl; 0 removes the branch (and the teacher)
    batch: int = 4096               # B_ssl: images per step that feed DINO + iBOT
    prototypes: int = 65536         # K; far fewer at demo scale
    head_hidden: int = 2048
    head_bottleneck: int = 256
    ibot_separate_head: bool = False  # True: iBOT gets its own head (and teacher head), as DINOv2's ViT-L/g recipes
    train_gain: bool = True         # the last layer's weight-norm gain g is learnt (DINOv2); False fixes it at 1
    freeze_last_layer_steps: int = 1250   # the heads' last layer (prototypes, gain) has lr 0 this long (one epoch)
    n_global: int = 2
    n_local: int = 8
    global_size: int = 224
    local_size: int = 96
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    gray_p: float = 0.2
    # DINOv2's GaussianBlur hands 1-p to RandomApply: its stated (1.0, 0.1, 0.5) blur with these rates
    blur_p: tuple[float, float, float] = (0.0, 0.9, 0.5)  # first global crop, other globals, locals
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # px (and a 9 px kernel) at blur_reference; scaled with the crop size
    blur_reference: tuple[int, int] = (224, 96)   # global, local crop sides at which blur_sigma holds: DINOv2's
    solarize_p: float = 0.2         # globals after the first
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    mask_probability: float = 0.5   # share of the step's global crops masked (which ones: shuffled)
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    ibot_normalize: str = "all"     # all: per-image patch CE summed / all global crops (DINOv2) | masked: / masked crops
    koleo_crops: str = "sum"        # sum over the global crops (DINOv2) | mean
    koleo_batch: str = "rank"       # rank: each process's batch (DINOv2) | global: gathered over ranks
    centering: str = "sinkhorn"     # sinkhorn | softmax
    student_temp: float = 0.1
    teacher_temp: tuple[float, float] = (0.04, 0.07)
    teacher_temp_warmup_steps: int = 37500   # 30 epochs
    momentum: tuple[float, float] = (0.992, 1.0)   # teacher EMA, cosine from first to second
    drop_path: float = 0.3


@dataclass
class ReconConfig:
    weight: float = 0.1             # lambda_rec; 0 removes the branch (and the decoder's compute)
    batch: int = 2048               # B_rec
    l1_weight: float = 1.0
    lpips_weight: float = 1.0
    lpips_backbone: str = "pretrained"   # pretrained | random | path to VGG weights
    drop_path: float = 0.0


@dataclass
class OptimConfig:
    lr: float = 5e-4
    min_lr: float = 1e-6
    weight_decay: float = 0.04      # cosine from weight_decay to weight_decay_end (DINOv2); equal values: constant
    weight_decay_end: float = 0.4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    warmup_steps: int = 2000
    grad_clip: float = 3.0          # 0 disables
    clip_mode: str = "module"       # module: each part's norm clipped alone (DINOv2) | global: one norm over all
    layer_decay: float = 0.9        # lr x layer_decay^(depth + 1 - layer) over the vision trunk (DINOv2)
    patch_embed_lr_mult: float = 0.2
    accum_steps: int = 1


@dataclass
class EvalDuringTraining:
    every: int = 0                  # steps between quick evaluations; 0: only at the end
    images: int = 256               # held-out images used
    seed: int = 0                   # draws the held-out images: every run is measured on the same ones


@dataclass
class TrainConfig:
    steps: int = 100000
    batch: int = 16384              # B: global contrastive batch (all ranks, all accumulation steps)
    seed: int = 0
    out_dir: str = "runs/pretrain"
    device: str = "auto"            # auto | cpu | cuda
    parallel: str = "ddp"           # ddp | fsdp (FSDP2: sharded parameters, gradients, optimizer state); torchrun only
    precision: str = "auto"         # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    log_every: int = 10
    image_every: int = 500          # reconstruction grid PNG
    ckpt_every: int = 1000
    keep_last: int = 3
    max_bad_steps: int = 5          # consecutive non-finite losses before the run stops
    resume: str = ""                # '' | latest | path to a checkpoint directory
    time_limit_s: float = 0.0       # stop (and checkpoint) after this long; 0: no limit
    threads: int = 0                # CPU threads for the step (torch.set_num_threads); 0: torch's default
    activation_checkpointing: bool = False  # recompute each transformer block's activations in backward (pre-training)
    compile: bool = False           # torch.compile each transformer block (pre-training; CPU needs a C++ compiler)


@dataclass
class PretrainConfig:
    model: VTPConfig = field(default_factory=VTPConfig)
    data: DataConfig = field(default_factory=DataConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    recon: ReconConfig = field(default_factory=ReconConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalDuringTraining = field(default_factory=EvalDuringTraining)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class DecoderLossConfig:
    l1_weight: float = 1.0
    lpips_weight: float = 1.0
    lpips_backbone: str = "pretrained"   # pretrained | random | path to VGG weights


@dataclass
class GANConfig:
    weight: float = 0.5             # discriminator weight, times VQGAN's adaptive weight
    start_step: int = 5000          # the adversarial terms switch on here (the decoder warms up on L1 + LPIPS)
    adaptive: bool = True           # balance the GAN gradient against the reconstruction one at the last layer
    max_adaptive_weight: float = 1e4
    disc_channels: int = 64
    disc_layers: int = 3
    disc_lr: float = 0.0            # 0: optim.lr
    disc_betas: tuple[float, float] = (0.5, 0.9)


@dataclass
class FinetuneDecoderConfig:
    """Stage 2: the encoder and bottleneck are frozen; only the pixel decoder (and a discriminator) learn."""

    init: str = ""                  # stage-1 tokenizer: from_pretrained folder, pretrain run folder, or hub id
    data: DataConfig = field(default_factory=DataConfig)
    loss: DecoderLossConfig = field(default_factory=DecoderLossConfig)
    gan: GANConfig = field(default_factory=GANConfig)
    # stage 2 keeps OpenCLIP-style AdamW: constant weight decay, beta2 0.95, one global clip at 1
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        lr=1e-4, warmup_steps=500, weight_decay=0.0, weight_decay_end=0.0, beta2=0.95, grad_clip=1.0,
        clip_mode="global", layer_decay=1.0, patch_embed_lr_mult=1.0))
    eval: EvalDuringTraining = field(default_factory=EvalDuringTraining)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=20000, batch=256, out_dir="runs/decoder"))


def require(ok: bool, key: str, message: str) -> None:
    """The one way configs are checked: `config 'KEY': MESSAGE` when `ok` is false."""
    if not ok:
        raise OpenVTPError(f"config '{key}': {message}")


def _validate_common(t: TrainConfig, d: DataConfig, o: OptimConfig, e: EvalDuringTraining) -> None:
    """Checks shared by every config tree that has `train`, `data`, `optim` and `eval` sections."""
    require(t.steps > 0, "train.steps", "must be positive")
    require(t.batch > 0, "train.batch", f"must be positive, got {t.batch}")
    require(t.log_every > 0, "train.log_every", "must be positive")
    require(t.ckpt_every > 0, "train.ckpt_every", "must be positive")
    require(t.image_every >= 0, "train.image_every", "must be >= 0 (0: no grids during training)")
    require(t.keep_last >= 0, "train.keep_last", "must be >= 0 (0: keep every checkpoint)")
    require(t.max_bad_steps >= 1, "train.max_bad_steps", "must be >= 1")
    require(t.time_limit_s >= 0, "train.time_limit_s", "must be >= 0 (0: no limit)")
    require(d.workers >= 0, "data.workers", "must be >= 0")
    require(d.resampler in RESAMPLERS, "data.resampler", f"must be one of {', '.join(RESAMPLERS)}")
    require(d.photometric in PHOTOMETRIC_PLACES, "data.photometric", f"must be one of {', '.join(PHOTOMETRIC_PLACES)}")
    require(d.shuffle_buffer >= 0, "data.shuffle_buffer", "must be >= 0")
    require(o.lr > 0, "optim.lr", f"must be positive, got {o.lr}")
    require(0 <= o.min_lr <= o.lr, "optim.min_lr", f"must be in [0, optim.lr], got {o.min_lr}")
    require(o.weight_decay >= 0 and o.weight_decay_end >= 0, "optim.weight_decay, optim.weight_decay_end",
            "must be >= 0")
    require(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, "optim.beta1, optim.beta2", "must be in [0, 1)")
    require(o.eps > 0, "optim.eps", "must be positive")
    require(o.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
    require(o.grad_clip >= 0, "optim.grad_clip", "must be >= 0 (0: no clipping)")
    require(o.clip_mode in ("module", "global"), "optim.clip_mode", "must be module or global")
    require(0 < o.layer_decay <= 1, "optim.layer_decay", "must be in (0, 1]")
    require(o.patch_embed_lr_mult >= 0, "optim.patch_embed_lr_mult", "must be >= 0")
    require(e.every >= 0, "eval.every", "must be >= 0 (0: only at the end)")
    require(e.images > 0, "eval.images", "must be positive")
    require(t.threads >= 0, "train.threads", "must be >= 0 (0: torch's default)")
    require(t.precision in PRECISIONS, "train.precision", f"must be one of {', '.join(PRECISIONS)}")
    require(t.device in ("auto", "cpu", "cuda"), "train.device", "must be auto, cpu or cuda")
    require(t.parallel in ("ddp", "fsdp"), "train.parallel", f"must be ddp or fsdp, got '{t.parallel}'")
    require(d.source in ("embedded", "shards", "folder"), "data.source", "must be embedded, shards or folder")
    require(d.source == "embedded" or d.path, "data.path", f"is required for data.source={d.source}")
    require(0 <= d.photo_fraction <= 1, "data.photo_fraction", "must be in [0, 1]")
    require(0 <= d.colours_per_batch <= 7, "data.colours_per_batch", "must be in 0..7 (0: every colour)")


def validate_finetune(cfg: FinetuneDecoderConfig, world_size: int = 1) -> None:
    t = cfg.train
    require(bool(cfg.init), "init", "the stage-1 tokenizer to fine-tune is required")
    _validate_common(t, cfg.data, cfg.optim, cfg.eval)
    require(t.batch % world_size == 0, "train.batch", f"{t.batch} is not divisible by the world size {world_size}")
    require(cfg.optim.accum_steps == 1, "optim.accum_steps", "must be 1 for decoder fine-tuning")
    require(cfg.optim.weight_decay_end == cfg.optim.weight_decay, "optim.weight_decay_end",
            "must equal optim.weight_decay: decoder fine-tuning uses a constant weight decay")
    require(t.parallel == "ddp", "train.parallel", "decoder fine-tuning supports only ddp")
    require(not t.compile and not t.activation_checkpointing, "train.compile, train.activation_checkpointing",
            "apply to pre-training only, not decoder fine-tuning")
    require(cfg.loss.l1_weight >= 0 and cfg.loss.lpips_weight >= 0 and cfg.gan.weight >= 0,
            "loss.l1_weight, loss.lpips_weight, gan.weight", "must be >= 0")
    require(cfg.loss.l1_weight > 0 or cfg.loss.lpips_weight > 0, "loss.l1_weight", "or loss.lpips_weight must be > 0")
    require(cfg.gan.start_step >= 0, "gan.start_step", "must be >= 0")
    require(cfg.gan.disc_layers >= 1 and cfg.gan.disc_channels > 0, "gan.disc_layers, gan.disc_channels",
            "must be positive")
    require(cfg.gan.disc_lr >= 0, "gan.disc_lr", "must be >= 0 (0: optim.lr)")
    require(cfg.gan.max_adaptive_weight > 0, "gan.max_adaptive_weight", "must be positive")
    require(all(0 <= b < 1 for b in cfg.gan.disc_betas), "gan.disc_betas", "must be in [0, 1)")


def validate(cfg: PretrainConfig, world_size: int = 1) -> None:
    """Impossible configs fail here, before any data or model is built."""
    m, t = cfg.model, cfg.train
    _validate_common(t, cfg.data, cfg.optim, cfg.eval)
    require(cfg.clip.weight >= 0 and cfg.ssl.weight >= 0 and cfg.recon.weight >= 0,
            "clip.weight, ssl.weight, recon.weight", "must be >= 0")
    require(cfg.clip.max_logit_scale > 0, "clip.max_logit_scale", "must be positive")
    require(cfg.clip.weight > 0 or cfg.ssl.weight > 0 or cfg.recon.weight > 0,
            "clip.weight, ssl.weight, recon.weight", "all 0: nothing to train")
    require(cfg.clip.weight == 0 or m.train_clip, "clip.weight", "> 0 needs a text tower (model.train_clip=true)")
    require(cfg.recon.weight == 0 or m.train_reconstruction, "recon.weight",
            "> 0 needs a decoder (model.train_reconstruction=true)")
    p = m.vision_patch_size
    require(m.image_size % p == 0, "model.image_size", f"{m.image_size} is not a multiple of the patch size {p}")
    per = world_size * cfg.optim.accum_steps
    require(cfg.optim.accum_steps >= 1, "optim.accum_steps", "must be >= 1")
    require(t.batch % per == 0, "train.batch", f"{t.batch} is not divisible by world size x accum_steps ({per})")
    require(not cfg.data.shape_twins or (t.batch // per) % 2 == 0, "data.shape_twins",
            f"needs an even batch per process and micro-step, got {t.batch // per}")
    for name, sub, on in (("ssl", cfg.ssl.batch, cfg.ssl.weight > 0), ("recon", cfg.recon.batch, cfg.recon.weight > 0)):
        if not on:
            continue
        require(0 < sub <= t.batch, f"{name}.batch", f"{sub} must be in 1..train.batch ({t.batch})")
        require(t.batch % sub == 0, "train.batch",
                f"{t.batch} must be a multiple of {name}.batch {sub} (subsets are strided)")
        require(sub % per == 0, f"{name}.batch", f"{sub} is not divisible by world size x accum_steps ({per})")
    if cfg.ssl.weight > 0:
        s = cfg.ssl
        require(s.global_size % p == 0 and s.local_size % p == 0, "ssl.global_size, ssl.local_size",
                f"{s.global_size} and {s.local_size} must be multiples of the patch size {p}")
        require(s.n_global >= 1 and s.n_local >= 0 and s.n_global + s.n_local >= 2, "ssl.n_global, ssl.n_local",
                "need >= 1 global and >= 2 crops in all")
        require(s.centering in ("sinkhorn", "softmax"), "ssl.centering", "must be sinkhorn or softmax")
        require(0 <= s.mask_ratio[0] <= s.mask_ratio[1] < 1, "ssl.mask_ratio", "must satisfy 0 <= lo <= hi < 1")
        require(s.prototypes > 0, "ssl.prototypes", "must be positive")
        require(s.student_temp > 0 and min(s.teacher_temp) > 0, "ssl.student_temp, ssl.teacher_temp",
                "must be positive")
        require(s.freeze_last_layer_steps >= 0, "ssl.freeze_last_layer_steps", "must be >= 0")
        for key in ("flip_p", "jitter_p", "gray_p", "solarize_p", "mask_probability"):
            require(0 <= getattr(s, key) <= 1, f"ssl.{key}", "must be in [0, 1]")
        require(all(0 <= v <= 1 for v in s.blur_p), "ssl.blur_p", "values must be in [0, 1]")
        require(0 < s.blur_sigma[0] <= s.blur_sigma[1], "ssl.blur_sigma", "must satisfy 0 < lo <= hi")
        require(min(s.blur_reference) > 0, "ssl.blur_reference", "sizes must be positive")
        require(s.ibot_normalize in ("all", "masked"), "ssl.ibot_normalize", "must be all or masked")
        require(s.koleo_crops in ("sum", "mean"), "ssl.koleo_crops", "must be sum or mean")
        require(s.koleo_batch in ("rank", "global"), "ssl.koleo_batch", "must be rank or global")
        koleo_n = s.batch // (per if s.koleo_batch == "rank" else cfg.optim.accum_steps)
        require(s.koleo_weight == 0 or koleo_n >= 2, "ssl.koleo_weight",
                f"KoLeo needs >= 2 images per crop in its batch, got {koleo_n} (ssl.koleo_batch={s.koleo_batch})")
