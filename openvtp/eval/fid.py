"""FID as the field computes it: 2048-d pool features of the TF-ported Inception (2015-12-05 weights, the network
pytorch-fid, torch-fidelity and ADM's evaluator share), Gaussian statistics, Frechet distance via scipy's sqrtm.

torchvision's Inception weights give different numbers and are never used. Extractors are duck-typed: anything with
`extract(batches, total) -> (N, D)` works with the functions below (tests use a tiny fake one).
"""

import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import scipy.linalg
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from openvtp.data.image_io import quantize
from openvtp.errors import OpenVTPError
from openvtp.eval.weights import cached_or_download, load_weights

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
# torch-fidelity's conversion of the TF graph; the same file torch-fidelity caches, so an existing cache is reused
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)


class FeatureExtractor(Protocol):
    def extract(self, batches: Iterable[torch.Tensor], total: int | None = None) -> torch.Tensor: ...


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 images unchanged; float [0, 1] images quantised as saving them to PNG would."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise OpenVTPError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise OpenVTPError(f"expected uint8 or float [0, 1] images, got dtype {images.dtype}")
    return quantize(images)


def _build_inception() -> nn.Module:
    """torch-fidelity's FID Inception, randomly initialised.

    Its constructor would fetch and fully unpickle the weights itself; the fetch is stubbed out here and the weights
    are loaded afterwards from a safe source.
    """
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    class _Inception(tfi.FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, *args, **kwargs):
            if state_dict is None:  # the stubbed fetch: keep the fresh initialisation
                return None
            return super().load_state_dict(state_dict, *args, **kwargs)

    fetch = tfi.load_state_dict_from_url
    tfi.load_state_dict_from_url = lambda *args, **kwargs: None
    try:
        return _Inception("inception-v3-compat", ["2048"])
    finally:
        tfi.load_state_dict_from_url = fetch


class InceptionFeatures:
    """2048-d pool3 features of the standard FID Inception (input resized to 299 inside, TF1-style bilinear)."""

    dim = 2048

    def __init__(
        self,
        weights: str | Path = "auto",
        device: str | torch.device | None = None,
        batch_size: int = 50,
        progress: bool = True,
        seed: int = 0,
    ):
        """
        Args:
            weights: "auto" (torch hub cache, downloaded once when online), a local .pth/.safetensors state dict, or
                "random" (seeded random init: offline tests only, the numbers mean nothing).
        """
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size = batch_size
        self.progress = progress
        model = _build_inception()
        if weights == "random":
            gen = torch.Generator().manual_seed(seed)
            for m in model.modules():
                if isinstance(m, nn.Conv2d):  # variance-preserving, so features neither vanish nor explode
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=gen)
        else:
            if weights == "auto":
                path = cached_or_download(INCEPTION_URL, "FID Inception", "or pass that file with --fid-weights PATH")
            else:
                path = Path(weights)
            state = load_weights(path, "FID Inception")
            try:
                model.load_state_dict(state)
            except RuntimeError as e:
                raise OpenVTPError(f"{path} is not the FID Inception state dict: {e}") from e
        self.model = model.eval().requires_grad_(False).to(self.device)

    @torch.inference_mode()
    def extract(self, batches: Iterable[torch.Tensor], total: int | None = None) -> torch.Tensor:
        """Features of a stream of (B, 3, H, W) uint8 / float [0, 1] batches -> (N, 2048) float64 on CPU."""
        feats = []
        with tqdm(total=total, desc="inception", unit="img", disable=not self.progress) as bar:
            for images in batches:
                for chunk in to_uint8(images).split(self.batch_size):
                    (f,) = self.model(chunk.to(self.device))
                    feats.append(f.double().cpu())
                    bar.update(len(chunk))
        if not feats:
            raise OpenVTPError("no images to compute Inception features from")
        return torch.cat(feats)  # (N, 2048)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) uint8 or float [0, 1] -> (N, 2048) float64."""
        return self.extract([images], total=len(images))

    @torch.inference_mode()
    def extract_all(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """One forward per chunk for what ADM's evaluator reads, float64 on CPU: "pool" (N, 2048), "logits"
        (N, 1008) (`logits_unbiased`, the softmax input of its Inception Score) and "spatial" (N, 2023) (sFID)."""
        model = self.model
        saved, model.features_list = model.features_list, ["2048", "logits_unbiased"]
        grabbed = []
        hook = model.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, out: grabbed.append(spatial_features(out)))
        out = {"pool": [], "logits": [], "spatial": []}
        try:
            for chunk in to_uint8(images).split(self.batch_size):
                pool, logits = model(chunk.to(self.device))
                out["pool"].append(pool.double().cpu())
                out["logits"].append(logits.double().cpu())
                out["spatial"].append(grabbed.pop().double().cpu())
        finally:
            hook.remove()
            model.features_list = saved
        return {k: torch.cat(v) for k, v in out.items()}

    @torch.inference_mode()
    def pool_features_pytorch_fid(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 2048) float64 pool features with pytorch-fid's input pipeline on the same network: images as
        float [0, 1], resized to 299 with torch's bilinear (align_corners=False), then 2 x - 1. torch-fidelity
        (and TF, ADM) resize uint8 values TF1-style and map them with (x - 128) / 128; VTP's rFID script uses
        pytorch-fid, so its numbers come from this pipeline."""
        feats = []
        for chunk in to_uint8(images).split(self.batch_size):
            x = chunk.to(self.device).float() / 255
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
            for name in INCEPTION_POOL_PATH:
                x = getattr(self.model, name)(x)
            feats.append(x.flatten(1).double().cpu())
        return torch.cat(feats)


# The FID Inception's layers from the input to the 2048-d pool (torch-fidelity's and pytorch-fid's module names).
INCEPTION_POOL_PATH = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1",
                       "Conv2d_4a_3x3", "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
                       "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool")
SFID_CHANNELS = 7  # ADM's evaluator keeps the first 7 channels of mixed_6/conv


def spatial_features(mixed_6_conv: torch.Tensor) -> torch.Tensor:
    """ADM's sFID features from the output of TF's `mixed_6/conv` (torch: `Mixed_6d.branch1x1`, after its ReLU),
    (N, 192, 17, 17): the first 7 channels, flattened in TF's NHWC order -> (N, 17 * 17 * 7)."""
    return mixed_6_conv[:, :SFID_CHANNELS].permute(0, 2, 3, 1).flatten(1)


def inception_score(logits: torch.Tensor | np.ndarray, split_size: int = 5000) -> tuple[float, float]:
    """ADM's Inception Score: softmax of the unbiased logits, the score of each contiguous chunk of `split_size`
    images (the last one may be shorter), then their mean (and std, which ADM does not print)."""
    p = torch.as_tensor(np.asarray(logits), dtype=torch.float64).softmax(dim=1)
    if p.ndim != 2 or len(p) == 0:
        raise OpenVTPError(f"Inception Score needs (N, classes) logits, got shape {tuple(p.shape)}")
    scores = []
    for part in p.split(split_size):
        # xlogy: a probability that underflows to 0 adds 0, not nan
        kl = (torch.special.xlogy(part, part) - part * part.mean(0, keepdim=True).log()).sum(1).mean()
        scores.append(kl.exp().item())
    return float(np.mean(scores)), float(np.std(scores))


def feature_statistics(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) in float64, as pytorch-fid and torch-fidelity compute them."""
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2 or len(feats) < 2:
        raise OpenVTPError(f"FID statistics need at least 2 feature vectors (N, D), got shape {feats.shape}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)), the pytorch-fid / ADM recipe.

    A near-singular product (fewer images than dimensions) can make sqrtm non-finite: then eps * I is added to both
    covariances. A negligible imaginary part from rounding is dropped; a large one means broken statistics.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise OpenVTPError(
            f"FID statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}"
        )
    diff = mu1 - mu2
    with warnings.catch_warnings():  # "matrix is singular" is expected with few images; the result is checked below
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(len(sigma1)) * eps
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max()
        if imag > 1e-3:
            raise OpenVTPError(f"FID: sqrt of the covariance product has imaginary part {imag:.3g}; statistics broken")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def save_stats(path: str | Path, mu: np.ndarray, sigma: np.ndarray) -> None:
    """Write `mu` and `sigma` to an .npz, the layout ADM's reference batches and pytorch-fid use."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a file object keeps numpy from appending a second ".npz"
        np.savez(f, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))


def load_stats(
    path: str | Path, extractor: FeatureExtractor | None = None, batch_size: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) from an .npz holding them, or computed from its `arr_0` images (ADM layout) with `extractor`."""
    path = Path(path)
    if not path.is_file():
        raise OpenVTPError(f"FID statistics file not found: {path}")
    with np.load(path, allow_pickle=False) as data:
        if "mu" in data and "sigma" in data:
            return data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
        if "arr_0" not in data:
            raise OpenVTPError(f"{path} holds neither `mu`/`sigma` nor `arr_0` images (keys: {list(data.keys())})")
    if extractor is None:
        raise OpenVTPError(f"{path} holds images but no `mu`/`sigma`: an Inception extractor is needed to compute them")
    feats, _ = image_set_features(path, extractor, batch_size)
    return feature_statistics(feats)


class ImageSet:
    """A folder of png/jpg/webp images (recursive, sorted) or an ADM-layout .npz (`arr_0`, uint8 NHWC), in batches.

    Unreadable files are skipped and counted in `skipped` once iterated.
    """

    def __init__(self, path: str | Path, batch_size: int = 50):
        self.path, self.batch_size, self.skipped = Path(path), batch_size, 0
        if self.path.is_dir():
            self.files = sorted(p for p in self.path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
            self.npz = None
        elif self.path.is_file() and self.path.suffix == ".npz":
            self.files = None
            with np.load(self.path, allow_pickle=False) as data:
                if "arr_0" not in data:
                    raise OpenVTPError(f"{self.path} has no `arr_0` images (keys: {list(data.keys())})")
                self.npz = data["arr_0"]
            if self.npz.dtype != np.uint8 or self.npz.ndim != 4 or self.npz.shape[-1] != 3:
                raise OpenVTPError(
                    f"{self.path}: `arr_0` must be uint8 (N, H, W, 3), got {self.npz.dtype} {self.npz.shape}"
                )
        else:
            raise OpenVTPError(f"image set not found (expected a folder or an .npz with `arr_0`): {self.path}")

    def __len__(self) -> int:
        return len(self.files) if self.files is not None else len(self.npz)

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Yields (B, 3, H, W) uint8; a batch ends early where the image size changes."""
        self.skipped = 0
        if self.npz is not None:
            for i in range(0, len(self.npz), self.batch_size):
                yield torch.from_numpy(self.npz[i : i + self.batch_size]).permute(0, 3, 1, 2).contiguous()
            return
        batch = []
        for file in self.files:
            try:
                with Image.open(file) as im:
                    arr = np.asarray(im.convert("RGB"))
            except (OSError, ValueError, Image.DecompressionBombError):
                self.skipped += 1
                continue
            if batch and (arr.shape != batch[0].shape or len(batch) == self.batch_size):
                yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
                batch = []
            batch.append(arr)
        if batch:
            yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)


def image_set_features(
    path: str | Path, extractor: FeatureExtractor, batch_size: int = 50
) -> tuple[torch.Tensor, int]:
    """Features (N, D) of a folder or ADM .npz, and the number of unreadable files skipped."""
    images = ImageSet(path, batch_size)
    if len(images) == 0:
        raise OpenVTPError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {path}")
    feats = extractor.extract(images, total=len(images))
    return feats, images.skipped


def fid_from_images(images_a: torch.Tensor, images_b: torch.Tensor, extractor: FeatureExtractor) -> float:
    """FID between two in-memory image sets, (N, 3, H, W) uint8 or float [0, 1]."""
    mu_a, sigma_a = feature_statistics(extractor.extract([images_a], total=len(images_a)))
    mu_b, sigma_b = feature_statistics(extractor.extract([images_b], total=len(images_b)))
    return frechet_distance(mu_a, sigma_a, mu_b, sigma_b)


def fid_folder_vs_folder(
    dir_a: str | Path, dir_b: str | Path, extractor: FeatureExtractor, batch_size: int = 50
) -> dict:
    """FID between two image sets (folders or ADM .npz): {"fid", "num_a", "num_b", "skipped_a", "skipped_b"}."""
    feats_a, skipped_a = image_set_features(dir_a, extractor, batch_size)
    feats_b, skipped_b = image_set_features(dir_b, extractor, batch_size)
    fid = frechet_distance(*feature_statistics(feats_a), *feature_statistics(feats_b))
    return {"fid": fid, "num_a": len(feats_a), "num_b": len(feats_b), "skipped_a": skipped_a, "skipped_b": skipped_b}


def fid_folder_vs_stats(
    dir_: str | Path, stats_npz: str | Path, extractor: FeatureExtractor, batch_size: int = 50
) -> dict:
    """FID of an image set against reference statistics (`mu`/`sigma` npz, or ADM images): {"fid", "num", "skipped"}."""
    feats, skipped = image_set_features(dir_, extractor, batch_size)
    mu_ref, sigma_ref = load_stats(stats_npz, extractor, batch_size)
    fid = frechet_distance(*feature_statistics(feats), mu_ref, sigma_ref)
    return {"fid": fid, "num": len(feats), "skipped": skipped}
