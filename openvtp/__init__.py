"""openvtp: visual tokenizer pre-training (VTP) for generation.

`VTPModel` and `VTPConfig` are imported on first use, so the command line (`openvtp --help`, argument and config
mistakes) answers without importing torch.
"""
from openvtp.errors import OpenVTPError

__version__ = "0.1.0"
__all__ = ["OpenVTPError", "VTPConfig", "VTPModel", "create_model", "list_models", "__version__"]


def __getattr__(name: str):
    if name in ("VTPConfig", "VTPModel", "create_model", "list_models"):
        from openvtp import models

        return getattr(models, name)
    raise AttributeError(f"module 'openvtp' has no attribute {name!r}")
