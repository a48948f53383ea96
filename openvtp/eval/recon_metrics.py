"""Reconstruction quality: PSNR, SSIM and LPIPS accumulated over batches, plus the flat-patch PSNR baseline.

All inputs are (B, 3, H, W) images in [0, 1]. PSNR and SSIM are computed per image and averaged over images (the
usual tokenizer-paper convention), SSIM with torchmetrics' Gaussian 11x11, sigma 1.5 window.
"""

import warnings

import lpips
import torch
import torch.nn.functional as F
import torchvision
from torchmetrics.functional.image import structural_similarity_index_measure

from openvtp.errors import OpenVTPError
from openvtp.eval.weights import cached_or_download, load_weights

# lpips builds its trunks from these torchvision ImageNet weights (its `pretrained=True` path)
_LPIPS_TRUNK_WEIGHTS = {
    "alex": torchvision.models.AlexNet_Weights.IMAGENET1K_V1,
    "vgg": torchvision.models.VGG16_Weights.IMAGENET1K_V1,
}


def psnr(orig01: torch.Tensor, recon01: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB, (B,); identical images are capped at 100 dB."""
    mse = (orig01.float() - recon01.float().clamp(0, 1)).pow(2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


def patch_mean_baseline(images01: torch.Tensor, patch: int) -> torch.Tensor:
    """Every patch x patch cell filled with its mean colour: the PSNR a tokenizer must beat to have learnt anything."""
    h, w = images01.shape[-2:]
    if h % patch or w % patch:
        raise OpenVTPError(f"patch {patch} does not divide the image size {h}x{w}")
    means = F.avg_pool2d(images01.float(), patch)  # (B, 3, H/p, W/p)
    return means.repeat_interleave(patch, dim=-2).repeat_interleave(patch, dim=-1)


def build_lpips(backbone: str = "pretrained", net: str = "alex", seed: int = 0) -> lpips.LPIPS:
    """LPIPS (v0.1 calibrated linear heads, shipped with the lpips package) on an ImageNet trunk.

    Args:
        backbone: "pretrained" (torchvision ImageNet trunk from the torch hub cache, downloaded once when online) or
            "random" (seeded random trunk: offline tests only).
        net: "alex" (the lpips default, used for evaluation) or "vgg" (the usual choice as a training loss).
    """
    if net not in _LPIPS_TRUNK_WEIGHTS:
        raise OpenVTPError(f"unknown LPIPS net {net!r}; choose from {sorted(_LPIPS_TRUNK_WEIGHTS)}")
    if backbone not in ("pretrained", "random"):
        raise OpenVTPError(f"unknown LPIPS backbone {backbone!r}; choose 'pretrained' or 'random'")
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)
        warnings.filterwarnings("ignore", message=".*deprecated since 0.13", category=UserWarning)  # lpips' tv call
        # pnet_rand: never let lpips/torchvision fetch and unpickle the trunk; it is loaded below instead
        model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    if backbone == "pretrained":
        url = _LPIPS_TRUNK_WEIGHTS[net].url
        path = cached_or_download(url, f"LPIPS {net} trunk", "or use lpips backbone 'random' (tests only)")
        trunk = load_weights(path, f"LPIPS {net} trunk")
        # lpips slices torchvision's `features` into slice1..N, keeping the original layer indices as names
        state = {}
        for key in model.net.state_dict():
            _, index, param = key.split(".")
            state[key] = trunk[f"features.{index}.{param}"]
        model.net.load_state_dict(state)
    return model.eval().requires_grad_(False)


class ReconMetrics:
    """Running mean PSNR / SSIM / LPIPS over batches of (original, reconstruction) pairs in [0, 1]."""

    def __init__(
        self,
        lpips_backbone: str | None = "pretrained",
        lpips_net: str = "alex",
        device: str | torch.device | None = None,
    ):
        """lpips_backbone: "pretrained", "random" (tests) or None to skip LPIPS."""
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.lpips = build_lpips(lpips_backbone, lpips_net).to(self.device) if lpips_backbone else None
        self.reset()

    def reset(self) -> None:
        self.n, self.sums = 0, {"psnr": 0.0, "ssim": 0.0, "lpips": 0.0}

    @torch.inference_mode()
    def update(self, orig01: torch.Tensor, recon01: torch.Tensor) -> None:
        if orig01.shape != recon01.shape or orig01.ndim != 4:
            raise OpenVTPError(f"original {tuple(orig01.shape)} and reconstruction {tuple(recon01.shape)} differ")
        x = orig01.to(self.device, torch.float32).clamp(0, 1)
        y = recon01.to(self.device, torch.float32).clamp(0, 1)
        self.sums["psnr"] += psnr(x, y).sum().item()
        self.sums["ssim"] += structural_similarity_index_measure(y, x, data_range=1.0, reduction="none").sum().item()
        if self.lpips is not None:
            self.sums["lpips"] += self.lpips(x, y, normalize=True).sum().item()
        self.n += len(x)

    def compute(self) -> dict:
        """{"psnr": dB, "ssim", "lpips" (absent without a backbone), "num_images"}, means over all images seen."""
        if self.n == 0:
            raise OpenVTPError("no reconstruction pairs were added before compute()")
        out = {k: v / self.n for k, v in self.sums.items() if k != "lpips" or self.lpips is not None}
        return out | {"num_images": self.n}
