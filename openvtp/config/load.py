"""Configs are data: dataclass defaults, then a preset or YAML file, then dotted overrides.

OmegaConf's structured configs give us what a hand-written merger would: unknown keys are
errors, values keep their types, and `key.sub=value` overrides parse like YAML scalars.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from openvtp.errors import OpenVTPError

T = TypeVar("T")
PRESET_DIR = Path(__file__).parent / "presets"

# Old names of keys (old dotted key -> current key) per root config class; a concept has one key in every tree.
# A user who writes an old key gets an error naming the current one, not OmegaConf's bare "not in schema"; a config
# openvtp stored under old keys (a DiT checkpoint's) is translated, so existing checkpoints still load.
RENAMED_KEYS: dict[str, dict[str, str]] = {
    "openvtp.generation.config.GenerationConfig": {
        "model.use_qknorm": "model.use_qk_norm",
        "data.num_workers": "data.workers",
        "train.run_dir": "train.out_dir",
        "train.batch_size": "train.batch",
        "train.lr": "optim.lr",
        "train.beta1": "optim.beta1",
        "train.beta2": "optim.beta2",
        "train.weight_decay": "optim.weight_decay",
        "train.grad_clip": "optim.grad_clip",
        "sample.batch_size": "sample.batch",
        "fid.batch_size": "fid.batch",
        "fid.inception": "fid.weights",
    },
}


def renamed_keys(schema: type) -> dict[str, str]:
    """{old dotted key: current key} of a root config class."""
    return RENAMED_KEYS.get(f"{schema.__module__}.{schema.__qualname__}", {})


def _parent(tree: Mapping, dotted: str) -> Mapping | None:
    """The mapping that holds the last part of `dotted` in `tree`, or None where the path is absent."""
    node = tree
    for part in dotted.split(".")[:-1]:
        node = node.get(part) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else None


def _has(tree: Mapping, dotted: str) -> bool:
    node = _parent(tree, dotted)
    return node is not None and dotted.rsplit(".", 1)[-1] in node


def _check_renamed(renamed: dict[str, str], keys: Sequence[str], where: str = "", prefix: str = "") -> None:
    for key in keys:
        if key in renamed:
            raise OpenVTPError(f"config key '{prefix}{key}'{where} was renamed '{prefix}{renamed[key]}'")


def _translate_renamed(tree: dict, renamed: dict[str, str]) -> dict:
    """A stored config (plain dicts) with its old keys moved to their current names; a current key present wins."""
    for old, new in renamed.items():
        if _has(tree, old):
            value = _parent(tree, old).pop(old.rsplit(".", 1)[-1])
            if not _has(tree, new):
                node = tree
                for part in new.split(".")[:-1]:
                    node = node.setdefault(part, {})
                node[new.rsplit(".", 1)[-1]] = value
    return tree


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
    if "_base_" in raw:
        # One file is one layer over the defaults: what a file holds is what it changes, with no chain to follow.
        raise OpenVTPError(f"config file {path}: '_base_' is not supported; use --config BASE with KEY=VALUE "
                           "overrides, or copy the base's keys (--print-config writes them all)")
    return raw


def load_config(schema: type[T], name_or_path: str | None = None, overrides: Sequence[str] = (),
                prefix: str = "", stored: bool = False) -> T:
    """Build a `schema` dataclass from defaults, an optional preset/YAML file and `a.b=value` overrides.

    An error names the layer it comes from (the file, or the command line) and the key. prefix: how the user
    writes the overrides' keys (the demo's `dit.`), so that an old key's error names what to type instead.
    stored: the file is a config openvtp wrote (a checkpoint's config.yaml): its old keys are translated."""
    renamed = renamed_keys(schema)
    layers = []
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        raw = _read_yaml(path)
        if stored:
            raw = OmegaConf.create(_translate_renamed(OmegaConf.to_container(raw), renamed))
        else:
            _check_renamed(renamed, [k for k in renamed if _has(raw, k)], f" in {path}")
        layers.append((str(path), raw))
    for item in overrides:
        if "=" not in item:
            raise OpenVTPError(f"override '{item}' is not of the form key=value")
    _check_renamed(renamed, [item.split("=", 1)[0].strip() for item in overrides], prefix=prefix)
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
    """Rebuild a config saved by `save_config`/`config_to_dict` (e.g. from a checkpoint); old keys are translated."""
    data = _translate_renamed(copy.deepcopy(data), renamed_keys(schema))
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(data)))  # type: ignore
    except OmegaConfBaseException as e:
        raise OpenVTPError(f"stored config does not match this version of openvtp: {_clean(str(e))}") from None
