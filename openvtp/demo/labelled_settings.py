"""The settings a labelled set gets (`openvtp demo --data`, `openvtp study --data`), chosen from the data alone,
once, before any outcome: a preset per resolution, plus the amounts that follow from the data's size.

The rules are overrides placed before the user's, so every one of them can be overridden with the usual prefixed
keys, and `--print-config` shows the result. docs/study.md ("Your own data") explains each.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from openvtp.errors import OpenVTPError

from .labelled import CSV, DIGITS, LabelledRequest, LabelledSet, read_labelled, read_prepared


@dataclass(frozen=True)
class Tier:
    """The preset of one band of image sides: the patch that keeps the token grid near the demo's 8 x 8, and the
    fixed step counts of the stages after the tokenizer."""

    max_side: int  # images up to this side (px)
    patch: int
    tokenizer_steps: int  # `openvtp demo` only: a study sets them per cell (--tokenizer-steps)
    decoder_steps: int
    dit_steps: int
    judge_steps: int


# 17-48 px is the embedded demo's band: at 32 px the rules give the demo's own settings
TIERS = (Tier(16, 2, 500, 500, 1000, 300), Tier(48, 4, 1000, 1000, 4000, 600), Tier(96, 8, 1000, 1000, 4000, 600),
         Tier(10**9, 16, 1000, 1000, 4000, 600))
MAX_LATENT_IMAGES = 4000  # the demo's: train images encoded for the DiT (all of them when there are fewer)


def tier_for(side: int) -> Tier:
    return next(t for t in TIERS if side <= t.max_side)


def default_size(native: int) -> int:
    """The data's own side rounded to its band's patch (at least two patches)."""
    patch = tier_for(max(native, 1)).patch
    return max(2 * patch, round(native / patch) * patch)


@dataclass
class DataPlan:
    """What `--data` adds to a demo plan: the labelled set, the folder it is prepared in for training, and the FID
    Inception weights for the optional Inception FID ('' skips it)."""

    labelled: LabelledSet
    folder: Path
    fid_weights: str = ""

    @property
    def mirror(self) -> bool:
        """Whether a mirrored image keeps its class: not for handwritten digits; assumed for photographs."""
        return self.labelled.request.data != DIGITS

    def settings(self) -> dict:
        """What a study folder records so that a rerun cannot mix in cells of other data."""
        return {"request": vars(self.labelled.request), "digest": self.labelled.digest,
                "fid_weights": self.fid_weights or None}


def open_data(request: LabelledRequest, folder: Path, fid_weights: str = "") -> DataPlan:
    """The set `request` names: read from `folder` when it was prepared there for the same request, else decoded."""
    if request.size is not None and request.size <= 0:
        raise OpenVTPError(f"--size must be positive, got {request.size}")
    if not 0 < request.heldout_fraction < 1:
        raise OpenVTPError(f"--heldout-fraction must be in (0, 1), got {request.heldout_fraction:g}")
    labelled = read_prepared(folder, request) or read_labelled(request, default_size)
    patch = tier_for(labelled.size).patch
    if labelled.size % patch:
        lo = labelled.size // patch * patch
        raise OpenVTPError(f"--size {labelled.size} is not a multiple of its patch size {patch} "
                           f"(try {max(lo, 2 * patch)} or {lo + patch})")
    if fid_weights and not Path(fid_weights).is_file():
        raise OpenVTPError(f"--fid-weights: no such file {fid_weights}")
    return DataPlan(labelled, folder, fid_weights)


def data_overrides(data: DataPlan, grid: int | None = None) -> list[str]:
    """The settings of `data`, as demo overrides. grid: the tokenizer's latent side once its config is known (the
    DiT's patch follows it); default the band's."""
    s, folder = data.labelled, data.folder
    t = tier_for(s.size)
    grid = grid or s.size // t.patch
    local = max(t.patch, s.size // 2 // t.patch * t.patch)
    source = [f"data.source=folder", f"data.path={folder}", f"data.captions={folder / CSV}", "data.photo_fraction=0"]
    out = [*source, f"model.image_size={s.size}", f"model.vision_patch_size={t.patch}", f"ssl.global_size={s.size}",
           f"ssl.local_size={local}", f"ssl.blur_reference=[{s.size},{local}]", f"train.steps={t.tokenizer_steps}"]
    if not data.mirror:
        out.append("ssl.flip_p=0")
    out += [f"decoder.{item}" for item in source] + [f"decoder.train.steps={t.decoder_steps}"]
    if s.size < 16:  # the discriminator's two stride-2 layers would leave no patch to judge
        out.append("decoder.gan.disc_layers=1")
    out += [f"dit.model.patch_size={2 if grid >= 8 and grid % 2 == 0 else 1}", f"dit.train.steps={t.dit_steps}",
            f"dit.data.flip={str(data.mirror).lower()}"]
    out += ["generation.condition=class", f"generation.num_images={min(len(s.train_labels), MAX_LATENT_IMAGES)}",
            f"generation.judge_steps={t.judge_steps}"]
    return out
