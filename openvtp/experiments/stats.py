"""Paired statistics over seeds: what the study's comparisons report.

Cells at one seed share the decoder, DiT and sampling seeds, so two variants at that seed differ only in their
tokenizer: the comparison is of per-seed differences (a paired design), summarised by their mean, a 95%
Student-t interval and the two-sided paired t-test's p-value (scipy). Fewer than two pairs give the mean only.
"""
from __future__ import annotations

import math
from typing import Sequence


def paired(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict:
    """b minus a, pair by pair: {n, diffs, mean, sd, ci: [low, high], t, p} (sd, ci, t and p None below n = 2,
    t and p also None when every difference is the same)."""
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired: {len(a)} values against {len(b)}")
    diffs = [float(y) - float(x) for x, y in zip(a, b)]
    n = len(diffs)
    out = {"n": n, "diffs": diffs, "mean": sum(diffs) / n if n else None, "sd": None, "ci": None, "t": None,
           "p": None, "level": level}
    if n < 2:
        return out
    mean = out["mean"]
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    out.update(sd=sd, ci=[float(mean - half), float(mean + half)])
    if sd > 0:
        test = stats.ttest_rel(b, a)
        out.update(t=float(test.statistic), p=float(test.pvalue))
    return out


def by_seed(cells: Sequence[dict], group: str, key: str) -> dict[int, float]:
    """seed -> the figure of every cell that has it."""
    return {c["seed"]: c[group][key] for c in cells if c[group].get(key) is not None}


def compare(first: Sequence[dict], second: Sequence[dict], group: str, key: str) -> dict | None:
    """`paired` of second minus first over the seeds both have a figure for; None without a common seed."""
    x, y = by_seed(first, group, key), by_seed(second, group, key)
    seeds = sorted(set(x) & set(y))
    if not seeds:
        return None
    return {"seeds": seeds, **paired([x[s] for s in seeds], [y[s] for s in seeds])}
