"""What `openvtp eval` can be asked, checked without torch: the tasks, protocols and preprocessing names,
`EvalOptions`, and the `--data` forms (`check_data_spec`), so that a mistake is one line in well under a second."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from openvtp.errors import OpenVTPError
from openvtp.runtime.precision import check_precision

# How each task family preprocesses images by default, as the released protocols do.
DEFAULT_PREPROCESS = {"recon": "adm", "zeroshot": "squash", "retrieval": "squash", "probe": "crop"}
# VTP's scripts (`--protocol vtp`): zero-shot squashes bilinearly, the probe resizes 256 / crops 224.
VTP_PREPROCESS = {"recon": "adm", "zeroshot": "squash-bilinear", "probe": "crop"}
PREPROCESS_METHODS = ("adm", "squash", "squash-bilinear", "crop", "none")
PREPROCESS_NAMES = {
    "adm": "ADM centre crop (box-halve, bicubic short side, centre crop)",
    "squash": "squash resize (bicubic, aspect ignored)",
    "squash-bilinear": "squash resize (bilinear, aspect ignored: torchvision Resize((s, s)) as VTP's script)",
    "crop": "resize short side to size/crop_pct (bicubic) + centre crop",
    "none": "none (images used at their size)",
}
TASKS = ("zeroshot", "linprobe", "knn", "retrieval", "recon")
LINPROBE_PROTOCOLS = ("simple", "dinov2")
# `--protocol vtp` runs the VTP repository's tools/ scripts where it has one (zeroshot, linprobe, recon); kNN and
# retrieval have none and keep openvtp's protocol, which their entries record.
PROTOCOLS = ("openvtp", "vtp")
VTP_TASKS = ("zeroshot", "linprobe", "recon")
LPIPS_NETS = ("alex", "vgg")


@dataclass
class EvalOptions:
    """Everything `openvtp eval` can change; the defaults are the released protocols."""

    tasks: tuple[str, ...] = TASKS
    protocol: str = "openvtp"  # or "vtp": VTP's tools/ scripts for zeroshot, linprobe and recon
    explicit_tasks: bool = False  # tasks named by the user: one no model can run is an error, not a skip
    size: int | None = None  # default: each model's config.image_size
    preprocess: dict[str, str] = field(default_factory=dict)  # {"recon"|"zeroshot"|"retrieval"|"probe": method}
    crop_pct: float = 0.875
    limit: int | None = None
    train_limit: int | None = None
    train_data: str | None = None
    classnames: str | None = None
    templates: str | None = None
    linprobe: tuple[str, ...] = LINPROBE_PROTOCOLS
    probe_epochs: int = 10
    probe_batch: int | None = None  # default: 1024 (DINOv2), smaller on small sets (see probe_batch_size)
    probe_epoch_length: int = 0  # vtp protocol: iterations per probe epoch; 0: VTP's 1250, at most one pass
    knn_k: int = 20
    knn_temperature: float = 0.07
    fid_weights: str = "auto"  # auto | random | none | path
    lpips: str = "auto"  # auto | random | none
    lpips_net: str | None = None  # alex | vgg; default: alex (openvtp), vgg (vtp)
    batch_size: int = 64
    workers: int | None = None
    chunk_size: int = 1024
    grid: int = 8
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA (float32 where the vtp protocol wants it), else float32
    progress: bool = True
    cache_dir: str | None = None
    seed: int = 0

    def __post_init__(self):
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise OpenVTPError(f"unknown task {unknown[0] if unknown else '(none)'!r}; choose from {', '.join(TASKS)}")
        for group, method in self.preprocess.items():
            if group not in DEFAULT_PREPROCESS:
                raise OpenVTPError(f"--preprocess: unknown task group {group!r}; use {', '.join(DEFAULT_PREPROCESS)}")
            if method not in PREPROCESS_METHODS:
                raise OpenVTPError(f"--preprocess {group}={method}: choose from {', '.join(PREPROCESS_METHODS)}")
        bad = [p for p in self.linprobe if p not in LINPROBE_PROTOCOLS]
        if bad or not self.linprobe:
            raise OpenVTPError(f"--linprobe: unknown protocol {bad[0] if bad else '(none)'!r}; "
                               f"choose from {', '.join(LINPROBE_PROTOCOLS)}")
        if not 0 < self.crop_pct <= 1:
            raise OpenVTPError(f"--crop-pct must be in (0, 1], got {self.crop_pct}")
        for name in ("limit", "train_limit"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise OpenVTPError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("batch_size", "chunk_size", "knn_k", "probe_epochs"):
            if getattr(self, name) <= 0:
                raise OpenVTPError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.size is not None and self.size <= 0:
            raise OpenVTPError(f"--size must be positive, got {self.size}")
        if self.probe_batch is not None and self.probe_batch <= 0:
            raise OpenVTPError(f"--probe-batch must be positive, got {self.probe_batch}")
        if self.protocol not in PROTOCOLS:
            raise OpenVTPError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.lpips_net is not None and self.lpips_net not in LPIPS_NETS:
            raise OpenVTPError(f"--lpips-net must be one of {', '.join(LPIPS_NETS)}, got {self.lpips_net!r}")
        if self.probe_epoch_length < 0:
            raise OpenVTPError(f"--probe-epoch-length must be >= 0 (0: auto), got {self.probe_epoch_length}")
        check_precision(self.precision)
        if self.lpips not in ("auto", "random", "none"):
            raise OpenVTPError(f"--lpips must be auto, random or none, got {self.lpips!r}")
        if self.fid_weights not in ("auto", "random", "none") and not Path(self.fid_weights).is_file():
            raise OpenVTPError(f"--fid-weights: file not found: {self.fid_weights} (or use auto, random, none)")


def is_shards(spec: str) -> bool:
    return spec.endswith(".tar") or "{" in spec or "::" in spec


def check_data_spec(spec: str, train_spec: str | None = None, classnames: str | None = None) -> None:
    """The mistakes in `--data` / `--train-data` that need no image read: what does not exist or does not apply."""
    if spec == "embedded":
        if classnames:
            raise OpenVTPError("--classnames does not apply to --data embedded (its label sets name their classes)")
        if train_spec:
            raise OpenVTPError("--train-data does not apply to --data embedded (its train split is built in)")
        return
    path = Path(spec)
    if path.suffix.lower() in (".csv", ".jsonl", ".json") and not path.is_dir():
        if not path.is_file():
            raise OpenVTPError(f"caption file not found: {path}")
    elif not path.is_dir() and not is_shards(spec):
        raise OpenVTPError(f"--data {spec}: not found, and not 'embedded', a folder, a .csv/.jsonl caption file "
                           "or .tar shards")
    if train_spec and not Path(train_spec).is_dir():
        raise OpenVTPError(f"--train-data must be a folder of class sub-folders: {train_spec}")
