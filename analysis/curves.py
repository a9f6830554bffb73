"""Curves derived from a weight sweep, ready to plot (the computing half of `analysis.plots`)."""

from __future__ import annotations

import numpy as np
import polars as pl

from .errors import AnalysisError

LOWER = ("ppl", "bpc", "bpb")
HIGHER = ("acc_lo", "acc_hi")


def relative_improvement_curve(sweep: pl.DataFrame) -> pl.DataFrame:
    """Add paper-style relative improvements (%) against the best single model at every weight.

    rel_<m> = (best - fused) / best * 100 for ppl/bpc/bpb; (fused - best) / best * 100 for acc_lo/acc_hi.
    The single models are the sweep's rows at w = 1 (A alone) and w = 0 (B alone), which must be present.
    """
    w = sweep["w"].to_numpy()
    if not (np.any(w == 1.0) and np.any(w == 0.0)):
        raise AnalysisError("the sweep needs rows at w = 0 and w = 1 (the single models) to compute relative "
                            "improvements; include them in the weight grid")
    a = sweep.filter(pl.col("w") == 1.0).row(0, named=True)
    b = sweep.filter(pl.col("w") == 0.0).row(0, named=True)
    cols = []
    for m in LOWER:
        if a[m] is None or b[m] is None:  # BPC / BPB of stores without text (classification, masked): null
            cols.append(pl.lit(None, dtype=pl.Float64).alias(f"rel_{m}"))
            continue
        best = min(a[m], b[m])
        cols.append(((best - pl.col(m)) / best * 100.0).alias(f"rel_{m}"))
    for m in HIGHER:
        best = max(a[m], b[m])
        cols.append(((pl.col(m) - best) / best * 100.0).alias(f"rel_{m}") if best else pl.lit(np.nan).alias(f"rel_{m}"))
    return sweep.with_columns(cols)


def log_beta_grid(n: int = 121, lo: float = 1e-3, hi: float = 1e3) -> np.ndarray:
    """Weights whose betas are log-spaced on [lo, hi], plus w = 0 and w = 1 (the single models)."""
    betas = np.logspace(np.log10(lo), np.log10(hi), n)
    return np.concatenate([[0.0], betas / (1.0 + betas), [1.0]])
