"""Data: webdataset shards, image folders, views, masks, tokens (the embedded scenes and photos: `openvtp.demo`).

Every dataset yields dicts {"image": uint8 (3, H, W) RGB, "caption": str, "key": str} plus
optional integer labels; views turn images into normalised float tensors.
"""
from openvtp.data.folders import CaptionFolder, ClassFolder
from openvtp.data.masking import batch_masks, block_mask, mask_ratios
from openvtp.data.mixture import Mixture
from openvtp.data.shards import ShardDataset, write_shards
from openvtp.data.text import tokenize
from openvtp.data.views import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiCrop,
    center_view,
    contrastive_view,
    denormalize,
    normalize,
    reconstruction_view,
    sample_generator,
)

__all__ = [
    "CaptionFolder", "ClassFolder", "batch_masks", "block_mask", "mask_ratios", "Mixture", "ShardDataset",
    "write_shards", "tokenize", "IMAGENET_MEAN", "IMAGENET_STD", "MultiCrop", "center_view", "contrastive_view",
    "denormalize", "normalize", "reconstruction_view", "sample_generator",
]
