"""Training checkpoints: one directory per step, written atomically, last N kept.

A checkpoint directory `step_0000100/` holds `state.pt` (plain tensors and Python scalars
only, loaded with `weights_only=True`) and `config.yaml`. It is written under a temporary
name and renamed into place, so a killed run never leaves a half-written checkpoint.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from openvtp.errors import OpenVTPError
from openvtp.runtime.files import naming, temp_dir, temp_file

from . import dist

FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")


def _atomic_write(path: str | Path, write) -> None:
    """`write(f)` into a temp file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(path.parent, path.name)
    try:
        with naming(path), os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    _atomic_write(path, lambda f: torch.save(obj, f))


def write_json_atomic(data: dict, path: str | Path) -> None:
    """Summaries are read by people and scripts while runs go on: never a half-written one."""
    _atomic_write(path, lambda f: f.write((json.dumps(data, indent=2) + "\n").encode()))


def open_run_dir(out: Path, cfg: Any, main: bool) -> str:
    """Create the run folder with its config.yaml (rank 0; every rank waits for it) and return that YAML, which
    every checkpoint of the run carries."""
    from omegaconf import OmegaConf

    text = OmegaConf.to_yaml(OmegaConf.structured(cfg))
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(text)
    dist.barrier()
    return text


def checkpointer(out: Path, main: bool, config_yaml: str, keep_last: int,
                 state: Callable[[int], dict]) -> Callable[[int], None]:
    """`save(step)`: on every rank (`state(step)` may be a collective, as FSDP's full state dicts are), rank 0
    writes the checkpoint, and all ranks wait for it."""
    def save(at: int) -> None:
        full = state(at)
        if main:
            save_checkpoint(out, at, full, config_yaml, keep_last)
        dist.barrier()
    return save


def save_checkpoint(run_dir: str | Path, step: int, state: dict, config_yaml: str, keep_last: int = 3) -> Path:
    """Write `run_dir/checkpoints/step_XXXXXXX/` atomically and prune old ones."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = temp_dir(root, final.name)
    try:
        with naming(final), open(tmp / "state.pt", "wb") as f:  # a full disk: OSError, not torch's RuntimeError
            torch.save({"format_version": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        (tmp / "config.yaml").write_text(config_yaml)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(root.parent)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint directories of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / "state.pt").is_file()]
    return [p for _, p in sorted(found)]


def resolve_resume(run_dir: str | Path, resume: str) -> Path | None:
    """`resume` is '' (fresh run), 'latest' (newest in run_dir, or none), or a checkpoint dir."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if (path / "state.pt").is_file():
        return path
    raise OpenVTPError(f"no checkpoint at {path} (expected {path / 'state.pt'})")


def load_checkpoint(path: str | Path) -> dict:
    """Load `state.pt` of a checkpoint directory (or the file itself) without unpickling code."""
    path = Path(path)
    file = path / "state.pt" if path.is_dir() else path
    if not file.is_file():
        raise OpenVTPError(f"checkpoint not found: {file}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file or foreign pickle
        raise OpenVTPError(f"cannot read checkpoint {file}: {str(e).splitlines()[0]}") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise OpenVTPError(f"{file} is not an openvtp checkpoint of format {FORMAT_VERSION}")
    return state


def restore_checkpoint(path: str | Path, parts: dict[str, Any]) -> int:
    """Load `state[key]` into each `parts[key]` (anything with `load_state_dict`); returns the step."""
    state = load_checkpoint(path)
    try:
        for key, part in parts.items():
            part.load_state_dict(state[key])
    except (RuntimeError, ValueError, KeyError) as e:
        raise OpenVTPError(f"checkpoint {path} does not match this config: {str(e).splitlines()[0]}") from None
    return int(state["step"])
