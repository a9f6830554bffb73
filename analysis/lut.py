"""Probability bounds of stored log-probs (DESIGN.md section 3, "What exact and certified rest on").

The rule (shared with `pipeline.store.reader.logprob_upper`): a float16 log-prob v stands for every real
that rounds to it, the closed interval [v - g_below / 2, v + g_above / 2], g_below and g_above the gaps to
its two float16 neighbours (they differ at powers of two: np.spacing gives only the gap toward zero). Closed,
so conservative on round-half-even ties. Special values:
  * -65504 (the largest finite magnitude): its lower neighbour is -inf, but the reals rounding to it reach
    down to the overflow boundary -65520, so g_below = 32 (as if -65536 were its neighbour); +65504 likewise;
  * +-0 and subnormals: neighbours 2^-24 apart, nothing special;
  * -inf: a probability of 0 or below exp(-65520); its upper bound is the smallest positive float64.
The probability is then [exp(lo_end), exp(hi_end)], stepped outward by a relative margin REL = 2^-50 (exp
is not correctly rounded everywhere: SIMD paths of numpy may be off by more than 1 ulp) plus TINY = 2^-1070
absolute (where the result is subnormal, relative bounds mean nothing), and hi clipped to 1.

float32 log-probs are exact (DESIGN.md); the probability exp(x) they stand for is computed in float64 with
an error at most x_err(p) = p REL + TINY (0 for x = -inf), which the kernels carry (`analysis.kernels`).
Tail masses are float32 rounded to nearest; `TAIL_WIDEN` turns one into an upper bound. Numba has no
float16 on CPU: the kernels index the two 65,536-entry float64 tables with the raw uint16 bits.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

# Widening of a float32 log value x (rounded to nearest, error <= |x| 2^-24) into an upper bound: x + |x| 2^-23.
TAIL_WIDEN = 2.0 ** -23
REL = 2.0 ** -50  # relative error allowed for a float64 exp (a few ulps, SIMD paths included)
TINY = 2.0 ** -1070  # absolute error allowed where an exp result may be subnormal
F16_OVERFLOW = 65520.0  # reals of magnitude >= this round to +-inf in float16


def float16_ends(v16: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) float64: the closed interval of reals that round to each float16 value (module docstring).

    NaN for NaN; (-inf, -65520) for -inf and (65520, inf) for +inf.
    """
    v16 = np.asarray(v16, dtype=np.float16)
    v = v16.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        below = v - np.nextafter(v16, np.float16(-np.inf)).astype(np.float64)
        above = np.nextafter(v16, np.float16(np.inf)).astype(np.float64) - v
        # +-65504: the neighbour beyond is inf, but only reals past +-65520 round there (half of a 32 gap)
        below = np.where(v == -65504.0, 32.0, below)
        above = np.where(v == 65504.0, 32.0, above)
        lo = np.where(np.isfinite(v), v - 0.5 * below, np.where(v == np.inf, F16_OVERFLOW, v))
        hi = np.where(np.isfinite(v), v + 0.5 * above, np.where(v == -np.inf, -F16_OVERFLOW, v))
    return lo, hi


def exp_down(x: np.ndarray) -> np.ndarray:
    """A float64 lower bound of exp(x) for exact float64 x (0 for -inf)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.maximum(np.exp(x) * (1.0 - REL) - TINY, 0.0)


def exp_up(x: np.ndarray) -> np.ndarray:
    """A float64 upper bound of exp(x) for exact float64 x (> 0 always, even where exp(x) underflows)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.exp(x) * (1.0 + REL) + TINY


@lru_cache(maxsize=1)
def float16_tables() -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi): probability bounds for every float16 bit pattern, float64 arrays of length 65,536.

    NaN patterns map to (nan, nan); -inf to (0, smallest positive float64); hi is clipped to 1.
    """
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    lo_end, hi_end = float16_ends(bits.view(np.float16))
    lo = np.minimum(exp_down(lo_end), 1.0)
    hi = np.minimum(exp_up(hi_end), 1.0)
    hi = np.where(hi_end == -F16_OVERFLOW, 2.0 ** -1074, hi)  # -inf: exp(-65520) > 0, below every float64
    return np.ascontiguousarray(lo), np.ascontiguousarray(hi)


def list_bounds(lp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) probabilities of stored log-probs (any shape): float16 by the tables, float32 as exp (exact
    values: their float64 rounding, <= x_err, is left to the caller; `prob_bounds` includes it)."""
    if lp.dtype == np.float16:
        lo, hi = float16_tables()
        bits = np.ascontiguousarray(lp).view(np.uint16)
        return lo[bits], hi[bits]
    p = np.exp(lp.astype(np.float64))
    return p, p


def prob_bounds(lp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) that surely hold the probability of each stored log-prob: float16 by the tables, float32 as
    exp stepped outward by its rounding (so identical float32 values get identical bounds)."""
    if lp.dtype == np.float16:
        return list_bounds(lp)
    x = lp.astype(np.float64)
    return exp_down(x), np.minimum(exp_up(x), np.where(x <= 0.0, 1.0, np.inf))


def x_err(p: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bound on |p - exp(x)| for p = np.exp(x) in float64 (0 where x = -inf: p = 0 exactly)."""
    return np.where(np.isneginf(x), 0.0, p * REL + TINY)


def tail_upper(tail: np.ndarray) -> np.ndarray:
    """Upper bound of the tail mass from float32 log values (rounded to nearest); 0 for -inf. Not clipped
    at 1: float32 log-probs need not sum to exactly 1, and u takes the min with the K-th entry anyway."""
    x = tail.astype(np.float64)
    with np.errstate(invalid="ignore"):
        p = exp_up(x + np.abs(x) * TAIL_WIDEN)
    return np.where(np.isneginf(x), 0.0, p)


def outside_bound(ids: np.ndarray, lp: np.ndarray, tail: np.ndarray, targets: np.ndarray,
                  p_target: np.ndarray, err_target: np.ndarray | None = None) -> np.ndarray:
    """u per position: no class outside the list (other than the target) has probability above it.

    u = min(hi of the K-th listed entry, tail upper bound, minus the target's probability when the
    target is outside the list). ``err_target`` bounds the error of ``p_target`` (default: exact).
    """
    _, hi = prob_bounds(lp[:, -1])
    t_in = (ids == targets[:, None]).any(axis=1)
    tl = tail_upper(tail)
    e = np.zeros_like(p_target) if err_target is None else err_target
    # tl - (p - e), rounded up by one ulp
    rest = np.maximum(np.nextafter(tl - p_target + e, np.inf), 0.0)
    tl = np.where(t_in, tl, rest)
    return np.minimum(hi, tl)
