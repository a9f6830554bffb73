"""Bootstrap intervals of a word pair's gains and optima, resampling documents (DESIGN.md sections 3 and 7).

The same method as `analysis.bootstrap` (its per-unit NLL grid in u = log beta, Hermite roots and exact
fallbacks: `resampled_optima`), run on the segments' scaled probabilities (ea, eb) with their exact -log ea,
-log eb, so ratios, derivatives and NLL differences are the segments' own at every magnitude. Statistics (fused
minus A alone; negative is an improvement): dbpb, dbpc, dword_ppl, and alpha_nll, d_nll, re-optimised on every
resample ("in-sample") or at a weight chosen elsewhere ("held-out").
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from ..bootstrap import MIN_UNITS, BootstrapError, _rows, choose_units, csum, draw_counts, resampled_optima
from ..metrics import LN2
from ..optimum import NllOptimum, solve_nll
from .segments import WordData

GAINS = ("dbpb", "dbpc", "dword_ppl")


def _gains(t: dict) -> dict:
    """Gains from totals (per resample, or of the full sample): nll, nll_a, n, bytes, chars."""
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        return {"dbpb": (t["nll"] - t["nll_a"]) / LN2 / t["bytes"], "dbpc": (t["nll"] - t["nll_a"]) / LN2 / t["chars"],
                "dword_ppl": np.exp(t["nll"] / t["n"]) - np.exp(t["nll_a"] / t["n"])}


def word_bootstrap(data: WordData, *, n_resamples: int = 1000, seed: int = 0, level: float = 0.95,
                   heldout_w: float | None = None, optimum: NllOptimum | None = None,
                   min_units: int = MIN_UNITS) -> pl.DataFrame:
    """Rows (statistic x scope) with estimate, ci_lo, ci_hi, se, n_inf / n_zero / n_nan, ci_unit ("doc"),
    ci_n_units, n_resamples, seed, level; like `analysis.bootstrap.bootstrap`. Fewer than ``min_units``
    documents: BootstrapError."""
    if n_resamples < 2:
        raise BootstrapError(f"n_resamples={n_resamples}; use at least 1000 for 95% intervals")
    if not 0.0 < level < 1.0:
        raise BootstrapError(f"level={level} must lie in (0, 1), e.g. 0.95")
    units = choose_units(data.n, data.doc, "doc", min_units)
    counts = draw_counts(units.n_units, n_resamples, seed)
    opt = optimum or solve_nll(data.problem())
    m = data.scaled[0]
    with np.errstate(invalid="ignore"):
        nll_ab = (np.where(m == -np.inf, 0.0, m - data.la), np.where(m == -np.inf, 0.0, m - data.lb))
    centres = tuple(math.log(x) if 0 < x < math.inf else -math.inf for x in (opt.alpha, opt.d))
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # 1 / v overflows for segments far apart
        ro = resampled_optima(data.as_pair_data(), units, counts, centres=centres, nll_ab=nll_ab)
    ones = np.ones(units.n_units)
    per_unit = {"nll_a": units.sums(-data.la), "n": units.sums(np.ones(data.n)), "bytes": units.sums(data.n_bytes),
                "chars": units.sums(data.n_chars)}
    tot = {k: csum(counts, v) for k, v in per_unit.items()}
    # the resample's own optimum: L* - L(1) = dbpb ln 2 bytes (a difference, the same on the scaled segments)
    boot = {"alpha_nll": ro.alpha_nll, "d_nll": ro.d_nll,
            **_gains({**tot, "nll": tot["nll_a"] + ro.dbpb * LN2 * tot["bytes"]})}
    full = {"alpha_nll": opt.alpha, "d_nll": opt.d,
            **_gains({**{k: csum(ones, v) for k, v in per_unit.items()},
                      "nll": csum(ones, units.sums(data.segment_nll(opt.w)))})}
    rows = _rows("in-sample", full, boot, level)
    if heldout_w is not None:
        fused = units.sums(data.segment_nll(float(heldout_w)))
        f = _gains({**{k: csum(ones, v) for k, v in per_unit.items()}, "nll": csum(ones, fused)})
        b = _gains({**tot, "nll": csum(counts, fused)})
        rows += _rows("held-out", f, b, level)
    return pl.DataFrame(rows).with_columns(
        pl.lit(units.kind).alias("ci_unit"), pl.lit(units.n_units).alias("ci_n_units"),
        pl.lit(n_resamples).alias("n_resamples"), pl.lit(seed).alias("seed"), pl.lit(level).alias("level"))
