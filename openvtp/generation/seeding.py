"""Seeds derived from (seed, stream, counter), so every random draw is a pure function of where it happens.

torch's CPU generator (mt19937) keeps only the low 32 bits of a seed, so hashing (seed, step)
into 64 bits would let two of 100k steps collide with fair probability. Instead (seed, stream)
is hashed once and the counter (step, epoch, sample index) is added modulo 2**32: distinct
counters of one stream always get distinct seeds, and mt19937's seeding decorrelates neighbours.
"""
from __future__ import annotations

import numpy as np
import torch

DATA, FLIP, NOISE, SAMPLE, LABELS = 1, 2, 3, 4, 5  # streams


def counter_seed(seed: int, stream: int, counter: int) -> int:
    base = int(np.random.SeedSequence([int(seed), int(stream)]).generate_state(1, np.uint32)[0])
    return (base + int(counter)) % 2**32


def generator(seed: int, stream: int, counter: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device).manual_seed(counter_seed(seed, stream, counter))
