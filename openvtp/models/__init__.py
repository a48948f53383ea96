"""The VTP model and its config. `VTPModel` (torch) is imported on first use, so that code needing only the
config (the CLI's checks, `openvtp.config`) starts without torch."""
from .config import VTPConfig

__all__ = ["VTPConfig", "VTPModel", "create_model", "list_models"]


def __getattr__(name: str):
    if name == "VTPModel":
        from .vtp import VTPModel

        return VTPModel
    if name in ("create_model", "list_models"):
        from . import factory

        return getattr(factory, name)
    raise AttributeError(f"module 'openvtp.models' has no attribute {name!r}")
