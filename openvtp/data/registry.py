"""Data sources that live beside the library, reached by name.

`embedded` (the demo's procedural scenes and photos) is provided by `openvtp.demo.sources`; a config or a flag that
names it imports that module here, so that the library packages never import the demo.
"""
from __future__ import annotations

import importlib
from types import ModuleType

PROVIDERS = {"embedded": "openvtp.demo.sources"}


def provider(name: str) -> ModuleType:
    """The module that provides data source `name`: `pretrain_source`, `eval_data`, `latent_source` and the
    held-out figures (see `openvtp.demo.sources`)."""
    return importlib.import_module(PROVIDERS[name])
