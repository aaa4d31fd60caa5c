"""How many samples of each source an epoch holds: from weights, absolute counts, passes over the records, or one
pass of each (lmm.data.mixture then orders them)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def epoch_counts(sizes: Sequence[int], weights: Sequence[float | None] | None = None,
                 counts: Sequence[int | None] | None = None, num_samples: int | None = None,
                 passes: Sequence[float | None] | None = None) -> list[int]:
    """Samples per source per epoch: from weights (x num_samples, default the sources' total), absolute counts,
    passes over the (kept) records (round(passes x size)), or the sources' sizes. Largest-remainder rounding keeps
    the total exact."""
    n = len(sizes)
    weights = list(weights) if weights is not None else [None] * n
    counts = list(counts) if counts is not None else [None] * n
    passes = list(passes) if passes is not None else [None] * n
    if any(c is not None and p is not None for c, p in zip(counts, passes, strict=True)):
        raise ValueError("a source takes a count or passes, not both")
    counts = [c if p is None else int(np.floor(float(p) * s + 0.5)) for c, p, s in zip(counts, passes, sizes,
                                                                                         strict=True)]
    if any(w is not None for w in weights):
        if any(w is None for w in weights) or any(c is not None for c in counts):
            raise ValueError("give every source of a mixture a weight, or give counts or passes (samples per epoch)")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
        total = int(num_samples) if num_samples is not None else int(sum(sizes))
        return apportion(total, weights)
    raw = [int(c) if c is not None else int(s) for c, s in zip(counts, sizes, strict=True)]
    if num_samples is not None:
        return apportion(int(num_samples), raw)
    return raw


def apportion(total: int, shares: Sequence[float]) -> list[int]:
    """Split `total` in proportion to `shares` into integers summing to `total` (largest remainder)."""
    s = float(sum(shares))
    if total <= 0 or s <= 0:
        return [0] * len(shares)
    exact = [total * float(w) / s for w in shares]
    out = [int(np.floor(x)) for x in exact]
    for i in sorted(range(len(shares)), key=lambda k: (-(exact[k] - out[k]), k))[: total - sum(out)]:
        out[i] += 1
    return out
