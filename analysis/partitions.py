"""T/F/N partitions and exchange thresholds (DESIGN.md section 3; the paper's lemma A.2.3).

From single-model strict correctness: T = A wrong and B right, F = A right and B wrong, Nrr both
right, Nww both wrong. In tau = (1 - w) / w:
    on T, i = A's argmax (other than t):  ET_T = (qA(i) - qA(t)) / (qB(t) - qB(i))
    on F, j = B's argmax (other than t):  ET_F = (qA(t) - qA(j)) / (qB(j) - qB(t))
ET = +inf when the denominator is <= 0 and 0 when A ties. qA(i), qB(i), qA(j), qB(j) are known only
within their storage bounds (float16 rounding, or [0, u] outside a list), so ET is an interval
[et_lo, et_hi] (ET increases with qA(i) and qB(i) on T, decreases with qA(j) and qB(j) on F);
`et_exact` says it is one value. Crossing ET is necessary, not sufficient, for a flip: the certified
and possible correctness intervals (in w and in tau) are reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from .data import PARTITIONS, F, PairData, T
from .lut import list_bounds, outside_bound


@dataclass(frozen=True)
class Partitions:
    counts: dict  # {"T": n, "F": n, "Nrr": n, "Nww": n}
    positions: pl.DataFrame  # one row per T or F position

    @property
    def T(self) -> int:  # noqa: N802 (the paper's names)
        return self.counts["T"]

    @property
    def F(self) -> int:  # noqa: N802
        return self.counts["F"]


def _w_to_tau(w: np.ndarray) -> np.ndarray:
    """tau = (1 - w) / w for w in [0, 1]; w <= 0 -> inf, w >= 1 -> 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(w <= 0.0, np.inf, np.where(w >= 1.0, 0.0, (1.0 - w) / np.clip(w, 1e-300, None)))


def _ratio(num, den):
    """num / den with +inf where den <= 0; num clipped at 0 (rounding of bounds can make it negative)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, np.maximum(num, 0.0) / np.where(den > 0, den, 1.0), np.inf)


def _other_top(ids: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Column of the most probable listed id other than the target (0, or 1 if column 0 is the target)."""
    if ids.shape[1] == 1:
        return np.zeros(len(ids), np.int64)
    return (ids[:, 0] == targets).astype(np.int64)


def _lookup(ids_other, lp_other, u_other, ncls_other, query):
    """(lo, hi) of the other model's probability of `query` ids: its list bounds, else [0, u] or 0."""
    eq = ids_other == query[:, None]
    found = eq.any(axis=1)
    col = eq.argmax(axis=1)
    lo, hi = list_bounds(np.take_along_axis(lp_other, col[:, None], axis=1)[:, 0])
    lo = np.where(found, lo, 0.0)
    hi = np.where(found, hi, np.where(query < ncls_other, u_other, 0.0))
    return lo, hi


def exchange_thresholds(store_a, store_b, data: PairData, window: int = 65536) -> pl.DataFrame:
    """Per T and F position: ET bounds and the correctness intervals."""
    names = ["targets", "target_logprob", "target_rank", "target_ties", "topk_ids", "topk_logprobs",
             "tail_logmass"]
    frames = []
    for lo in range(0, data.n, window):
        hi = min(data.n, lo + window)
        code = data.code[lo:hi]
        sel = np.flatnonzero((code == T) | (code == F))
        if sel.size == 0:
            continue
        ra = {k: v[sel] for k, v in store_a.read(names, lo, hi).items()}
        rb = {k: v[sel] for k, v in store_b.read(names, lo, hi).items()}
        t = ra["targets"]
        a, b = data.a[lo + sel], data.b[lo + sel]
        ua = outside_bound(ra["topk_ids"], ra["topk_logprobs"], ra["tail_logmass"], t, a)
        ub = outside_bound(rb["topk_ids"], rb["topk_logprobs"], rb["tail_logmass"], t, b)
        rows = np.arange(sel.size)
        # T: i = A's top other than t.
        ci = _other_top(ra["topk_ids"], t)
        i = ra["topk_ids"][rows, ci]
        qa_i_lo, qa_i_hi = list_bounds(ra["topk_logprobs"][rows, ci])
        qb_i_lo, qb_i_hi = _lookup(rb["topk_ids"], rb["topk_logprobs"], ub, store_b.n_classes, i)
        et_t_lo = _ratio(qa_i_lo - a, b - qb_i_lo)
        et_t_hi = _ratio(qa_i_hi - a, b - qb_i_hi)
        a_ties = (ra["target_rank"] == 0) & (ra["target_ties"] > 0)
        et_t_lo = np.where(a_ties, 0.0, et_t_lo)
        et_t_hi = np.where(a_ties, 0.0, et_t_hi)
        # F: j = B's top other than t.
        cj = _other_top(rb["topk_ids"], t)
        j = rb["topk_ids"][rows, cj]
        qb_j_lo, qb_j_hi = list_bounds(rb["topk_logprobs"][rows, cj])
        qa_j_lo, qa_j_hi = _lookup(ra["topk_ids"], ra["topk_logprobs"], ua, store_a.n_classes, j)
        et_f_lo = _ratio(a - qa_j_hi, qb_j_hi - b)
        et_f_hi = _ratio(a - qa_j_lo, qb_j_lo - b)
        is_t = code[sel] == T
        pos = lo + sel
        et_lo = np.where(is_t, et_t_lo, et_f_lo)
        et_hi = np.where(is_t, et_t_hi, et_f_hi)
        l1, u1 = np.clip(data.l1[pos], 0, 1), np.clip(data.u1[pos], 0, 1)
        l2, u2 = np.clip(data.l2[pos], 0, 1), np.clip(data.u2[pos], 0, 1)
        empty1 = data.l1[pos] >= data.u1[pos]
        empty2 = data.l2[pos] >= data.u2[pos]
        nan = np.nan
        frames.append(pl.DataFrame({
            "position": pos.astype(np.int64),
            "partition": np.where(is_t, "T", "F"),
            "competitor": np.where(is_t, i, j).astype(np.int64),
            "et_lo": et_lo, "et_hi": et_hi, "et_exact": et_lo == et_hi,
            "w_cert_lo": np.where(empty1, nan, l1), "w_cert_hi": np.where(empty1, nan, u1),
            "w_poss_lo": np.where(empty2, nan, l2), "w_poss_hi": np.where(empty2, nan, u2),
            "tau_cert_lo": np.where(empty1, nan, _w_to_tau(u1)), "tau_cert_hi": np.where(empty1, nan, _w_to_tau(l1)),
            "tau_poss_lo": np.where(empty2, nan, _w_to_tau(u2)), "tau_poss_hi": np.where(empty2, nan, _w_to_tau(l2)),
        }))
    if not frames:
        return pl.DataFrame(schema={"position": pl.Int64, "partition": pl.Utf8, "competitor": pl.Int64,
                                    "et_lo": pl.Float64, "et_hi": pl.Float64, "et_exact": pl.Boolean,
                                    **{c: pl.Float64 for c in ("w_cert_lo", "w_cert_hi", "w_poss_lo", "w_poss_hi",
                                                               "tau_cert_lo", "tau_cert_hi", "tau_poss_lo",
                                                               "tau_poss_hi")}})
    return pl.concat(frames)


def partitions(store_a, store_b, data: PairData) -> Partitions:
    counts = data.partition_counts()
    assert set(counts) == set(PARTITIONS)
    return Partitions(counts, exchange_thresholds(store_a, store_b, data))
