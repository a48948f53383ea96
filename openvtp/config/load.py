"""Configs are data: dataclass defaults, then a preset or YAML file, then dotted overrides.

OmegaConf's structured configs give us what a hand-written merger would: unknown keys are
errors, values keep their types, and `key.sub=value` overrides parse like YAML scalars.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from openvtp.errors import OpenVTPError

T = TypeVar("T")
PRESET_DIR = Path(__file__).parent / "presets"


def preset_names(prefix: str = "") -> list[str]:
    """Names of the shipped YAML presets (file stems), optionally filtered by prefix."""
    return sorted(p.stem for p in PRESET_DIR.glob(f"{prefix}*.yaml"))


def resolve_config_path(name_or_path: str) -> Path:
    """A YAML file path, or the name of a shipped preset."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise OpenVTPError(f"config file not found: {path}")
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if not preset.is_file():
        raise OpenVTPError(f"unknown preset '{name_or_path}' (presets: {', '.join(preset_names())})")
    return preset


def _clean(message: str) -> str:
    first = message.strip().splitlines()[0] if message.strip() else message
    return first


def _read_yaml(path: Path):
    """A YAML config file as an OmegaConf node; a syntax error names the file, line and column."""
    import yaml

    try:
        raw = OmegaConf.load(path)
    except yaml.MarkedYAMLError as e:
        def at(mark) -> str:
            return f"line {mark.line + 1}, column {mark.column + 1}"

        mark = e.problem_mark or e.context_mark
        context = f" ({e.context} from {at(e.context_mark)})" if e.context and e.context_mark and e.problem else ""
        raise OpenVTPError(f"invalid YAML in {path}" + (f", {at(mark)}" if mark else "")
                           + f": {e.problem or e.context}{context}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise OpenVTPError(f"invalid YAML in {path}: {_clean(str(e))}") from None
    except OSError as e:
        raise OpenVTPError(f"cannot read config file {path}: {e.strerror or e}") from None
    if not isinstance(raw, DictConfig):
        raise OpenVTPError(f"config file {path} must hold a mapping of sections (train:, model:, ...), "
                           f"not a {type(raw).__name__}")
    raw.pop("_base_", None)
    return raw


def load_config(schema: type[T], name_or_path: str | None = None, overrides: Sequence[str] = ()) -> T:
    """Build a `schema` dataclass from defaults, an optional preset/YAML file and `a.b=value` overrides.

    An error names the layer it comes from (the file, or the command line) and the key."""
    layers = []
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        layers.append((str(path), _read_yaml(path)))
    for item in overrides:
        if "=" not in item:
            raise OpenVTPError(f"override '{item}' is not of the form key=value")
    where = "command line"
    try:
        layers.append((where, OmegaConf.from_dotlist(list(overrides))))
        base = OmegaConf.structured(schema)
        for where, layer in layers:
            base = OmegaConf.merge(base, layer)
        where = "the merged config"
        cfg = OmegaConf.to_object(base)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise OpenVTPError(f"config error in {where}" + (f" at '{key}'" if key else "") + f": {_clean(str(e))}") from None
    return cfg  # type: ignore[return-value]


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def config_from_dict(schema: type[T], data: dict) -> T:
    """Rebuild a config saved by `save_config`/`config_to_dict` (e.g. from a checkpoint)."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(data)))  # type: ignore
    except OmegaConfBaseException as e:
        raise OpenVTPError(f"stored config does not match this version of openvtp: {_clean(str(e))}") from None
