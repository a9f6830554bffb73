"""Fused metrics over a weight grid (DESIGN.md section 3), as a polars frame.

For weights w_i (any order; returned in the order given):
    nll_i  = (1/N) sum_s -log(w_i a_s + (1 - w_i) b_s)          exact (float64 block sums)
    ppl    = exp(nll);  bpc = N nll / ln 2 / sum n_chars;  bpb likewise with n_bytes (null for stores without
             text: classification and masked stores)
    acc_lo = #certified right / N,  acc_hi = #possibly right / N,  n_undetermined = their difference
             (the per-position intervals of `kernels.prepare_pair`, rounding accounted outward: acc_lo <= the
             true accuracy <= acc_hi surely; equal for float32 lists holding every class, except at weights
             within a few ulps (or a near-tie's rounding) of where a position's correctness changes)
At w = 0 and w = 1 the fusion is B or A alone, and correctness is the store's exact single-model one.
Per partition (T: A wrong B right, F: A right B wrong, Nww, Nrr) the counts made right / wrong are
reported as certified [lo, hi] ranges.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from . import kernels
from .data import NRR, NWW, F, PairData, T
from .errors import AnalysisError, WeightError

LN2 = math.log(2.0)


def check_weights(weights) -> np.ndarray:
    """Weights as a 1-D float64 array in [0, 1]; raises WeightError naming the first bad value."""
    w = np.atleast_1d(np.asarray(weights, dtype=np.float64))
    if w.ndim != 1 or w.size == 0:
        raise WeightError(f"need a non-empty 1-D grid of weights in [0, 1]; got shape {w.shape}. "
                          "Pass e.g. numpy.linspace(0, 1, 101)")
    bad = np.flatnonzero(~((w >= 0.0) & (w <= 1.0)))
    if bad.size:
        raise WeightError(f"weight {w[bad[0]]!r} at index {int(bad[0])} is outside [0, 1] "
                          f"({bad.size} bad of {w.size}); weights are w in f = w qA + (1 - w) qB. "
                          "For ratios use sweep(betas=...)")
    return np.ascontiguousarray(w)


def betas_to_weights(betas) -> np.ndarray:
    """w = beta / (1 + beta), beta = inf -> w = 1; raises WeightError for beta < 0, NaN or an empty grid."""
    bt = np.atleast_1d(np.asarray(betas, dtype=np.float64))
    if bt.ndim != 1 or bt.size == 0:
        raise WeightError(f"need a non-empty 1-D grid of betas in [0, inf]; got shape {bt.shape}")
    bad = np.flatnonzero(~(bt >= 0.0))
    if bad.size:
        raise WeightError(f"beta {bt[bad[0]]!r} at index {int(bad[0])} is outside [0, inf]; "
                          "beta = w / (1 - w) is the weight ratio of the primary model")
    with np.errstate(invalid="ignore"):
        return np.where(np.isinf(bt), 1.0, bt / (1.0 + bt))


def weight_to_beta(w):
    w = np.asarray(w, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(w >= 1.0, np.inf, w / (1.0 - w))


def nll_sums(data: PairData, w: np.ndarray, omw: np.ndarray | None = None) -> np.ndarray:
    """sum_s -log(w a + (1 - w) b) for each weight (float64, block-reduced in order)."""
    w = np.ascontiguousarray(w, dtype=np.float64)
    omw = np.ascontiguousarray(1.0 - w if omw is None else omw, dtype=np.float64)
    nblk = (data.n + kernels.BLOCK - 1) // kernels.BLOCK
    blocks = np.empty((nblk, w.size), np.float64)
    kernels.nll_blocks(data.a, data.b, w, omw, blocks)
    return kernels.reduce_blocks(blocks)


def right_counts(data: PairData, w_sorted: np.ndarray) -> np.ndarray:
    """(2, 4, W) int64: positions of each partition code right at each weight, [0] certified, [1] possible."""
    nw = w_sorted.size
    i_lo = int(np.searchsorted(w_sorted, 0.0, side="right"))
    i_hi = int(np.searchsorted(w_sorted, 1.0, side="left"))
    nblk = (data.n + kernels.BLOCK - 1) // kernels.BLOCK
    blocks = np.zeros((nblk, 2, 4, nw), np.int64)
    kernels.acc_blocks(data.code, data.l1, data.u1, data.l2, data.u2, w_sorted, i_lo, i_hi, blocks)
    return single_model_columns(blocks.sum(axis=0), np.bincount(data.code, minlength=4), i_lo, i_hi)


def single_model_columns(counts: np.ndarray, n_code: np.ndarray, i_lo: int, i_hi: int) -> np.ndarray:
    """``counts`` (2, 4, W) with its weights below index i_lo (w = 0: B alone) and from i_hi on (w = 1: A alone)
    set to the stores' exact single-model correctness per partition code."""
    for c in range(4):
        counts[:, c, :i_lo] = n_code[c] if c & 1 else 0  # w = 0: B alone, exact
        counts[:, c, i_hi:] = n_code[c] if c & 2 else 0  # w = 1: A alone, exact
    return counts


def _per_unit(nll_sum: np.ndarray, sizes: np.ndarray | None):
    """Bits per character (or byte): nll_sum / ln 2 / sum sizes; NaN when the sizes sum to 0, null (None)
    when the stores have no text at all (classification, masked)."""
    if sizes is None:
        return pl.Series(values=[None] * nll_sum.size, dtype=pl.Float64)
    total = int(sizes.sum())
    return nll_sum / LN2 / total if total else np.full(nll_sum.size, np.nan)


def sweep_frame(data: PairData, weights) -> pl.DataFrame:
    """Fused metrics at each weight; see the module docstring for the columns."""
    w = check_weights(weights)
    if data.n == 0:
        raise AnalysisError("the pair has no positions; nothing to sweep")
    order = np.argsort(w, kind="stable")
    ws = w[order]
    nll_sum = np.empty(w.size)
    nll_sum[order] = nll_sums(data, ws)
    counts = np.empty((2, 4, w.size), np.int64)
    counts[:, :, order] = right_counts(data, ws)
    return frame_from_sums(w, nll_sum, counts, np.bincount(data.code, minlength=4), data.n_chars, data.n_bytes)


def frame_from_sums(w: np.ndarray, nll_sum: np.ndarray, counts: np.ndarray, n_code: np.ndarray,
                    n_chars: np.ndarray | None, n_bytes: np.ndarray | None) -> pl.DataFrame:
    """The sweep frame from its sums (both engines): weights ``w`` as given, NLL sums and (2, 4, W) right counts in
    the same order, positions per partition code, and the n_chars / n_bytes (or their totals; None without text)."""
    n = int(n_code.sum())
    lo, hi = counts[0], counts[1]
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        return pl.DataFrame({
            "w": w,
            "beta": weight_to_beta(w),
            "nll": nll_sum / n,
            "ppl": np.exp(nll_sum / n),
            "bpc": _per_unit(nll_sum, n_chars),
            "bpb": _per_unit(nll_sum, n_bytes),
            "acc_lo": lo.sum(axis=0) / n,
            "acc_hi": hi.sum(axis=0) / n,
            "n_right_lo": lo.sum(axis=0),
            "n_right_hi": hi.sum(axis=0),
            "n_undetermined": hi.sum(axis=0) - lo.sum(axis=0),
            "t_fixed_lo": lo[T], "t_fixed_hi": hi[T],
            "f_broken_lo": n_code[F] - hi[F], "f_broken_hi": n_code[F] - lo[F],
            "nww_fixed_lo": lo[NWW], "nww_fixed_hi": hi[NWW],
            "nrr_broken_lo": n_code[NRR] - hi[NRR], "nrr_broken_hi": n_code[NRR] - lo[NRR],
            "nll_sum": nll_sum,
        })
