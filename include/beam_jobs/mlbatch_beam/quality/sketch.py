"""A quantile sketch that merges exactly: how a run with no baseline still gets quantile bin edges
from one streamed pass.

Fixed bins can only come from values already seen; the first run of a pipeline has none. Values go to
logarithmic buckets (DDSketch's scheme: bucket k holds |x| in (gamma^(k-1), gamma^k]) that depend on
nothing but the value, so shards count into the same buckets and merge by adding counts, in any order.
Any quantile read back is within `ALPHA` (0.1 %) relative error. Why 0.1 % and not DDSketch's usual
1 %: the second run compares with the first's sketch, re-binned, and 1 % of a value far from zero is
a lot of its spread (1 % of 39 gestation weeks is 0.18 of their standard deviation, a Wasserstein
distance over the 0.1 warning on an unchanged day); 0.1 % keeps that under 0.02. Memory: about 21,000
buckets per sign for magnitudes from 1e-9 to 1e9; a feature spanning 10 to 60 takes about 900.
"""

from __future__ import annotations

import math

import numpy as np

ALPHA = 0.001  # relative accuracy of a quantile
GAMMA = (1 + ALPHA) / (1 - ALPHA)
ZERO = 1e-9  # |x| below this counts as zero


def bucket_counts(values: np.ndarray) -> dict[str, int]:
    """Counts per bucket key of finite `values`: "+k" / "-k" by sign, "0" for near zero."""
    keys: dict[str, int] = {}
    small = np.abs(values) < ZERO
    if small.any():
        keys["0"] = int(small.sum())
    for sign, part in (("+", values[values >= ZERO]), ("-", -values[values <= -ZERO])):
        if part.size:
            index, counts = np.unique(np.ceil(np.log(part) / math.log(GAMMA)).astype(np.int64),
                                      return_counts=True)
            keys.update({f"{sign}{i}": int(c) for i, c in zip(index, counts)})
    return keys


def add(into: dict[str, int], other: dict[str, int]) -> dict[str, int]:
    for key, count in other.items():
        into[key] = into.get(key, 0) + count
    return into


def value_of(key: str) -> float:
    """The bucket's representative value: within ALPHA of every value it holds."""
    if key == "0":
        return 0.0
    magnitude = 2 * GAMMA ** int(key[1:]) / (GAMMA + 1)
    return magnitude if key[0] == "+" else -magnitude


def points(buckets: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """(values, counts) in increasing value order."""
    if not buckets:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    values = np.array([value_of(k) for k in buckets])
    counts = np.array(list(buckets.values()), dtype=np.int64)
    order = np.argsort(values, kind="stable")
    return values[order], counts[order]


def upper_bound(key: str) -> float:
    """The smallest edge above every value bucket `key` holds (bins are closed on the left, a positive
    bucket on the right: its top value, e.g. 1.0 = GAMMA**0, must fall below the edge)."""
    if key == "0":
        return ZERO
    return float(np.nextafter(GAMMA ** int(key[1:]), np.inf)) if key[0] == "+" else -GAMMA ** (int(key[1:]) - 1)


def quantiles(buckets: dict[str, int], qs: np.ndarray, bounds: bool = False) -> np.ndarray:
    """The `qs` quantiles, within ALPHA; `bounds`: the upper bound of each quantile's bucket instead of
    its representative value (bin edges: no bucket straddles one, so re-binning this sketch and binning
    the exact values agree, even for discrete values such as whole weeks)."""
    values, counts = points(buckets)
    cumulative = np.cumsum(counts)
    ranks = np.clip(np.ceil(qs * cumulative[-1]).astype(np.int64), 1, cumulative[-1])
    index = np.searchsorted(cumulative, ranks)
    if not bounds:
        return values[index]
    keys = sorted(buckets, key=value_of)
    return np.array([upper_bound(keys[i]) for i in index])
