"""The paper's appendix A checked on real predictions, as measurements (issue 7.3).

Notation: A the primary (the paper's LM, q), B the secondary (SM, q'), t the target, a = qA(t), b = qB(t);
T = A wrong & B right, F = A right & B wrong (strict correctness); S all positions.

Mainstay Deviation (theorem A.2.2, assumption A.2.1), per predicted class h:
    n = #{A's top-1 = h}, m = #{B's top-1 = h}, P_L = #{A's top-1 = h and A right} / n, P_S likewise for B;
    A.2.1 holds iff n < m and |P_L - P_S| < (m - n) P_S / n; the theorem's conclusion is m P_S > n P_L.
    The classes checked are the ``top`` most predicted by A and B together (n + m).

Stratification (assumption A.2.4, in the form its proof uses): a in T belongs to the set A when
    qA(a, i_a) - a   <  min_{f in F} (a_f - max_{j != t_f} qA(f, j))          (A's margin on F)
    b - qB(a, i_a)   >  max_{f in F} (qB(f, j_f) - b_f)                          (B's margin on F)
with i_a = A's top class other than t, j_f = B's top class other than t. Stored probabilities are known within
bounds, so membership is counted certified (|A|_lo: true for every value within the bounds) and possible
(|A|_hi). R = members of A certified right at the ACC-optimal weight; the bound |R| / |S| (theorem A.2.6) is
reported beside the achieved ACC gain [acc_lo - acc_A, acc_hi - acc_A] at that weight.

Theorem A.2.5: condition (1) = some position with A wrong and qB(t) > qB(i_s) (counted certified / possible,
on T); its premise for strict improvement = some member of A (certified) with the strict exchange condition at
some w (a non-empty certified-right interval); its conclusion = max over w < 1 of acc_lo(w) > ACC_A (certified;
acc_hi: possible). ``A25_consistent`` is False only when the premise holds and not even acc_hi improves.
Theorem A.2.7: ACC unimodal in beta. Checked on the exact step function acc_lo(w) (and acc_hi) over its open
pieces and the endpoints w = 0, 1 (isolated interval ends are measure-zero and skipped): the dip
max_i [min(max_{j<=i} c_j, max_{j>=i} c_j) - c_i] is 0 iff unimodal; n_peaks counts strict local maxima runs.
(NLL is convex in w, so its unimodality is no evidence and is not reported.)
"""

from __future__ import annotations

import numpy as np
import polars as pl

from .data import NRR, F, T
from .lut import list_bounds, outside_bound
from .optimum import acc_pieces

NAMES = ["targets", "target_logprob", "target_rank", "target_ties", "topk_ids", "topk_logprobs", "tail_logmass"]


def mainstay_deviation(pair, top: int = 10) -> pl.DataFrame:
    """Assumption A.2.1 and theorem A.2.2 for the ``top`` most predicted classes (module docstring)."""
    ra = pair.primary.read(["topk_ids"])["topk_ids"][:, 0].astype(np.int64)
    rb = pair.secondary.read(["topk_ids"])["topk_ids"][:, 0].astype(np.int64)
    code = pair.data.code
    right_a, right_b = code >= 2, (code == T) | (code == NRR)
    nv = int(max(ra.max(initial=0), rb.max(initial=0))) + 1
    n_h = np.bincount(ra, minlength=nv)
    m_h = np.bincount(rb, minlength=nv)
    nl_h = np.bincount(ra[right_a], minlength=nv)
    ns_h = np.bincount(rb[right_b], minlength=nv)
    order = np.lexsort((np.arange(nv), -(n_h + m_h)))[:top]
    order = order[(n_h + m_h)[order] > 0]
    n, m = n_h[order].astype(float), m_h[order].astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        pl_, ps = nl_h[order] / n, ns_h[order] / m
        cond1 = n < m
        cond2 = np.abs(pl_ - ps) < (m - n) * ps / n
    assumption = cond1 & cond2
    conclusion = ns_h[order] > nl_h[order]
    return pl.DataFrame({"h": order, "n": n_h[order], "m": m_h[order], "P_L": pl_, "P_S": ps,
                         "N_L": nl_h[order], "N_S": ns_h[order], "n_lt_m": cond1, "advantage_limited": cond2,
                         "assumption_A21": assumption, "conclusion_NS_gt_NL": conclusion,
                         "consistent": ~assumption | conclusion})


def _other_top(ids: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Column of the most probable listed id other than the target."""
    if ids.shape[1] == 1:
        return np.zeros(len(ids), np.int64)
    return (ids[:, 0] == t).astype(np.int64)


def _lookup(ids, lo, hi, u, ncls, query):
    """(lo, hi) of a model's probability of `query` ids: its list bounds, else [0, u] (0 beyond its width)."""
    eq = ids == query[:, None]
    found = eq.any(axis=1)
    col = eq.argmax(axis=1)
    rows = np.arange(len(query))
    return (np.where(found, lo[rows, col], 0.0),
            np.where(found, hi[rows, col], np.where(query < ncls, u, 0.0)))


def stratification_terms(pair) -> dict[str, np.ndarray]:
    """Per T and F position, the bounds of the quantities in A.2.4 and condition (1).

    T: lhsA = qA(i) - a, rhsB = b - qB(i) (i = A's top other than t);
    F: marginA = a - max_{j != t} qA(j), marginB = qB(j_f) - b (j_f = B's top other than t). Each as (lo, hi).
    """
    data = pair.data
    sa, sb = pair.primary, pair.secondary
    ra, rb = sa.read(NAMES), sb.read(NAMES)
    t = ra["targets"].astype(np.int64)
    a, b = data.a, data.b
    la, ha = list_bounds(ra["topk_logprobs"])
    lb, hb = list_bounds(rb["topk_logprobs"])
    ub = outside_bound(rb["topk_ids"], rb["topk_logprobs"], rb["tail_logmass"], rb["targets"], b)
    rows = np.arange(len(t))
    ia = _other_top(ra["topk_ids"], t)
    i = ra["topk_ids"][rows, ia].astype(np.int64)
    qa_i = (la[rows, ia], ha[rows, ia])
    qb_i = _lookup(rb["topk_ids"], lb, hb, ub, sb.n_classes, i)
    jb = _other_top(rb["topk_ids"], t)
    qb_j = (lb[rows, jb], hb[rows, jb])
    is_t, is_f = data.code == T, data.code == F
    return {
        "is_t": is_t, "is_f": is_f,
        "lhsA_lo": qa_i[0] - a, "lhsA_hi": qa_i[1] - a,
        "rhsB_lo": b - qb_i[1], "rhsB_hi": b - qb_i[0],
        "marginA_lo": a - qa_i[1], "marginA_hi": a - qa_i[0],  # on F, i is A's top other than t
        "marginB_lo": qb_j[0] - b, "marginB_hi": qb_j[1] - b,
    }


def stratified_sets(pair) -> dict[str, np.ndarray]:
    """Masks of A (certified / possible members) and R (A certified right at the ACC optimum)."""
    x = stratification_terms(pair)
    is_t, is_f = x["is_t"], x["is_f"]
    if is_f.any():
        minA_lo, minA_hi = x["marginA_lo"][is_f].min(), x["marginA_hi"][is_f].min()
        maxB_lo, maxB_hi = x["marginB_lo"][is_f].max(), x["marginB_hi"][is_f].max()
    else:
        minA_lo = minA_hi = np.inf
        maxB_lo = maxB_hi = -np.inf
    a_cert = is_t & (x["lhsA_hi"] < minA_lo) & (x["rhsB_lo"] > maxB_hi)
    a_poss = is_t & (x["lhsA_lo"] < minA_hi) & (x["rhsB_hi"] > maxB_lo)
    data = pair.data
    w = pair.optimum().w_acc
    right_lo = (data.l1 < w) & (w < data.u1) if w < 1.0 else data.code >= 2
    right_hi = (data.l2 < w) & (w < data.u2) if w < 1.0 else data.code >= 2
    return {"A_lo": a_cert, "A_hi": a_poss, "R_lo": a_cert & right_lo, "R_hi": a_poss & right_hi,
            "cond1_lo": is_t & (x["rhsB_lo"] > 0), "cond1_hi": is_t & (x["rhsB_hi"] > 0),
            "strict_lo": a_cert & (data.l1 < data.u1)}


def _dip(c: np.ndarray) -> tuple[int, int]:
    """(dip, n_peaks) of a sequence: dip = max_i min(prefix max, suffix max) - c_i; peaks = strict local max runs."""
    if c.size == 0:
        return 0, 0
    pre = np.maximum.accumulate(c)
    suf = np.maximum.accumulate(c[::-1])[::-1]
    dip = int((np.minimum(pre, suf) - c).max())
    keep = np.concatenate([[True], np.diff(c) != 0])
    r = c[keep]  # runs collapsed
    if r.size == 1:
        return dip, 1
    left = np.concatenate([[-np.inf], r[:-1]])
    right = np.concatenate([r[1:], [-np.inf]])
    return dip, int(np.sum((r > left) & (r > right)))


def acc_profile(data, lo_bound: bool = True) -> np.ndarray:
    """acc count on [w=0], the open pieces between interval ends, and [w=1] (isolated ends skipped)."""
    p = acc_pieces(data, lo_bound=lo_bound)
    keep = ~p.is_point
    keep[0] = keep[-1] = True
    return p.count[keep]


def theorem_checks(pair) -> pl.DataFrame:
    """One row: |S|, |T|, |F|, A.2.4's |A| and |R| (certified, possible), the A.2.6 bound |R|/|S| against the
    achieved ACC gain, A.2.5's condition (1) and conclusion, A.2.7's unimodality of ACC in beta."""
    data = pair.data
    sets = stratified_sets(pair)
    opt = pair.optimum()
    n = data.n
    acc_a = int(np.count_nonzero(data.code >= 2))
    prof_lo, prof_hi = acc_profile(data, True), acc_profile(data, False)
    best_lo_below1 = int(prof_lo[:-1].max())
    best_hi_below1 = int(prof_hi[:-1].max())
    dip_lo, peaks_lo = _dip(prof_lo)
    dip_hi, peaks_hi = _dip(prof_hi)
    counts = data.partition_counts()
    row = {
        "primary": pair.names[0], "secondary": pair.names[1], "S": n, "T": counts["T"], "F": counts["F"],
        "A_lo": int(sets["A_lo"].sum()), "A_hi": int(sets["A_hi"].sum()),
        "R_lo": int(sets["R_lo"].sum()), "R_hi": int(sets["R_hi"].sum()), "w_acc": opt.w_acc,
        "bound_R_over_S_lo": sets["R_lo"].sum() / n, "bound_R_over_S_hi": sets["R_hi"].sum() / n,
        "gain_acc_lo": opt.at_acc["acc_lo"] - acc_a / n, "gain_acc_hi": opt.at_acc["acc_hi"] - acc_a / n,
        "cond1_lo": int(sets["cond1_lo"].sum()), "cond1_hi": int(sets["cond1_hi"].sum()),
        "A24_holds": bool(sets["A_lo"].any()), "A24_possible": bool(sets["A_hi"].any()),
        "A25_improves_certified": best_lo_below1 > acc_a, "A25_improves_possible": best_hi_below1 > acc_a,
        "A25_premise": bool(sets["strict_lo"].any()),
        "A25_consistent": (not sets["strict_lo"].any()) or best_hi_below1 > acc_a,
        "A27_unimodal_lo": dip_lo == 0, "A27_dip_lo": dip_lo, "A27_dip_frac_lo": dip_lo / n, "A27_peaks_lo": peaks_lo,
        "A27_unimodal_hi": dip_hi == 0, "A27_dip_hi": dip_hi, "A27_peaks_hi": peaks_hi,
    }
    return pl.DataFrame([row])
