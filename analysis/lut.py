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

# Relative widening of a float32 log value x into an upper bound: x * (1 - 2^-23) >= x + |x| 2^-24 for x < 0.
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
