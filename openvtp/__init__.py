"""openvtp: visual tokenizer pre-training (VTP) for generation."""
from openvtp.errors import OpenVTPError
from openvtp.models import VTPConfig, VTPModel

__version__ = "0.1.0"
__all__ = ["OpenVTPError", "VTPConfig", "VTPModel", "__version__"]
