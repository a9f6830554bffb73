"""Log-log least-squares fits of power laws (the AR law alpha ~ c k^p, the relative-based scaling law)."""

from __future__ import annotations

import math

import numpy as np

from .errors import AnalysisError

MIN_FIT_POINTS = 3
MIN_LOG_SPAN = 0.01  # a fit needs k to vary by more than ~1%  # a line through 2 points has R^2 = 1 and no standard error: it tests nothing


class LawFitError(AnalysisError, ValueError):
    """A law cannot be fitted as asked (missing columns, non-positive ratios)."""


def fit_power_law(x, y) -> dict:
    """Fit log y = log c + p log x over the points with finite x > 0 and 0 < y < inf.

    Returns n_points (used), n_zero / n_inf / n_nan (excluded y), c, p, p_se, r2 and note. With fewer than
    MIN_FIT_POINTS usable points (or no spread in log x) nothing is fitted: c, p, p_se, r2 are NaN and note says
    why ("not fitted: 2 points < 3"); note is "" for a fit. r2 is also NaN with no spread in log y.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise LawFitError(f"x and y differ in shape: {x.shape} vs {y.shape}")
    bad_x = ~(np.isfinite(x) & (x > 0))
    if bad_x.any():
        raise LawFitError(f"parameter ratio {float(x[bad_x][0])} is not a finite positive number; check the stores' "
                          "parameter counts (model.n_params / n_params_nonembed)")
    n_nan = int(np.isnan(y).sum())
    n_zero = int((y == 0).sum())
    n_inf = int(np.isinf(y).sum())
    ok = np.isfinite(y) & (y > 0)
    lx, ly = np.log(x[ok]), np.log(y[ok])
    n = int(ok.sum())
    out = {"n_points": n, "n_zero": n_zero, "n_inf": n_inf, "n_nan": n_nan,
           "c": math.nan, "p": math.nan, "p_se": math.nan, "r2": math.nan, "note": ""}
    if n < MIN_FIT_POINTS:
        out["note"] = f"not fitted: {n} point{'s' if n != 1 else ''} < {MIN_FIT_POINTS}"
        return out
    if np.ptp(lx) < MIN_LOG_SPAN:  # k within 1%: the slope is rounding noise over a tiny lever (p ~ 1e4, c ~ e^-1e5)
        out["note"] = ("not fitted: every point has the same k" if np.ptp(lx) == 0 else
                       f"not fitted: k spans only {np.ptp(lx):.2g} in log (< {MIN_LOG_SPAN})")
        return out
    mx, my = lx.mean(), ly.mean()
    sxx = float(np.sum((lx - mx) ** 2))
    p = float(np.sum((lx - mx) * (ly - my)) / sxx)
    icpt = my - p * mx
    ssr = float(np.sum((ly - icpt - p * lx) ** 2))
    sst = float(np.sum((ly - my) ** 2))
    # No spread in log y (exactly equal values): R^2 is undefined; sst would only hold rounding noise.
    out.update(c=math.exp(icpt) if icpt < 709.0 else math.inf, p=p, r2=1.0 - ssr / sst if np.ptp(ly) > 0 and sst > 0 else math.nan,
               p_se=math.sqrt(ssr / (n - 2) / sxx))
    return out
