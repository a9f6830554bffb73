"""Probability bounds of stored log-probs (DESIGN.md section 3).

A float16 log-prob v stands for every value within +-1/2 ulp of it, so the probability lies in
[exp(v - h), exp(v + h)] with h = |spacing(v)| / 2 (the larger of the two neighbouring gaps, as the
store's truncated view uses). Numba has no float16 on CPU: the kernels index these two 65,536-entry
float64 tables with the raw uint16 bits. float32 log-probs are taken as exact (DESIGN.md), so they need
no table. Tail masses are float32 rounded to nearest; `TAIL_WIDEN` turns one into an upper bound.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

# Widening of a float32 log value x (rounded to nearest, error <= |x| 2^-24) into an upper bound: x + |x| 2^-23.
TAIL_WIDEN = 2.0 ** -23


@lru_cache(maxsize=1)
def float16_tables() -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi): probability bounds for every float16 bit pattern, float64 arrays of length 65,536.

    NaN patterns map to (nan, nan), -inf to (0, 0); hi is clipped to 1.
    """
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    v16 = bits.view(np.float16)
    v = v16.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        h = 0.5 * np.abs(np.spacing(v16).astype(np.float64))
        finite = np.isfinite(v)
        lo = np.where(finite, np.exp(v - h), np.where(v == -np.inf, 0.0, np.nan))
        hi = np.where(finite, np.exp(v + h), np.where(v == -np.inf, 0.0, np.nan))
    # exp is correctly rounded to within 1 ulp; step outward so the interval surely holds the truth.
    lo = np.minimum(np.nextafter(lo, -np.inf).clip(min=0.0), 1.0)
    hi = np.minimum(np.nextafter(hi, np.inf), 1.0)
    hi = np.where(np.isnan(v), np.nan, hi)
    lo = np.where(np.isnan(v), np.nan, lo)
    return np.ascontiguousarray(lo), np.ascontiguousarray(hi)


def list_bounds(lp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) probabilities of stored log-probs (any shape): float16 by the tables, float32 exact."""
    if lp.dtype == np.float16:
        lo, hi = float16_tables()
        bits = np.ascontiguousarray(lp).view(np.uint16)
        return lo[bits], hi[bits]
    p = np.exp(lp.astype(np.float64))
    return p, p


def tail_upper(tail: np.ndarray) -> np.ndarray:
    """Upper bound of the tail mass from float32 log values (rounded to nearest); 0 for -inf."""
    x = tail.astype(np.float64)
    with np.errstate(invalid="ignore"):
        p = np.exp(x + np.abs(x) * TAIL_WIDEN) * (1.0 + 4e-16)
    return np.where(np.isneginf(x), 0.0, np.minimum(p, 1.0))


def outside_bound(ids: np.ndarray, lp: np.ndarray, tail: np.ndarray, targets: np.ndarray,
                  p_target: np.ndarray) -> np.ndarray:
    """u per position: no class outside the list (other than the target) has probability above it.

    u = min(hi of the K-th listed entry, tail upper bound, minus the target's probability when the
    target is outside the list).
    """
    _, hi = list_bounds(lp[:, -1])
    t_in = (ids == targets[:, None]).any(axis=1)
    tl = tail_upper(tail)
    tl = np.where(t_in, tl, np.maximum(tl - p_target, 0.0))
    return np.minimum(hi, tl)
