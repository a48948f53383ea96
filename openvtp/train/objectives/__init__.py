from .clip import ClipObjective
from .recon import ReconObjective
from .ssl import SSLObjective

__all__ = ["ClipObjective", "ReconObjective", "SSLObjective"]
