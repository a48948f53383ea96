"""`create_model` / `list_models`, named as in timm and open_clip: architectures by preset name, weights from a
hub id or a folder. Known hub ids are the released checkpoints."""
from __future__ import annotations

import os

from openvtp.errors import OpenVTPError

from .config import PRESETS, VTPConfig

HUB_MODELS = {"MiniMaxAI/VTP-Large-f16d64": "vtp-l"}  # hub id -> the preset of its architecture


def _image_side(cfg: VTPConfig) -> dict:
    return {k: v for k, v in cfg.to_dict().items() if k == "image_size" or k.startswith(("vision_", "decoder_"))}


def preset_of(cfg: VTPConfig) -> str | None:
    """The preset whose encoder and pixel decoder the config has (the text tower is not compared), if any."""
    return next((name for name in PRESETS if _image_side(VTPConfig.preset(name)) == _image_side(cfg)), None)


def list_models(pretrained: bool = False) -> list[str]:
    """Preset names (random weights with `create_model(name)`), then the known hub ids; only the hub ids when
    `pretrained`."""
    return list(HUB_MODELS) if pretrained else [*PRESETS, *HUB_MODELS]


def create_model(name: str, pretrained: str | os.PathLike | None = None, **config_overrides):
    """A `VTPModel`: `name` is a preset (random init, `config_overrides` applied), a known hub id or a checkpoint
    folder (weights loaded). `pretrained` (a hub id or folder) loads those weights into preset `name` and checks
    that their config has that architecture."""
    from .vtp import VTPModel

    if pretrained is None:
        if name in PRESETS:
            return VTPModel(VTPConfig.preset(name, **config_overrides))
        if config_overrides:
            raise OpenVTPError(f"config overrides apply only to presets ({', '.join(PRESETS)}), not to {name}")
        return VTPModel.from_pretrained(name)
    if config_overrides:
        raise OpenVTPError("config overrides cannot be combined with pretrained weights")
    model = VTPModel.from_pretrained(pretrained)
    if name in PRESETS:
        found = preset_of(model.config)
        if found != name:
            raise OpenVTPError(f"{pretrained} has the architecture of {found or 'no preset'}, not {name}")
    elif name != str(pretrained):
        raise OpenVTPError(f"unknown model {name!r} (list_models(): {', '.join(list_models())})")
    return model
