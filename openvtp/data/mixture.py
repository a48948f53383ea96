"""A deterministic weighted mixture of map-style datasets."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch.utils.data import Dataset

from openvtp.errors import OpenVTPError

from .indexing import checked_index


class Mixture(Dataset):
    """Item i comes from dataset j with probability weights[j], at a random index of it.

    Both choices are a pure function of (seed, i), so the mixture is identical in every
    worker and process. Each item gains `"source"` (the dataset's position). With `keys`,
    items keep only those keys (plus "source"), so datasets with different optional labels
    can share one collate.

    Args:
        datasets: map-style datasets (with __len__).
        weights: non-negative, not all zero; normalised here. Default: equal.
        length: default: the sum of the dataset lengths.
        keys: keys to keep, e.g. ("image", "caption", "key"); None keeps all.
        keep_index: read item i of the chosen dataset at i (mod its length) instead of a random
            index, so datasets whose items depend on their index's neighbourhood keep it.
    """

    def __init__(
        self,
        datasets: Sequence[Dataset],
        weights: Sequence[float] | None = None,
        seed: int = 0,
        length: int | None = None,
        keys: Sequence[str] | None = None,
        keep_index: bool = False,
    ):
        if not datasets:
            raise OpenVTPError("mixture: needs at least one dataset")
        weights = [1.0] * len(datasets) if weights is None else [float(w) for w in weights]
        if len(weights) != len(datasets):
            raise OpenVTPError(f"mixture: {len(datasets)} datasets but {len(weights)} weights")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise OpenVTPError(f"mixture: weights must be >= 0 and not all zero, got {weights}")
        if any(len(d) == 0 for d in datasets):
            raise OpenVTPError("mixture: every dataset must be non-empty")
        if seed < 0:
            raise OpenVTPError(f"mixture: seed must be >= 0, got {seed}")
        self.datasets = list(datasets)
        self.weights = np.asarray(weights, dtype=np.float64) / sum(weights)
        self._cdf = np.cumsum(self.weights)
        self.seed = int(seed)
        self.length = sum(len(d) for d in datasets) if length is None else int(length)
        self.keys = None if keys is None else tuple(keys)
        self.keep_index = keep_index

    def __len__(self) -> int:
        return self.length

    def locate(self, index: int) -> tuple[int, int]:
        """(dataset position, index inside it) of mixture item `index`."""
        rng = np.random.default_rng([self.seed, index])
        j = min(int(np.searchsorted(self._cdf, rng.random(), side="right")), len(self.datasets) - 1)
        n = len(self.datasets[j])
        return j, index % n if self.keep_index else int(rng.integers(n))

    def __getitem__(self, index: int) -> dict:
        index = checked_index(index, self.length, "mixture")
        j, k = self.locate(index)
        item = self.datasets[j][k]
        if self.keys is not None:
            item = {key: item[key] for key in self.keys}
        return {**item, "source": j}
