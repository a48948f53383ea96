"""Loss maths: tensors in, tensors out, no config objects (one loss per file, as dinov2's `loss/`)."""

from openvtp.losses.contrastive import ClipLoss, gather_features
from openvtp.losses.dino import DINOLoss, sinkhorn_knopp
from openvtp.losses.gan import PatchDiscriminator, adaptive_weight, gan_start_factor, generator_adv_loss, hinge_d_loss
from openvtp.losses.ibot import IBOTPatchLoss
from openvtp.losses.koleo import KoLeoLoss
from openvtp.losses.recon import ReconstructionLoss

__all__ = [
    "ClipLoss",
    "DINOLoss",
    "IBOTPatchLoss",
    "KoLeoLoss",
    "PatchDiscriminator",
    "ReconstructionLoss",
    "adaptive_weight",
    "gan_start_factor",
    "gather_features",
    "generator_adv_loss",
    "hinge_d_loss",
    "sinkhorn_knopp",
]
