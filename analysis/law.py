"""The AR law across a family of models (issue 7.2), and the `python -m analysis.law` CLI.

For each fixed primary A and secondaries B of one family (one token stream), the pair's optimal ratio
alpha and improvement-domain bound D are points against the parameter ratio k = |A| / |B| (non-embedding
counts by default, ``param_count="n_params"`` for totals; the column ``k_from`` says which). The law is
the log-log fit
    log alpha = log c + p log k       (ordinary least squares over the points with 0 < alpha < inf)
with the points at alpha = 0 or alpha = inf excluded and counted. p's standard error needs at least 3
points: se(p) = sqrt(SSR / (n - 2) / Sxx), Sxx = sum (log k - mean log k)^2; R^2 = 1 - SSR / SST.

CLI: ``python -m analysis.law stores=DIR`` writes law points and fits, bootstrap intervals, RBP, theorem
checks, vocabulary use and multi-model fusion to the Hydra run directory (see `conf/law.yaml`).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import polars as pl

from .errors import AnalysisError

log = logging.getLogger(__name__)

LAW_METRICS = ("alpha_nll", "alpha_acc", "d_nll", "d_acc")


class LawFitError(AnalysisError, ValueError):
    """A law cannot be fitted as asked (missing columns, non-positive ratios)."""


def fit_power_law(x, y) -> dict:
    """Fit log y = log c + p log x over the points with finite x > 0 and 0 < y < inf.

    Returns n_points (used), n_zero / n_inf / n_nan (excluded y), c, p, p_se (NaN below 3 points), r2
    (NaN below 2 points or with no spread in log y).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise LawFitError(f"x and y differ in shape: {x.shape} vs {y.shape}")
    bad_x = ~(np.isfinite(x) & (x > 0))
    if bad_x.any():
        raise LawFitError(f"parameter ratio {x[bad_x][0]!r} is not a finite positive number; check the stores' "
                          "parameter counts (model.n_params / n_params_nonembed)")
    n_nan = int(np.isnan(y).sum())
    n_zero = int((y == 0).sum())
    n_inf = int(np.isinf(y).sum())
    ok = np.isfinite(y) & (y > 0)
    lx, ly = np.log(x[ok]), np.log(y[ok])
    n = int(ok.sum())
    out = {"n_points": n, "n_zero": n_zero, "n_inf": n_inf, "n_nan": n_nan,
           "c": math.nan, "p": math.nan, "p_se": math.nan, "r2": math.nan}
    if n < 2 or np.ptp(lx) == 0:
        return out
    mx, my = lx.mean(), ly.mean()
    sxx = float(np.sum((lx - mx) ** 2))
    p = float(np.sum((lx - mx) * (ly - my)) / sxx)
    icpt = my - p * mx
    ssr = float(np.sum((ly - icpt - p * lx) ** 2))
    sst = float(np.sum((ly - my) ** 2))
    out.update(c=math.exp(icpt), p=p, r2=1.0 - ssr / sst if sst > 0 else math.nan)
    if n >= 3:
        out["p_se"] = math.sqrt(ssr / (n - 2) / sxx)
    return out


def law_points(pairs, param_count: str = "n_params_nonembed") -> pl.DataFrame:
    """One row per `analysis.Pair`: primary, secondary, dataset, split, k, k_from and the exact optima."""
    rows = []
    for pair in pairs:
        opt = pair.optimum()
        ds = pair.primary.dataset
        rows.append({"primary": pair.names[0], "secondary": pair.names[1], "dataset": ds.get("name"),
                     "split": ds.get("split"), "k": pair.param_ratio(param_count), "k_from": param_count,
                     "alpha_nll": opt.alpha_nll, "d_nll": opt.d_nll, "alpha_acc": opt.alpha_acc, "d_acc": opt.d_acc})
    return pl.DataFrame(rows, schema={"primary": pl.Utf8, "secondary": pl.Utf8, "dataset": pl.Utf8,
                                      "split": pl.Utf8, "k": pl.Float64, "k_from": pl.Utf8,
                                      **{m: pl.Float64 for m in LAW_METRICS}})


def ar_law(points: pl.DataFrame, metrics=LAW_METRICS, by=("primary", "dataset", "split")) -> pl.DataFrame:
    """Fit alpha (and D) ~ c k^p for each fixed primary (and dataset, split); see `fit_power_law`.

    ``points``: a frame with columns k, k_from, the ``by`` columns and the metrics (e.g. `law_points`, or the
    sweep CLI's pairs table).
    """
    missing = [c for c in ("k", *by, *metrics) if c not in points.columns]
    if missing:
        raise LawFitError(f"the points frame lacks columns {missing}; it has {points.columns}")
    rows = []
    if points.height == 0:
        return pl.DataFrame(schema={**{c: pl.Utf8 for c in by}, "metric": pl.Utf8, "k_from": pl.Utf8})
    for key, grp in points.group_by(list(by), maintain_order=True):
        for m in metrics:
            fit = fit_power_law(grp["k"].to_numpy(), grp[m].to_numpy())
            k_from = grp["k_from"][0] if "k_from" in grp.columns else "n_params_nonembed"
            rows.append({**dict(zip(by, key)), "metric": m, "k_from": k_from, **fit})
    return pl.DataFrame(rows)


def plot_ar_law(points: pl.DataFrame, fits: pl.DataFrame, metric: str = "alpha_nll", ax=None):
    """Log-log scatter of ``metric`` against k per primary with its fitted line; excluded points (0 / inf)
    drawn as open markers at the plot's edge. Only draws; returns the axes."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    for (prim,), grp in points.group_by(["primary"], maintain_order=True):
        k = grp["k"].to_numpy()
        y = grp[metric].to_numpy()
        ok = np.isfinite(y) & (y > 0)
        line = ax.plot(k[ok], y[ok], "o", label=str(prim))[0]
        if (~ok).any() and ok.any():
            edge = np.where(np.isinf(y[~ok]), np.nanmax(y[ok]) * 3, np.nanmin(y[ok]) / 3)
            ax.plot(k[~ok], edge, "o", mfc="none", color=line.get_color())
        fit = fits.filter((pl.col("primary") == prim) & (pl.col("metric") == metric))
        if fit.height and math.isfinite(fit["p"][0]) and ok.sum() >= 2:
            xs = np.geomspace(k[ok].min(), k[ok].max(), 50)
            ax.plot(xs, fit["c"][0] * xs ** fit["p"][0], "-", color=line.get_color(),
                    label=f"p = {fit['p'][0]:.2f}, R² = {fit['r2'][0]:.2f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    k_from = points["k_from"][0] if points.height and "k_from" in points.columns else ""
    ax.set_xlabel(f"parameter ratio k ({k_from})")
    ax.set_ylabel(metric)
    ax.legend(fontsize="small")
    return ax
