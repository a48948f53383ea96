"""Reading and writing checkpoints in the released layout: config.json + model.safetensors.

Loading is strict (every missing, unexpected or mis-shaped tensor is named) and never
unpickles anything. Hub ids are resolved by `hub.py`.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from openvtp.errors import OpenVTPError
from openvtp.runtime.files import replace_dir, temp_dir, write_safetensors

from .hub import CONFIG_NAME, WEIGHTS_NAME, resolve_model_dir  # noqa: F401 (re-exported)


def read_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    file = model_dir / WEIGHTS_NAME
    if not file.is_file():
        raise OpenVTPError(f"missing weights file: {file}")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise OpenVTPError(f"cannot read {file}: {e}") from None


def check_state_dict(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], source: str) -> None:
    """Raise one error naming every missing, unexpected and mis-shaped tensor."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(f"{k} {tuple(found[k].shape)} != {tuple(expected[k].shape)}"
                    for k in set(expected) & set(found) if found[k].shape != expected[k].shape)
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:8])}" + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""))
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:8])}" + (f" (+{len(unexpected) - 8} more)" if len(unexpected) > 8 else ""))
    if shapes:
        problems.append(f"shape mismatch {'; '.join(shapes[:8])}")
    if problems:
        raise OpenVTPError(f"checkpoint {source} does not match its config: " + " | ".join(problems))


def write_model_dir(path: str | os.PathLike, config_dict: dict, state: dict[str, torch.Tensor]) -> Path:
    """Write config.json + model.safetensors into `path` atomically (temp folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(path.parent, path.name)
    try:
        (tmp / CONFIG_NAME).write_text(json.dumps(config_dict, indent=2) + "\n")
        write_safetensors({k: v.detach().contiguous().cpu() for k, v in state.items()}, tmp / WEIGHTS_NAME,
                          metadata={"format": "pt"})
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
