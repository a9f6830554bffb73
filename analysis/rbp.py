"""Relative-Based Probability (Yue et al., 2025) of single models and of the fusion (issue 7.4).

RBP@k = the fraction of positions whose target is strictly inside the top k, counted pessimistically:
    single model:  rank + ties < k          (exact from target_rank / target_ties)
    fusion at w:   c_s < k,  c_s = #{j != t : f_w(j) >= f_w(t)}
c_s is bounded from the stored lists: c_lo counts the known competitors whose lower bound reaches f_w(t),
c_hi those whose upper bound does, plus every class outside both lists when their common upper bound
w uA + (1 - w) uB reaches it. Beyond the lists, a class j with qA(j) < qA(t) and qB(j) < qB(t) has
f_w(j) < f_w(t), so c_s <= (rank_A + ties_A) + (rank_B + ties_B) (the rank-sum bound), which caps c_hi.
Every comparison is made with rounding accounted outward (a and b within their exp error, float16 entries
by their rounding intervals, `kernels._gap`), so c_lo <= c_s <= c_hi surely; identical stored float32 values
are exact ties. RBP_lo = mean(c_hi < k) (certified), RBP_hi = mean(c_lo < k) (possible). ``method`` says "exact" when
they agree, "rank-sum bound" when the cap certified some position, else "bounded".

The relative-based scaling law: -log RBP@k = c N^(-gamma) across a family (N non-embedding parameters
by default), fitted by `law.fit_power_law` on log(-log RBP) against log N; gamma = -p.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
from numba import njit, prange

from .fits import fit_power_law
from .kernels import _gap
from .lut import REL, TINY, list_bounds, outside_bound, x_err

KS = (1, 5, 10, 50, 100, 1000)


def single_rbp(store, ks=KS, chunk: int = 1 << 18) -> pl.DataFrame:
    """Exact RBP@k of one store: model, k, rbp, n_in, n."""
    ks = np.asarray(ks, dtype=np.int64)
    n_in = np.zeros(ks.size, np.int64)
    for lo in range(0, store.n, chunk):
        r = store.read(["target_rank", "target_ties"], lo, min(store.n, lo + chunk))
        c = r["target_rank"].astype(np.int64) + r["target_ties"]
        n_in += (c[:, None] < ks[None, :]).sum(axis=0)
    name = str(store.model.get("name", getattr(store, "path", "")))
    return pl.DataFrame({"model": [name] * ks.size, "k": ks, "rbp": n_in / store.n, "n_in": n_in,
                         "n": [store.n] * ks.size})


@njit(cache=True, nogil=True)
def _sign(w, v, d1, d0):
    """Sign of w d1 + v d0 as far as rounding allows: 1 surely > 0, -1 surely <= 0, 0 unknown (v = 1 - w
    rounded; the margin covers it, both products and the sum; exact zeros give exactly 0 -> -1)."""
    x = w * d1
    y = v * d0
    g = x + y
    m = (abs(x) + abs(y)) * REL + (TINY if (d1 != 0.0 or d0 != 0.0) else 0.0)
    if g - m > 0.0:
        return 1
    if g + m <= 0.0:
        return -1
    return 0


@njit(cache=True, nogil=True)
def _counts_at(w, v, a, ea, b, eb, lo_a, hi_a, ep_a, tie_a, lo_b, hi_b, ep_b, tie_b):
    """(surely f(j) >= f(t), possibly f(j) >= f(t)) for a competitor with the given bounds (`kernels._lines`)."""
    c1, e1 = _gap(a, ea, hi_a, ep_a, tie_a)
    c0, e0 = _gap(b, eb, hi_b, ep_b, tie_b)
    possible = _sign(w, v, c1 - e1, c0 - e0) != 1  # (SUB_ERR covers the rounding of c -+ e)
    c1, e1 = _gap(a, ea, lo_a, ep_a, tie_a)
    c0, e0 = _gap(b, eb, lo_b, ep_b, tie_b)
    sure = _sign(w, v, c1 + e1, c0 + e0) == -1
    return sure, possible


@njit(cache=True, nogil=True, parallel=True)
def fused_count_bounds(t, a, ea, b, eb, w, n_vocab, ids_a, lo_a, hi_a, ep_a, tie_a, u_a, ncls_a,
                       ids_b, lo_b, hi_b, ep_b, tie_b, u_b, ncls_b, c_lo, c_hi):
    """Per position: c_lo / c_hi bounds of #{j != t : w qA(j) + (1 - w) qB(j) >= f(t)}: every class of the
    union of the two lists (each class outside a model's list is in [0, u], or 0 beyond its width) and the
    classes outside both lists (in [0, uA] x [0, uB]: counted in c_hi when their bound may reach f(t)).
    a, b are within ea, eb; list entries within ep_* of [lo, hi]; tie_*: stored value equal to t's (exact)."""
    n = t.shape[0]
    ka = ids_a.shape[1]
    kb = ids_b.shape[1]
    v = 1.0 - w
    n_pieces = max(1, min(64, n // 1024 + 1))
    piece = (n + n_pieces - 1) // n_pieces
    for p in prange(n_pieces):
        where = np.full(n_vocab, -1, np.int32)
        for s in range(p * piece, min(n, (p + 1) * piece)):
            tt = t[s]
            for k in range(kb):
                where[ids_b[s, k]] = k
            lo_c = 0
            hi_c = 0
            n_union = kb
            t_known = False
            for k in range(ka):
                j = ids_a[s, k]
                kk = where[j]
                if kk < 0:
                    n_union += 1
                if j == tt:
                    t_known = True
                    continue
                if kk >= 0:
                    lb, hb, eb_j, tb = lo_b[s, kk], hi_b[s, kk], ep_b[s, kk], tie_b[s, kk]
                    where[j] = -2
                else:
                    lb, hb, eb_j, tb = 0.0, (u_b[s] if j < ncls_b else 0.0), 0.0, False
                sure, poss = _counts_at(w, v, a[s], ea[s], b[s], eb[s], lo_a[s, k], hi_a[s, k], ep_a[s, k],
                                        tie_a[s, k], lb, hb, eb_j, tb)
                lo_c += sure
                hi_c += poss
            for k in range(kb):
                j = ids_b[s, k]
                matched = where[j] == -2
                where[j] = -1
                if j == tt:
                    t_known = True
                    continue
                if matched:
                    continue
                sure, poss = _counts_at(w, v, a[s], ea[s], b[s], eb[s], 0.0, (u_a[s] if j < ncls_a else 0.0),
                                        0.0, False, lo_b[s, k], hi_b[s, k], ep_b[s, k], tie_b[s, k])
                lo_c += sure
                hi_c += poss
            out = n_vocab - n_union - (0 if t_known else 1)
            if out > 0:
                _, poss = _counts_at(w, v, a[s], ea[s], b[s], eb[s], 0.0, u_a[s], 0.0, False, 0.0, u_b[s], 0.0,
                                     False)
                hi_c += out * poss
            c_lo[s] = lo_c
            c_hi[s] = hi_c


def _side(r: dict):
    """(p, err) of the target and (ids, lo, hi, err, tie) of the list entries of one model's chunk."""
    x = r["target_logprob"].astype(np.float64)
    p = np.exp(x)
    e = x_err(p, x)
    lp = r["topk_logprobs"]
    lo, hi = list_bounds(lp)
    if lp.dtype == np.float16:
        ep, tie = np.zeros(lp.shape), np.zeros(lp.shape, bool)
    else:
        ep, tie = x_err(lo, lp.astype(np.float64)), lp == r["target_logprob"][:, None]
    c = np.ascontiguousarray
    return p, e, c(r["topk_ids"], dtype=np.int64), c(lo), c(hi), c(ep), c(tie)


def fused_counts(store_a, store_b, w: float, chunk: int = 16384) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(c_lo, c_hi before the cap, rank-sum cap) per position for the fusion at weight w in (0, 1)."""
    n = store_a.n
    n_vocab = max(store_a.n_classes, store_b.n_classes)
    names = ["targets", "target_logprob", "target_rank", "target_ties", "topk_ids", "topk_logprobs",
             "tail_logmass"]
    c_lo = np.empty(n, np.int64)
    c_hi = np.empty(n, np.int64)
    cap = np.empty(n, np.int64)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        ra, rb = store_a.read(names, lo, hi), store_b.read(names, lo, hi)
        t = ra["targets"].astype(np.int64)
        a, ea, *list_a = _side(ra)
        b, eb, *list_b = _side(rb)
        ua = outside_bound(ra["topk_ids"], ra["topk_logprobs"], ra["tail_logmass"], ra["targets"], a, ea)
        ub = outside_bound(rb["topk_ids"], rb["topk_logprobs"], rb["tail_logmass"], rb["targets"], b, eb)
        fused_count_bounds(t, a, ea, b, eb, float(w), n_vocab, *list_a, ua, store_a.n_classes,
                           *list_b, ub, store_b.n_classes, c_lo[lo:hi], c_hi[lo:hi])
        cap[lo:hi] = (ra["target_rank"].astype(np.int64) + ra["target_ties"] + rb["target_rank"]
                      + rb["target_ties"])
    return c_lo, c_hi, cap


def fused_rbp(store_a, store_b, w: float, ks=KS) -> pl.DataFrame:
    """RBP@k of the fusion at w: k, rbp_lo, rbp_hi, n_undetermined, n_by_rank_sum, method (module docstring)."""
    ks = np.asarray(ks, dtype=np.int64)
    n = store_a.n
    if w >= 1.0 or w <= 0.0:
        s = single_rbp(store_a if w >= 1.0 else store_b, ks)
        return pl.DataFrame({"k": ks, "rbp_lo": s["rbp"], "rbp_hi": s["rbp"], "n_undetermined": [0] * ks.size,
                             "n_by_rank_sum": [0] * ks.size, "method": ["exact"] * ks.size})
    c_lo, c_hi, cap = fused_counts(store_a, store_b, w)
    rows = []
    for k in ks:
        cert_raw = c_hi < k
        cert = cert_raw | (cap < k)
        poss = c_lo < k
        n_lo, n_hi = int(cert.sum()), int(poss.sum())
        by_cap = int((cert & ~cert_raw).sum())
        method = "exact" if n_lo == n_hi and by_cap == 0 else ("rank-sum bound" if by_cap else "bounded")
        rows.append({"k": int(k), "rbp_lo": n_lo / n, "rbp_hi": n_hi / n, "n_undetermined": n_hi - n_lo,
                     "n_by_rank_sum": by_cap, "method": method})
    return pl.DataFrame(rows)


def pair_rbp(pair, ks=KS) -> pl.DataFrame:
    """RBP@k of A alone, B alone and the fusion at the NLL- and ACC-optimal weights, one frame."""
    opt = pair.optimum()
    frames = []
    for label, store in (("A", pair.primary), ("B", pair.secondary)):
        s = single_rbp(store, ks)
        frames.append(pl.DataFrame({"model": [f"{label}: {s['model'][0]}"] * s.height, "w": [1.0 if label == "A" else 0.0] * s.height,
                                    "k": s["k"], "rbp_lo": s["rbp"], "rbp_hi": s["rbp"],
                                    "n_undetermined": [0] * s.height, "n_by_rank_sum": [0] * s.height,
                                    "method": ["exact"] * s.height}))
    for label, w in (("fused at w_nll", opt.w_nll), ("fused at w_acc", opt.w_acc)):
        f = fused_rbp(pair.primary, pair.secondary, w, ks)
        frames.append(f.with_columns(pl.lit(label).alias("model"), pl.lit(w).alias("w")).select(frames[0].columns))
    return pl.concat(frames).with_columns(pl.lit(pair.names[0]).alias("primary"), pl.lit(pair.names[1]).alias("secondary"))


def rbp_scaling(rbp: pl.DataFrame, params: dict, by=("k",)) -> pl.DataFrame:
    """Relative-based scaling law per k: fit -log RBP@k = c N^(-gamma) over models.

    ``rbp``: rows of (model, k, rbp) (e.g. concatenated `single_rbp` frames); ``params``: model -> N.
    Returns k, n_points, gamma (= -p), gamma_se, r2, c, and n_excluded (RBP of 0 or 1).
    """
    rows = []
    for key, grp in rbp.group_by(list(by), maintain_order=True):
        n = np.array([float(params.get(m, math.nan)) for m in grp["model"].to_list()])
        y = grp["rbp"].to_numpy().astype(np.float64)
        keep = np.isfinite(n) & (n > 0)
        with np.errstate(divide="ignore"):
            nl = -np.log(y[keep])
        fit = fit_power_law(n[keep], nl)
        rows.append({**dict(zip(by, key)), "n_points": fit["n_points"], "n_excluded": fit["n_zero"] + fit["n_inf"],
                     "gamma": -fit["p"], "gamma_se": fit["p_se"], "r2": fit["r2"], "c": fit["c"]})
    return pl.DataFrame(rows)


def plot_rbp_scaling(rbp: pl.DataFrame, params: dict, fits: pl.DataFrame | None = None, ax=None):
    """-log RBP@k against parameters, one series per k, with the fitted power law when given. Only draws."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    for (k,), grp in rbp.group_by(["k"], maintain_order=True):
        n = np.array([float(params.get(m, math.nan)) for m in grp["model"].to_list()])
        with np.errstate(divide="ignore"):
            y = -np.log(grp["rbp"].to_numpy().astype(float))
        line = ax.plot(n, y, "o", label=f"k = {k}")[0]
        fit = fits.filter(pl.col("k") == k) if fits is not None else None
        if fit is not None and fit.height and math.isfinite(fit["gamma"][0]):
            xs = np.geomspace(np.nanmin(n), np.nanmax(n), 50)
            ax.plot(xs, fit["c"][0] * xs ** -fit["gamma"][0], "-", color=line.get_color())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("-log RBP@k")
    ax.legend(fontsize="small")
    return ax
