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


# ---------------------------------------------------------------------------------------------- AR-law fit
def power_fit(x, y) -> dict:
    """Least squares of log y on log x via numpy.polyfit (finite positive y only), with se and R^2."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(y) & (y > 0)
    lx, ly = np.log(x[ok]), np.log(y[ok])
    (p, icpt), res, *_ = np.polyfit(lx, ly, 1, full=True)
    pred = icpt + p * lx
    ssr = float(np.sum((ly - pred) ** 2))
    sst = float(np.sum((ly - ly.mean()) ** 2))
    n = len(lx)
    se = math.sqrt(ssr / (n - 2) / np.sum((lx - lx.mean()) ** 2)) if n >= 3 else math.nan
    return {"p": float(p), "c": math.exp(icpt), "r2": 1 - ssr / sst if sst > 0 else math.nan, "p_se": se,
            "n_points": n}


# ---------------------------------------------------------------------------------------------- RBP
def true_fused_counts(lp_a, lp_b, targets, w) -> np.ndarray:
    """#{j != t : f_w(j) >= f_w(t)} from the full distributions."""
    f = w * np.exp(lp_a) + (1 - w) * np.exp(lp_b)
    rows = np.arange(len(targets))
    ft = f[rows, targets]
    return (f >= ft[:, None]).sum(axis=1) - 1


def fused_count_bounds(arr_a, arr_b, ncls_a, ncls_b, w):
    """(c_lo, c_hi, cap) from the stored arrays by brute force over `reference.candidates`."""
    a, b, lo_A, hi_A, lo_B, hi_B, valid = ref.candidates(arr_a, arr_b, ncls_a, ncls_b)
    ft = w * a + (1 - w) * b
    lo = w * lo_A + (1 - w) * lo_B
    hi = w * hi_A + (1 - w) * hi_B
    listed = valid[:, :-1]
    c_lo = (listed & (lo[:, :-1] >= ft[:, None])).sum(axis=1)
    c_hi = (listed & (hi[:, :-1] >= ft[:, None])).sum(axis=1)
    n_vocab = max(ncls_a, ncls_b)
    t = arr_a["targets"]
    n_out = np.zeros(len(t), np.int64)
    for s in range(len(t)):
        known = set(arr_a["topk_ids"][s].tolist()) | set(arr_b["topk_ids"][s].tolist()) | {int(t[s])}
        n_out[s] = max(0, n_vocab - len(known))
    c_hi = c_hi + np.where(hi[:, -1] >= ft, n_out, 0)
    cap = (arr_a["target_rank"].astype(np.int64) + arr_a["target_ties"] + arr_b["target_rank"] + arr_b["target_ties"])
    return c_lo, c_hi, cap
