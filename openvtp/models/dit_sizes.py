"""LightningDiT's size registry, apart from the model so that configs are checked without importing torch."""
from __future__ import annotations

# LightningDiT's sizes (width, depth, heads), the same as DiT's.
DIT_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (64, 2, 2),  # for tests
    "mini": (192, 6, 3),  # CPU demo
    "s": (384, 12, 6),
    "b": (768, 12, 12),
    "l": (1024, 24, 16),
    "xl": (1152, 28, 16),
}
# The registry the CLI lists: dit-<size>-<patch>, e.g. dit-xl-1 is LightningDiT-XL/1.
DIT_PRESETS: dict[str, dict[str, int]] = {
    f"dit-{size}-{patch}": dict(hidden_size=w, depth=d, num_heads=h, patch_size=patch)
    for size, (w, d, h) in DIT_SIZES.items()
    for patch in (1, 2)
}


def dit_preset_names() -> list[str]:
    return list(DIT_PRESETS)
