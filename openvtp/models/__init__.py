from .config import VTPConfig
from .vtp import VTPModel

__all__ = ["VTPConfig", "VTPModel"]
