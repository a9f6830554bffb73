"""Brute-force NumPy references of the law-testing statistics (issue 7): bootstrap, AR-law fit, RBP,
multi-model fusion, theorem checks, vocabulary use, similarity fusion.

Every function here is the obvious, slow definition: explicit resampled positions, full loops, no
per-unit sums, no kernels.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

import reference as ref  # noqa: F401  (puts the repository first on sys.path)


# ---------------------------------------------------------------------------------------------- bootstrap
def resample_positions(unit: np.ndarray, counts_row: np.ndarray) -> np.ndarray:
    """Positions of one resample: unit u's positions (in order) repeated counts_row[u] times."""
    out = []
    for u, c in enumerate(counts_row):
        pos = np.flatnonzero(unit == u)
        out.extend([pos] * int(c))
    return np.concatenate(out) if out else np.empty(0, np.int64)


def nll_optimum_bisect(a: np.ndarray, b: np.ndarray, iters: int = 300) -> float:
    """alpha_nll = w*/(1 - w*) by bisection on L'(u) in u = log beta (inf when L'(1) <= 0, 0 when L'(0) >= 0)."""
    if np.sum(b / a - 1.0) <= 0:
        return math.inf
    with np.errstate(divide="ignore"):
        if np.sum(1.0 - a / b) >= 0:
            return 0.0
    lo, hi = -700.0, 700.0
    for _ in range(iters):
        u = 0.5 * (lo + hi)
        w, v = 1 / (1 + math.exp(-u)), 1 / (1 + math.exp(u))
        g = -np.sum((a - b) / (w * a + v * b))
        if g > 0:
            hi = u
        else:
            lo = u
    return math.exp(0.5 * (lo + hi))


def nll_domain_bisect(a: np.ndarray, b: np.ndarray, alpha: float, iters: int = 300) -> float:
    """D_nll: the beta left of alpha where L = L(1) (0 if L(0) <= L(1), inf if alpha = inf)."""
    if alpha == math.inf:
        return math.inf
    l1 = np.sum(-np.log(a))
    with np.errstate(divide="ignore"):
        if np.sum(-np.log(b)) <= l1:
            return 0.0
    lo, hi = -700.0, math.log(alpha)
    for _ in range(iters):
        u = 0.5 * (lo + hi)
        w, v = 1 / (1 + math.exp(-u)), 1 / (1 + math.exp(u))
        if np.sum(-np.log(w * a + v * b)) > l1:
            lo = u
        else:
            hi = u
    return math.exp(0.5 * (lo + hi))


def percentile_ci(x: np.ndarray, level: float) -> tuple[float, float]:
    """Sorted-sample quantiles: the ceil(q R)-th smallest value (inverted CDF)."""
    x = np.sort(np.asarray(x, dtype=np.float64)[~np.isnan(x)])
    r = x.size
    out = []
    for q in ((1 - level) / 2, (1 + level) / 2):
        k = max(1, int(math.ceil(q * r - 1e-12)))
        out.append(float(x[k - 1]))
    return tuple(out)
