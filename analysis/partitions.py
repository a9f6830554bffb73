"""T/F/N partitions and exchange thresholds (DESIGN.md section 3; the paper's lemma A.2.3).

From single-model strict correctness: T = A wrong and B right, F = A right and B wrong, Nrr both
right, Nww both wrong. In tau = (1 - w) / w:
    on T, i = A's argmax (other than t):  ET_T = (qA(i) - qA(t)) / (qB(t) - qB(i))
    on F, j = B's argmax (other than t):  ET_F = (qA(t) - qA(j)) / (qB(j) - qB(t))
ET = +inf when the denominator is <= 0 and 0 when A ties. qA(i), qB(i), qA(j), qB(j) are known only
within their storage bounds (float16 rounding, or [0, u] outside a list), and a, b within their exp
rounding, so ET is an interval [et_lo, et_hi] that surely holds it (ET increases with qA(i) and qB(i) on
T, decreases with qA(j) and qB(j) on F; rounding stepped outward); `et_exact` says it is one value. The
competitor is never the target: where a list holds only the target (K = 1), that model ties it (it is the
wrong model of the partition), so the competitor is an unlisted class with the target's probability,
reported as competitor -1, and its probability under the other model is bounded by everything but t.
Crossing ET is necessary, not sufficient, for a flip: the certified
and possible correctness intervals (in w and in tau) are reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from .data import PARTITIONS, F, PairData, T
from .kernels import SUB_ERR
from .lut import list_bounds, outside_bound, x_err


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


def _w_to_tau(w: np.ndarray, up: bool) -> np.ndarray:
    """tau = (1 - w) / w for w in [0, 1] (w <= 0 -> inf, w >= 1 -> 0), rounded 2 ulps up (or down): more
    than the rounding of 1 - w and of the division."""
    d = np.inf if up else -np.inf
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # (1 - w) / w overflows to inf for subnormal w: stepped down, that is the largest float, still a bound
        tau = np.nextafter(np.nextafter((1.0 - w) / np.where(w > 0.0, w, 1.0), d), d)
        return np.where(w <= 0.0, np.inf, np.where(w >= 1.0, 0.0, np.maximum(tau, 0.0)))


def _diff(x_lo, x_hi, ex, y, ey, tie):
    """Sure bounds (lo, hi) of X - Y for X in [x_lo - ex, x_hi + ex], Y in [y - ey, y + ey]; (0, 0) where
    ``tie`` (identical stored float32 values)."""
    d_lo, d_hi = x_lo - y, x_hi - y
    lo = np.nextafter(d_lo - (ex + ey + np.abs(d_lo) * SUB_ERR), -np.inf)
    hi = np.nextafter(d_hi + (ex + ey + np.abs(d_hi) * SUB_ERR), np.inf)
    return np.where(tie, 0.0, lo), np.where(tie, 0.0, hi)


def _ratio_bounds(n_lo, n_hi, d_lo, d_hi):
    """Sure bounds of ET = max(num, 0) / den (+inf when den <= 0) for num in [n_lo, n_hi], den in
    [d_lo, d_hi]: ET increases with num and decreases with den; quotients stepped outward."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lo = np.nextafter(np.maximum(n_lo, 0.0) / np.where(d_hi > 0, d_hi, 1.0), -np.inf)
        hi = np.nextafter(np.maximum(n_hi, 0.0) / np.where(d_lo > 0, d_lo, 1.0), np.inf)
    return np.where(d_hi > 0, np.maximum(lo, 0.0), np.inf), np.where(d_lo > 0, hi, np.inf)


def _other_top(ids: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Column of the most probable listed id other than the target: 0, or 1 if column 0 is the target;
    -1 where the list holds only the target (the competitor is then an unlisted class)."""
    first_is_t = ids[:, 0] == targets
    if ids.shape[1] == 1:
        return np.where(first_is_t, -1, 0)
    return first_is_t.astype(np.int64)


def _own(ids, lp, lpt, u, ties_t, col):
    """(lo, hi, err, tie, id) of the competitor at column ``col`` of its own model's list; an unlisted
    competitor (col -1: the list is only the target) is a class tied with the target when the store counts
    ties, else any class in [0, u]; id -1 when unknown."""
    rows = np.arange(len(col))
    c = np.maximum(col, 0)
    lpc = lp[rows, c]
    lo, hi = list_bounds(lpc)
    ep, tie = _entry_err(lpc, lpt)
    unknown = col < 0
    tied = unknown & (ties_t > 0)
    lo = np.where(unknown, 0.0, lo)
    hi = np.where(unknown, u, hi)
    ep = np.where(unknown, 0.0, ep)
    return lo, hi, ep, np.where(unknown, tied, tie), np.where(unknown, -1, ids[rows, c])


def _entry_err(lp, lpt):
    """(err, tie) of stored log-probs: float32 values are exact, their float64 exp is within x_err, and an
    entry equal to the target's stored value ties it exactly; float16 bounds are sure (err 0, no ties)."""
    if lp.dtype == np.float16:
        return np.zeros(lp.shape), np.zeros(lp.shape, bool)
    x = lp.astype(np.float64)
    return x_err(np.exp(x), x), lp == lpt


def _lookup(ids_other, lp_other, lpt_other, u_other, ncls_other, query, t):
    """(lo, hi, err, tie) of the other model's probability of `query` ids: its list bounds, else [0, u] or 0;
    an unknown query (-1) is any class but t: [0, max(u, every other listed hi)]."""
    eq = ids_other == query[:, None]
    found = eq.any(axis=1)
    col = eq.argmax(axis=1)
    lpc = np.take_along_axis(lp_other, col[:, None], axis=1)[:, 0]
    lo, hi = list_bounds(lpc)
    ep, tie = _entry_err(lpc, lpt_other)
    lo = np.where(found, lo, 0.0)
    hi = np.where(found, hi, np.where(query < ncls_other, u_other, 0.0))
    ep = np.where(found, ep, 0.0)
    tie = found & tie
    unknown = query < 0
    if unknown.any():
        l_all, h_all = list_bounds(lp_other)
        e_all, _ = _entry_err(lp_other, lpt_other[:, None])
        h_all = np.where(ids_other == t[:, None], 0.0, h_all + e_all)
        hi = np.where(unknown, np.maximum(u_other, h_all.max(axis=1)), hi)
    return lo, hi, ep, tie


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
        ea = x_err(a, ra["target_logprob"].astype(np.float64))
        eb = x_err(b, rb["target_logprob"].astype(np.float64))
        ua = outside_bound(ra["topk_ids"], ra["topk_logprobs"], ra["tail_logmass"], t, a, ea)
        ub = outside_bound(rb["topk_ids"], rb["topk_logprobs"], rb["tail_logmass"], t, b, eb)
        # T: i = A's top other than t.  ET_T = (qA(i) - a) / (b - qB(i))
        lo_i, hi_i, ep_i, tie_i, i = _own(ra["topk_ids"], ra["topk_logprobs"], ra["target_logprob"], ua,
                                          ra["target_ties"], _other_top(ra["topk_ids"], t))
        qb_lo, qb_hi, qb_e, qb_tie = _lookup(rb["topk_ids"], rb["topk_logprobs"], rb["target_logprob"], ub,
                                             store_b.n_classes, i, t)
        n_lo, n_hi = _diff(lo_i, hi_i, ep_i, a, ea, tie_i)
        m_lo, m_hi = _diff(qb_lo, qb_hi, qb_e, b, eb, qb_tie)  # qB(i) - b = -den
        et_t_lo, et_t_hi = _ratio_bounds(n_lo, n_hi, -m_hi, -m_lo)
        a_ties = (ra["target_rank"] == 0) & (ra["target_ties"] > 0)
        et_t_lo = np.where(a_ties, 0.0, et_t_lo)
        et_t_hi = np.where(a_ties, 0.0, et_t_hi)
        # F: j = B's top other than t.  ET_F = (a - qA(j)) / (qB(j) - b)
        lo_j, hi_j, ep_j, tie_j, j = _own(rb["topk_ids"], rb["topk_logprobs"], rb["target_logprob"], ub,
                                          rb["target_ties"], _other_top(rb["topk_ids"], t))
        qa_lo, qa_hi, qa_e, qa_tie = _lookup(ra["topk_ids"], ra["topk_logprobs"], ra["target_logprob"], ua,
                                             store_a.n_classes, j, t)
        m_lo, m_hi = _diff(qa_lo, qa_hi, qa_e, a, ea, qa_tie)  # qA(j) - a = -num
        d_lo, d_hi = _diff(lo_j, hi_j, ep_j, b, eb, tie_j)
        et_f_lo, et_f_hi = _ratio_bounds(-m_hi, -m_lo, d_lo, d_hi)
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
            "tau_cert_lo": np.where(empty1, nan, _w_to_tau(u1, True)),
            "tau_cert_hi": np.where(empty1, nan, _w_to_tau(l1, False)),
            "tau_poss_lo": np.where(empty2, nan, _w_to_tau(u2, False)),
            "tau_poss_hi": np.where(empty2, nan, _w_to_tau(l2, True)),
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
