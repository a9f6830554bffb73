"""Paired blocked bootstrap of a pair's fusion gains and optima, and K-fold choice of w (issue 7.1).

Resampling units (one rule for every printed interval, `choose_units`, DESIGN section 3): the fixed
4,096-position reduction blocks when a pair has at least 100 of them (or no document ids), else documents
(doc_id). A pair with fewer than MIN_UNITS = 20 units is not bootstrapped: a percentile interval from a handful
of units is too narrow to be called 95%, so the tables say why instead. Every frame and table that prints an
interval prints ci_unit and ci_n_units beside it. One
resample draws n_units units with replacement (seeded: numpy default_rng(seed)); the draw is summarised
by c_r[u] = how often unit u was drawn, so every statistic that is a ratio of sums is evaluated as
c_r @ (per-unit sums) and 1,000 resamples of millions of positions cost one pass over the data plus small
matrix products. The pair is kept intact in each unit (paired bootstrap: A alone and the fusion see the
same positions).

Statistics (resample r, totals T_r = c_r @ unit sums):
  fixed weight w:   dPPL = exp(L_r(w)/n_r) - exp(L_r(1)/n_r),   dBPC = (L_r(w) - L_r(1)) / ln 2 / chars_r,
                    dACC = (right_lo_r(w) - right_r(1)) / n_r     (certified fused correctness; A exact)
  re-optimised:     the same at the resample's own optimum (alpha_nll for PPL/BPC, the ACC-optimal w for ACC),
                    so in-sample intervals include the selection of w.
  alpha_nll, D_nll: L_r(u), u = log beta, from per-unit L, L', L'' on a grid in u, joined by cubic Hermite
                    interpolation (value and slope match at every node); the root of dL_r/du and of
                    L_r(u) - L_r(1) left of it. w* = 1 (alpha = inf) iff L_r'(1) = sum c (b/a - 1) <= 0 and
                    w* = 0 iff L_r'(0) = sum c (1 - a/b) >= 0: both exact. Roots outside the grid are
                    solved exactly on the resample's weighted positions.
  alpha_acc, D_acc: exact: acc_lo_r(w) is a weighted sort-and-sweep of the certified intervals (sorted once),
                    canonical choices as in `analysis.optimum` (last maximising run, geometric midpoint in beta).
Intervals are percentile intervals (inverted-CDF quantiles, so alpha = inf is a legitimate endpoint).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np
import polars as pl
from numba import njit, prange

from . import kernels
from .data import PairData
from .errors import AnalysisError
from .metrics import LN2
from .optimum import U_MAX, WInterval, acc_optimum, nll_optimum, representative

log = logging.getLogger(__name__)


class BootstrapError(AnalysisError, ValueError):
    """Bad bootstrap settings (too few resamples or units, unknown unit kind, a level outside (0, 1))."""


# ---------------------------------------------------------------------------------------------- units
@dataclass(frozen=True)
class Units:
    """Resampling units: positions of unit u are order[starts[u]:starts[u + 1]]."""

    kind: str  # "block" or "doc" ("example" / "sequence": documents of classification / masked stores)
    unit: np.ndarray  # (N,) int64 unit index of each position
    n_units: int
    order: np.ndarray  # positions sorted by unit (stable)
    starts: np.ndarray  # (n_units + 1,)

    def sums(self, x: np.ndarray) -> np.ndarray:
        """Per-unit sums of a per-position array (N,) or (N, m), float64."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 1:
            return np.bincount(self.unit, weights=x, minlength=self.n_units)
        return np.stack([np.bincount(self.unit, weights=x[:, j], minlength=self.n_units)
                         for j in range(x.shape[1])], axis=1)


def make_units(n: int, by: str = "block", doc_id: np.ndarray | None = None) -> Units:
    """Units over n positions: fixed blocks of `kernels.BLOCK` positions, or one unit per distinct doc_id."""
    if by == "block":
        unit = np.arange(n, dtype=np.int64) // kernels.BLOCK
    elif by == "doc":
        if doc_id is None or len(doc_id) != n:
            raise BootstrapError(f"by='doc' needs a doc_id per position ({n}); got "
                                 f"{None if doc_id is None else len(doc_id)}. Use by='block' for stores without "
                                 "document ids")
        _, unit = np.unique(np.asarray(doc_id), return_inverse=True)
        unit = unit.astype(np.int64).ravel()
    else:
        raise BootstrapError(f"unknown resampling unit {by!r}; use 'block' (4,096 positions) or 'doc'")
    n_units = int(unit.max()) + 1 if n else 0
    if n_units < 2:
        hint = "more data" if by == "block" else "by='block' or more data"
        raise BootstrapError(f"only {n_units} resampling unit(s) of kind {by!r} over {n} positions; a bootstrap "
                             f"needs at least 2 (use {hint})")
    order = np.argsort(unit, kind="stable")
    starts = np.searchsorted(unit[order], np.arange(n_units + 1))
    return Units(by, unit, n_units, order, starts.astype(np.int64))


AUTO_MIN_BLOCKS = 100  # 'auto' units: blocks when at least this many, else documents (DESIGN section 3)
MIN_UNITS = 20  # fewer units: no interval (a percentile interval from a handful of units is too narrow)
UNIT_NAMES = {"block": "4,096-position blocks", "doc": "documents"}
# What a document (doc_id) is in stores without text: an example of a classifier, a sequence of a masked model.
DOC_UNITS = {"classification": "example", "masked": "sequence"}
UNIT_LABELS = {**UNIT_NAMES, "example": "examples", "sequence": "sequences"}


def n_blocks(n: int) -> int:
    """The number of 4,096-position blocks over n positions (the last one may be partial)."""
    return -(-n // kernels.BLOCK)


def unit_kind(n: int, has_doc_id: bool, by: str = "auto") -> str:
    """The resampling unit of a pair of n positions: ``by`` when it names one, else ('auto') the fixed
    4,096-position blocks when there are at least AUTO_MIN_BLOCKS of them or no document ids, else documents."""
    if by == "auto":
        return "block" if n_blocks(n) >= AUTO_MIN_BLOCKS or not has_doc_id else "doc"
    if by not in UNIT_NAMES:
        raise BootstrapError(f"unknown resampling unit {by!r}; use 'auto' (blocks when >= {AUTO_MIN_BLOCKS}, else "
                             "documents), 'block' (4,096 positions) or 'doc'")
    return by


def unit_label(kind: str, n_units: int) -> str:
    """'300 documents', '120 4,096-position blocks': what an interval was resampled over."""
    name = UNIT_LABELS.get(kind, kind)
    return f"{n_units:,} {name[:-1] if n_units == 1 and name.endswith('s') else name}"


def choose_units(n: int, doc_id: np.ndarray | None = None, by: str = "auto", min_units: int = MIN_UNITS,
                 store_kind: str | None = None) -> Units:
    """The resampling units of every printed interval (sweep, law, `bootstrap`): `unit_kind`'s choice, refused
    (BootstrapError naming the unit and count) when there are fewer than ``min_units`` of them. For classification
    and masked stores (``store_kind``) a document is an example / a sequence, and the units are named so."""
    kind = unit_kind(n, doc_id is not None, by)
    count = n_blocks(n) if kind == "block" or doc_id is None else len(np.unique(np.asarray(doc_id)))
    name = DOC_UNITS.get(store_kind, kind) if kind == "doc" else kind
    need = max(min_units, 2)
    if count < need:
        raise BootstrapError(f"too few resampling units: {unit_label(name, count)} over {n:,} positions; a "
                             f"bootstrap interval needs at least {need} (not bootstrapped: more data or a "
                             "held-out split is the check here)")
    units = make_units(n, kind, doc_id)
    return units if name == kind else replace(units, kind=name)


def draw_counts(n_units: int, n_resamples: int, seed: int) -> np.ndarray:
    """(R, n_units) int64: how often each unit is drawn in each resample (n_units draws with replacement)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_units, size=(n_resamples, n_units))
    flat = (idx + np.arange(n_resamples)[:, None] * n_units).ravel()
    return np.bincount(flat, minlength=n_resamples * n_units).reshape(n_resamples, n_units).astype(np.int64)


def percentile_interval(x: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval: the ceil(R (1 - level)/2)-th and ceil(R (1 + level)/2)-th smallest of the R
    non-NaN values (inverted CDF, no interpolation, so inf is kept); e.g. the 25th and 975th of 1,000."""
    x = np.sort(np.asarray(x, dtype=np.float64)[~np.isnan(x)])
    r = x.size
    if r == 0:
        return math.nan, math.nan
    k = [max(1, math.ceil(r * q - 1e-9)) for q in ((1 - level) / 2, (1 + level) / 2)]
    return float(x[k[0] - 1]), float(x[min(k[1], r) - 1])


# ---------------------------------------------------------------------------------------------- NLL grid
@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def unit_nll_grid(a, b, order, starts, w, v, out_f, out_g, out_h):
    """Per unit and grid node j: out_f = sum -log x, out_g = sum -(a - b)/x, out_h = sum ((a - b)/x)^2,
    x = w_j a + v_j b (v_j = 1 - w_j given exactly): L, L' and L'' in w of the unit's positions.

    As in `kernels.nll_blocks`, GROUP positions' x are multiplied before one log (log does not vectorise
    here) unless one of their a, b is below SAFE_MIN.
    """
    n_units = starts.shape[0] - 1
    nw = w.shape[0]
    group = kernels.GROUP
    for u in prange(n_units):
        f = np.zeros(nw)
        g = np.zeros(nw)
        h = np.zeros(nw)
        prod = np.empty(nw)
        for p0 in range(starts[u], starts[u + 1], group):
            p1 = min(starts[u + 1], p0 + group)
            safe = True
            for p in range(p0, p1):
                s = order[p]
                if a[s] < kernels.SAFE_MIN or b[s] < kernels.SAFE_MIN:
                    safe = False
            for j in range(nw):
                prod[j] = 1.0
            for p in range(p0, p1):
                s = order[p]
                aa = a[s]
                bb = b[s]
                d = aa - bb
                for j in range(nw):
                    x = w[j] * aa + v[j] * bb
                    r = d / x
                    g[j] -= r
                    h[j] += r * r
                    if safe:
                        prod[j] *= x
                    else:
                        f[j] -= math.log(x)
            if safe:
                for j in range(nw):
                    f[j] -= math.log(prod[j])
        for j in range(nw):
            out_f[u, j] = f[j]
            out_g[u, j] = g[j]
            out_h[u, j] = h[j]


def _wv(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(w, 1 - w) for log beta = u, both to full relative precision (vectorised `optimum._wv`)."""
    e = np.exp(-np.abs(u))
    big = u >= 0
    w = np.where(big, 1.0 / (1.0 + e), e / (1.0 + e))
    v = np.where(big, e / (1.0 + e), 1.0 / (1.0 + e))
    return w, v


def u_grid(centres, span: float = 3.0, step: float = 0.05, coarse: float = 0.5, limit: float = 30.0) -> np.ndarray:
    """Nodes in u = log beta: every `coarse` over [-limit, limit], every `step` within `span` of each finite centre."""
    parts = [np.arange(-limit, limit + coarse / 2, coarse)]
    for c in centres:
        if math.isfinite(c):
            c = min(max(c, -limit), limit)
            parts.append(np.arange(c - span, c + span + step / 2, step))
    return np.unique(np.clip(np.concatenate(parts), -limit, limit))


def _hermite(u0, u1, f0, f1, d0, d1, t):
    """Cubic Hermite value and derivative (in u) at fraction t of [u0, u1]."""
    h = u1 - u0
    t2, t3 = t * t, t * t * t
    h00, h10, h01, h11 = 2 * t3 - 3 * t2 + 1, t3 - 2 * t2 + t, -2 * t3 + 3 * t2, t3 - t2
    val = h00 * f0 + h10 * h * d0 + h01 * f1 + h11 * h * d1
    dh00, dh10, dh01, dh11 = 6 * t2 - 6 * t, 3 * t2 - 4 * t + 1, -6 * t2 + 6 * t, 3 * t2 - 2 * t
    der = (dh00 * f0 + dh01 * f1) / h + dh10 * d0 + dh11 * d1
    return val, der


def _hermite_root(u, f, d, j, target, increasing: bool):
    """Root of the Hermite interpolant of (f, d) minus target on [u_j, u_j+1] (one per row), by bisection
    + Newton on t in [0, 1]. f, d: (R, G); j: (R,) node index with the sign change."""
    rows = np.arange(len(j))
    u0, u1 = u[j], u[j + 1]
    f0, f1, d0, d1 = f[rows, j] - target, f[rows, j + 1] - target, d[rows, j], d[rows, j + 1]
    lo, hi = np.zeros(len(j)), np.ones(len(j))
    t = np.full(len(j), 0.5)
    sign = 1.0 if increasing else -1.0
    for _ in range(60):
        val, der = _hermite(u0, u1, f0, f1, d0, d1, t)
        pos = sign * val > 0
        hi = np.where(pos, t, hi)
        lo = np.where(pos, lo, t)
        with np.errstate(divide="ignore", invalid="ignore"):
            nt = t - val / (der * (u1 - u0))
        t = np.where((nt > lo) & (nt < hi), nt, 0.5 * (lo + hi))
    return u0 + t * (u1 - u0)


# ---------------------------------------------------------------------------------------------- exact fallback
def _weighted_nll_root(a, b, pw, target_l1: float | None = None, u_hi: float = U_MAX) -> float:
    """Exact root in u of L'(u) (target_l1 None) or of L(u) - target_l1 left of u_hi, with position weights pw."""
    def fun(u):
        w, v = _wv(np.array([u]))
        w, v = float(w[0]), float(v[0])
        x = w * a + v * b
        g = float(np.sum(pw * -(a - b) / x))
        h = float(np.sum(pw * ((a - b) / x) ** 2))
        if target_l1 is None:
            return g * w * v, (v - w) * w * v * g + (w * v) ** 2 * h
        f = float(np.sum(pw * -np.log(x)))
        return -(f - target_l1), -g * w * v

    from .optimum import _solve

    return _solve(fun, 0.0 if target_l1 is None else u_hi - 1.0, -U_MAX, u_hi)


# ---------------------------------------------------------------------------------------------- ACC sweep
@njit(cache=True, nogil=True, parallel=True)
def acc_resample_sweep(counts, coords, ev_ptr_s, ev_unit_s, ev_ptr_e, ev_unit_e, base_u, at0_u, at1_u,
                       best_out, run_out, closed_out, wd_out, wd_closed_out, disc_out, at1_out):
    """Per resample r: the exact step function acc_lo_r(w) = sum_u counts[r, u] (#certified right of unit u at w)
    swept over pieces [w=0], (0, c_0), {c_0}, (c_0, c_1), ..., {c_m-1}, (c_m-1, 1), [w=1].

    Outputs: best count; the last maximising run as (w_lo, w_hi) with closedness; the lower end w_D of the
    connected part of {acc_lo >= acc_A} holding w = 1, its closedness, whether other parts exist; acc_A count.
    """
    n_res = counts.shape[0]
    m = coords.shape[0]
    n_units = counts.shape[1]
    for r in prange(n_res):
        c = counts[r]
        base = 0
        at0 = 0
        at1 = 0
        for u in range(n_units):
            base += c[u] * base_u[u]
            at0 += c[u] * at0_u[u]
            at1 += c[u] * at1_u[u]
        best = -1
        b_lo = 0.0
        b_hi = 0.0
        b_lc = True
        b_hc = True
        prev_best_piece = -10
        last_bad_left = 0.0
        last_bad_closed = True
        have_bad = False
        ok_seen = False
        disc = False
        npieces = 2 * m + 3
        gap = base
        for i in range(npieces):
            # piece i: 0 -> point 0; odd -> gap; even (2..2m) -> point coords[i/2 - 1]; last -> point 1
            if i == 0:
                cnt = at0
                left = 0.0
                right = 0.0
                lc = True
                hc = True
            elif i == npieces - 1:
                cnt = at1
                left = 1.0
                right = 1.0
                lc = True
                hc = True
            elif i % 2 == 1:
                k = (i - 1) // 2  # gap right of coords[k - 1]
                cnt = gap
                left = 0.0 if k == 0 else coords[k - 1]
                right = 1.0 if k == m else coords[k]
                lc = False
                hc = False
            else:
                k = i // 2 - 1
                n_s = 0
                for p in range(ev_ptr_s[k], ev_ptr_s[k + 1]):
                    n_s += c[ev_unit_s[p]]
                n_e = 0
                for p in range(ev_ptr_e[k], ev_ptr_e[k + 1]):
                    n_e += c[ev_unit_e[p]]
                cnt = gap - n_e
                gap = gap + n_s - n_e
                left = coords[k]
                right = coords[k]
                lc = True
                hc = True
            if cnt > best:
                best = cnt
                b_lo = left
                b_hi = right
                b_lc = lc
                b_hc = hc
                prev_best_piece = i
            elif cnt == best:
                if prev_best_piece == i - 1:
                    b_hi = right
                    b_hc = hc
                else:
                    b_lo = left
                    b_hi = right
                    b_lc = lc
                    b_hc = hc
                prev_best_piece = i
            if cnt < at1:
                have_bad = True
                disc = ok_seen
                last_bad_left = -1.0  # filled by the next piece
            else:
                ok_seen = True
                if have_bad and last_bad_left < 0.0:
                    last_bad_left = left
                    last_bad_closed = lc
        best_out[r] = best
        run_out[r, 0] = b_lo
        run_out[r, 1] = b_hi
        closed_out[r, 0] = b_lc
        closed_out[r, 1] = b_hc
        if have_bad:
            wd_out[r] = last_bad_left
            wd_closed_out[r] = last_bad_closed
        else:
            wd_out[r] = 0.0
            wd_closed_out[r] = True
        disc_out[r] = disc
        at1_out[r] = at1


def _acc_events(data: PairData, units: Units):
    """Sorted event structure of the certified intervals (as `optimum.acc_pieces`), with units."""
    lo_, hi_ = data.l1, data.u1
    valid = (lo_ < hi_) & (lo_ < 1.0) & (hi_ > 0.0)
    n_u = units.n_units
    base_u = np.bincount(units.unit, weights=(valid & (lo_ <= 0.0)), minlength=n_u).astype(np.int64)
    at0_u = np.bincount(units.unit, weights=(data.code == 1) | (data.code == 3), minlength=n_u).astype(np.int64)
    at1_u = np.bincount(units.unit, weights=(data.code >= 2), minlength=n_u).astype(np.int64)
    ms = valid & (lo_ > 0.0)
    me = valid & (hi_ < 1.0)
    coords = np.unique(np.concatenate([lo_[ms], hi_[me]]))

    def csr(x, unit):
        k = np.searchsorted(coords, x)
        o = np.argsort(k, kind="stable")
        ptr = np.searchsorted(k[o], np.arange(coords.size + 1))
        return ptr.astype(np.int64), unit[o].astype(np.int64)

    ps, us = csr(lo_[ms], units.unit[ms])
    pe, ue = csr(hi_[me], units.unit[me])
    return coords, ps, us, pe, ue, base_u, at0_u, at1_u


def _beta(w: float) -> float:
    return math.inf if w >= 1.0 else w / (1.0 - w)


# ---------------------------------------------------------------------------------------------- per-position values
def position_values(data: PairData, w: float) -> dict[str, np.ndarray]:
    """Per position at weight w: fused NLL, A's NLL, fused certified/possible right, A right (exact)."""
    with np.errstate(divide="ignore"):
        nll = -np.log(w * data.a + (1.0 - w) * data.b)
        nll_a = -np.log(data.a)
    right_a = data.code >= 2
    if w >= 1.0:
        lo = hi = right_a
    elif w <= 0.0:
        lo = hi = (data.code == 1) | (data.code == 3)
    else:
        lo = (data.l1 < w) & (w < data.u1)
        hi = (data.l2 < w) & (w < data.u2)
    return {"nll": nll, "nll_a": nll_a, "right_lo": lo, "right_hi": hi, "right_a": right_a}


def csum(counts: np.ndarray, x: np.ndarray) -> np.ndarray:
    """counts @ x for per-unit sums x that may hold +-inf (a unit drawn 0 times contributes nothing, not NaN)."""
    fin = np.isfinite(x)
    out = counts @ np.where(fin, x, 0.0)
    pos = counts @ (x == np.inf).astype(np.float64)
    neg = counts @ (x == -np.inf).astype(np.float64)
    return np.where(pos > 0, np.where(neg > 0, np.nan, np.inf), np.where(neg > 0, -np.inf, out))


def _fixed_stats(sums: dict, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Gains against A at a fixed weight from per-unit sums; counts (R, U) or a (U,) vector of ones."""
    t = {k: csum(counts, v) for k, v in sums.items()}
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        return {
            "dppl": np.exp(t["nll"] / t["n"]) - np.exp(t["nll_a"] / t["n"]),
            "dbpc": (t["nll"] - t["nll_a"]) / LN2 / t["chars"] if "chars" in t else np.full_like(t["n"], np.nan),
            "dbpb": (t["nll"] - t["nll_a"]) / LN2 / t["bytes"] if "bytes" in t else np.full_like(t["n"], np.nan),
            "dacc_lo": (t["right_lo"] - t["right_a"]) / t["n"],
            "dacc_hi": (t["right_hi"] - t["right_a"]) / t["n"],
        }


def _unit_sums_fixed(data: PairData, units: Units, w_nll: float, w_acc: float, vals=None) -> dict:
    pv_n = position_values(data, w_nll) if vals is None else vals[0]
    pv_a = position_values(data, w_acc) if vals is None else vals[1]
    text = {"chars": units.sums(data.n_chars), "bytes": units.sums(data.n_bytes)} if data.has_text else {}
    return {"nll": units.sums(pv_n["nll"]), "nll_a": units.sums(pv_n["nll_a"]), "n": units.sums(np.ones(data.n)),
            **text, "right_lo": units.sums(pv_a["right_lo"]), "right_hi": units.sums(pv_a["right_hi"]),
            "right_a": units.sums(pv_a["right_a"])}


# ---------------------------------------------------------------------------------------------- resampled optima
@dataclass
class ResampledOptima:
    """Per resample: alpha_nll, d_nll, alpha_acc, d_acc and the re-optimised gains against A."""

    alpha_nll: np.ndarray
    d_nll: np.ndarray
    alpha_acc: np.ndarray
    d_acc: np.ndarray
    dppl: np.ndarray
    dbpc: np.ndarray
    dbpb: np.ndarray
    dacc_lo: np.ndarray
    n_fallback: int  # NLL roots solved exactly because they fell outside the u grid


def resampled_optima(data: PairData, units: Units, counts: np.ndarray, *, centres=(), with_domain: bool = True,
                     step: float = 0.05, limit: float = 30.0, nll_ab=None) -> ResampledOptima:
    """Optima of every resample (see the module docstring for the method). ``nll_ab``: (-log a, -log b) per
    position when the caller has them more exactly than from a and b (scaled word segments: `analysis.words`)."""
    a, b = data.a, data.b
    R = counts.shape[0]
    n_r = counts @ units.sums(np.ones(data.n))
    no_text = np.full(R, np.nan)  # no BPC / BPB without text (classification, masked)
    chars_r = counts @ units.sums(data.n_chars) if data.has_text else no_text
    bytes_r = counts @ units.sums(data.n_bytes) if data.has_text else no_text
    with np.errstate(divide="ignore"):
        nll_a, nll_b = (-np.log(a), -np.log(b)) if nll_ab is None else nll_ab
        la_r = csum(counts, units.sums(nll_a))  # L(1)
        lb_r = csum(counts, units.sums(nll_b))  # L(0)
        g1_r = csum(counts, units.sums(b / a - 1.0))  # L'(1)
        g0_r = csum(counts, units.sums(1.0 - a / b))  # L'(0)
    u = u_grid(centres, step=step, limit=limit)
    w, v = _wv(u)
    nu = units.n_units
    F, G, H = (np.empty((nu, u.size)) for _ in range(3))
    unit_nll_grid(a, b, units.order, units.starts, w, v, F, G, H)
    Fr, Gw, Hw = counts @ F, counts @ G, counts @ H
    Gu = Gw * (w * v)  # dL/du
    Hu = (v - w) * w * v * Gw + (w * v) ** 2 * Hw  # d2L/du2
    interior = (g1_r > 0) & (g0_r < 0)
    u_star = np.where(g1_r > 0, np.where(g0_r < 0, np.nan, -np.inf), np.inf)
    n_fallback = 0
    pos_w = None
    # Root of dL/du: increasing in u.
    inside = interior & (Gu[:, 0] < 0) & (Gu[:, -1] > 0)
    if inside.any():
        rows = np.flatnonzero(inside)
        j = (Gu[rows] <= 0).sum(axis=1) - 1
        u_star[rows] = _hermite_root(u, Gu[rows], Hu[rows], j, 0.0, True)
    for r in np.flatnonzero(interior & ~inside):
        pos_w = counts[r][units.unit].astype(np.float64)
        u_star[r] = _weighted_nll_root(a, b, pos_w)
        n_fallback += 1
    # Fused NLL at the optimum.
    L_star = np.where(np.isposinf(u_star), la_r, np.where(np.isneginf(u_star), lb_r, np.nan))
    fin = np.flatnonzero(np.isfinite(u_star))
    on_grid = fin[(u_star[fin] > u[0]) & (u_star[fin] < u[-1])]
    if on_grid.size:
        j = np.searchsorted(u, u_star[on_grid]) - 1
        t = (u_star[on_grid] - u[j]) / (u[j + 1] - u[j])
        L_star[on_grid], _ = _hermite(u[j], u[j + 1], Fr[on_grid, j], Fr[on_grid, j + 1], Gu[on_grid, j],
                                      Gu[on_grid, j + 1], t)
    for r in np.setdiff1d(fin, on_grid):
        ww, vv = _wv(np.array([u_star[r]]))
        pos_w = counts[r][units.unit].astype(np.float64)
        L_star[r] = float(np.sum(pos_w * -np.log(ww[0] * a + vv[0] * b)))
    # D_nll: root of L(u) - L(1) left of u*, decreasing there.
    d_u = np.full(R, np.nan)
    if with_domain:
        d_u = np.where(np.isposinf(u_star), np.inf, d_u)
        d_u = np.where(np.isfinite(u_star) | np.isneginf(u_star), np.where(lb_r <= la_r, -np.inf, d_u), d_u)
        todo = np.flatnonzero(np.isnan(d_u))
        if todo.size:
            E = Fr[todo] - la_r[todo, None]
            left = u[None, :] < u_star[todo, None]
            n_left = left.sum(axis=1)
            pos = (E > 0) & left
            last_pos = np.where(pos.any(axis=1), u.size - 1 - np.argmax(pos[:, ::-1], axis=1), -1)
            rows = np.arange(todo.size)
            ok = (n_left >= 2) & (E[:, 0] > 0) & (E[rows, np.maximum(n_left - 1, 0)] <= 0) & (last_pos >= 0)
            if ok.any():
                sel = np.flatnonzero(ok)
                d_u[todo[sel]] = _hermite_root(u, E[sel], Gu[todo[sel]], last_pos[sel], 0.0, False)
            for r in todo[~ok]:
                pos_w = counts[r][units.unit].astype(np.float64)
                d_u[r] = _weighted_nll_root(a, b, pos_w, target_l1=la_r[r], u_hi=u_star[r])
                n_fallback += 1
    with np.errstate(over="ignore"):
        alpha_nll = np.exp(np.clip(u_star, -U_MAX, U_MAX))
        alpha_nll = np.where(u_star >= U_MAX, np.inf, np.where(u_star <= -U_MAX, 0.0, alpha_nll))
        d_nll = np.where(d_u >= U_MAX, np.inf, np.where(d_u <= -U_MAX, 0.0, np.exp(np.clip(d_u, -U_MAX, U_MAX))))
    # ACC, exact.
    ev = _acc_events(data, units)
    best = np.empty(R, np.int64)
    run = np.empty((R, 2))
    closed = np.empty((R, 2), np.bool_)
    wd = np.empty(R)
    wd_closed = np.empty(R, np.bool_)
    disc = np.empty(R, np.bool_)
    at1 = np.empty(R, np.int64)
    acc_resample_sweep(np.ascontiguousarray(counts), *ev, best, run, closed, wd, wd_closed, disc, at1)
    w_acc = np.array([representative(WInterval(run[r, 0], run[r, 1], bool(closed[r, 0]), bool(closed[r, 1])))
                      for r in range(R)])
    alpha_acc = np.array([_beta(x) for x in w_acc])
    d_acc = np.array([_beta(x) for x in wd])
    with np.errstate(over="ignore", invalid="ignore"):
        return ResampledOptima(
            alpha_nll=alpha_nll, d_nll=d_nll, alpha_acc=alpha_acc, d_acc=d_acc,
            dppl=np.exp(L_star / n_r) - np.exp(la_r / n_r), dbpc=(L_star - la_r) / LN2 / chars_r,
            dbpb=(L_star - la_r) / LN2 / bytes_r, dacc_lo=(best - at1) / n_r, n_fallback=n_fallback)


# ---------------------------------------------------------------------------------------------- K-fold
@dataclass(frozen=True)
class KFold:
    """K-fold choice of w: per fold the weights chosen on the other folds; out-of-fold per-position values."""

    folds: pl.DataFrame  # fold, n_positions, w_nll, alpha_nll, w_acc, alpha_acc
    values_nll: dict  # position_values at each position's out-of-fold w_nll
    values_acc: dict  # ... at its out-of-fold w_acc
    by: str  # "doc" or "block"


def _subset(data: PairData, m: np.ndarray) -> PairData:
    return PairData(*(None if getattr(data, f) is None else np.ascontiguousarray(getattr(data, f)[m]) for f in
                      ("a", "b", "code", "l1", "u1", "l2", "u2", "n_chars", "n_bytes")))


def kfold_choice(data: PairData, k: int = 5, doc_id: np.ndarray | None = None) -> KFold:
    """Choose w on K - 1 folds and apply it to the held-out fold, for every fold.

    Folds are K contiguous groups of documents (doc_id, in order of first appearance) or, with fewer than K
    documents, of 4,096-position blocks. The out-of-fold values give a cross-fitted estimate of the gain.
    """
    if k < 2:
        raise BootstrapError(f"K-fold needs k >= 2; got k={k}")
    by = "doc"
    if doc_id is not None:
        _, first, group = np.unique(np.asarray(doc_id), return_index=True, return_inverse=True)
        rank = np.argsort(np.argsort(first))  # groups in order of first appearance
        group = rank[group.ravel()]
    if doc_id is None or group.max() + 1 < k:
        by = "block"
        group = np.arange(data.n) // kernels.BLOCK
        log.info("K-fold over 4,096-position blocks (fewer than %d documents)", k)
    n_groups = int(group.max()) + 1
    if n_groups < k:
        raise BootstrapError(f"K-fold with k={k} needs at least {k} documents or blocks; found {n_groups}")
    fold = (group * k) // n_groups
    vals_n = {key: np.empty(data.n, dtype=bool if key.startswith("right") else np.float64)
              for key in ("nll", "nll_a", "right_lo", "right_hi", "right_a")}
    vals_a = {key: v.copy() for key, v in vals_n.items()}
    rows = []
    for f in range(k):
        test = fold == f
        train = _subset(data, ~test)
        wn = nll_optimum(train, with_domain=False).w
        wa = acc_optimum(train).w
        sub = _subset(data, test)
        for vals, w in ((vals_n, wn), (vals_a, wa)):
            for key, x in position_values(sub, w).items():
                vals[key][test] = x
        rows.append({"fold": f, "n_positions": int(test.sum()), "w_nll": wn, "alpha_nll": _beta(wn),
                     "w_acc": wa, "alpha_acc": _beta(wa)})
    return KFold(pl.DataFrame(rows), vals_n, vals_a, by)


# ---------------------------------------------------------------------------------------------- API
GAINS = ("dppl", "dbpc", "dbpb", "dacc_lo")


def _rows(scope, stats_full: dict, stats_boot: dict, level: float) -> list[dict]:
    out = []
    for name, est in stats_full.items():
        x = np.asarray(stats_boot[name], dtype=np.float64)
        lo, hi = percentile_interval(x, level)
        fin = x[np.isfinite(x)]
        out.append({"statistic": name, "scope": scope, "estimate": float(est), "ci_lo": lo, "ci_hi": hi,
                    "se": float(np.std(fin, ddof=1)) if fin.size > 1 else math.nan,
                    "n_inf": int(np.isposinf(x).sum()), "n_zero": int((x == 0).sum()), "n_nan": int(np.isnan(x).sum())})
    return out


def bootstrap(pair, *, n_resamples: int = 1000, seed: int = 0, by: str = "auto", level: float = 0.95,
              heldout_w: tuple[float, float] | None = None, kfold: int | None = None,
              data: PairData | None = None, doc_id: np.ndarray | None = None,
              min_units: int = MIN_UNITS) -> pl.DataFrame:
    """Bootstrap confidence intervals of a pair's gains against the primary alone and of alpha and D.

    Rows (statistic x scope): alpha_nll, d_nll, alpha_acc, d_acc and the gains dppl, dbpc, dbpb, dacc_lo
    (fused minus A alone; negative dPPL/dBPC and positive dACC are improvements; no dbpc / dbpb rows for stores
    without text: classification, masked) for scope "in-sample"
    (re-optimised on every resample), "held-out" (at ``heldout_w = (w_nll, w_acc)`` chosen elsewhere) and
    "k-fold" (``kfold=K``: weights chosen on the other folds, cross-fitted). Columns: estimate (full
    sample), ci_lo, ci_hi (percentile, ``level``), se (over finite resamples), n_inf / n_zero / n_nan,
    ci_unit and ci_n_units (what was resampled), n_resamples, seed, level.
    ``pair`` is an `analysis.Pair` (or None with ``data=`` a PairData and optional ``doc_id``). Units follow
    `choose_units` (``by="auto"``: the rule the sweep and law CLIs use); fewer than ``min_units`` is a
    BootstrapError.
    """
    if n_resamples < 2:
        raise BootstrapError(f"n_resamples={n_resamples}; use at least 1000 for 95% intervals")
    if not 0.0 < level < 1.0:
        raise BootstrapError(f"level={level} must lie in (0, 1), e.g. 0.95")
    if data is None:
        data = pair.data
    if doc_id is None and pair is not None and _has(pair.primary, "doc_id") and (
            kfold or unit_kind(data.n, True, by) == "doc"):
        doc_id = pair.primary.read(["doc_id"])["doc_id"]
    store_kind = getattr(getattr(pair, "primary", None), "kind", None)  # names the documents: examples, sequences
    units = choose_units(data.n, doc_id, by, min_units, store_kind=store_kind)
    gains = GAINS if data.has_text else tuple(g for g in GAINS if g not in ("dbpc", "dbpb"))
    counts = draw_counts(units.n_units, n_resamples, seed)
    ones = np.ones(units.n_units)
    nll_opt = nll_optimum(data)
    acc_opt = acc_optimum(data)
    full_fixed = _fixed_stats(_unit_sums_fixed(data, units, nll_opt.w, acc_opt.w), ones)
    ro = resampled_optima(data, units, counts, centres=(math.log(nll_opt.alpha) if nll_opt.alpha > 0 else -math.inf,
                                                        math.log(nll_opt.d) if nll_opt.d > 0 else -math.inf))
    full = {"alpha_nll": nll_opt.alpha, "d_nll": nll_opt.d, "alpha_acc": acc_opt.alpha, "d_acc": acc_opt.d,
            **{g: full_fixed[g] for g in gains}}
    boot = {"alpha_nll": ro.alpha_nll, "d_nll": ro.d_nll, "alpha_acc": ro.alpha_acc, "d_acc": ro.d_acc,
            **{g: getattr(ro, g) for g in gains}}
    rows = _rows("in-sample", full, boot, level)
    if heldout_w is not None:
        sums = _unit_sums_fixed(data, units, heldout_w[0], heldout_w[1])
        f, b = _fixed_stats(sums, ones), _fixed_stats(sums, counts)
        rows += _rows("held-out", {g: f[g] for g in gains}, b, level)
    if kfold:
        kf = kfold_choice(data, kfold, doc_id)
        sums = _unit_sums_fixed(data, units, 0, 0, vals=(kf.values_nll, kf.values_acc))
        f, b = _fixed_stats(sums, ones), _fixed_stats(sums, counts)
        rows += _rows("k-fold", {g: f[g] for g in gains}, b, level)
    log.info("bootstrap: %d resamples of %s (seed %d), %d exact NLL fallbacks", n_resamples,
             unit_label(units.kind, units.n_units), seed, ro.n_fallback)
    frame = pl.DataFrame(rows)
    return frame.with_columns(pl.lit(units.kind).alias("ci_unit"), pl.lit(units.n_units).alias("ci_n_units"),
                              pl.lit(n_resamples).alias("n_resamples"), pl.lit(seed).alias("seed"),
                              pl.lit(level).alias("level"))


def _has(store, name: str) -> bool:
    if hasattr(store, "has"):
        return bool(store.has(name))
    try:
        store.read([name], 0, 1)
        return True
    except Exception:  # noqa: BLE001 (any reader error means the array is absent)
        return False


def table_columns(frame: pl.DataFrame) -> dict:
    """Flatten a `bootstrap` frame into one row of columns for a pairs / points table:
    ``<scope>_<statistic>_ci_lo`` / ``_ci_hi`` (scope: insample, heldout, kfold), with ci_unit and ci_n_units."""
    out = {"ci_unit": frame["ci_unit"][0], "ci_n_units": int(frame["ci_n_units"][0])} if frame.height else {}
    for row in frame.iter_rows(named=True):
        scope = row["scope"].replace("-", "")
        out[f"{scope}_{row['statistic']}_ci_lo"] = row["ci_lo"]
        out[f"{scope}_{row['statistic']}_ci_hi"] = row["ci_hi"]
    return out


def plot_intervals(frame: pl.DataFrame, statistic: str = "dppl", ax=None):
    """Point estimates and bootstrap intervals of one statistic, one row per (pair, dataset, split, scope),
    each row labelled with all four and the units resampled. Only draws."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    sub = frame.filter(pl.col("statistic") == statistic)
    labels = []
    for row in sub.iter_rows(named=True):
        pair = " + ".join(str(row[c]) for c in ("primary", "secondary") if row.get(c) is not None)
        where = "/".join(str(row[c]) for c in ("dataset", "split") if row.get(c) is not None)
        units = f"{row['ci_n_units']} {row['ci_unit']}s" if row.get("ci_n_units") is not None else ""
        labels.append(", ".join(x for x in (pair, where, row.get("scope"), units) if x))
    y = np.arange(sub.height)
    est = sub["estimate"].to_numpy()
    ax.errorbar(est, y, xerr=[est - sub["ci_lo"].to_numpy(), sub["ci_hi"].to_numpy() - est], fmt="o", capsize=3)
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()  # first row on top, as in the frame
    level = f"{sub['level'][0]:.0%} " if "level" in sub.columns and sub.height else ""
    ax.set_xlabel(f"{statistic} (fused minus primary alone)")
    ax.set_title(f"{statistic}: estimate and {level}bootstrap interval")
    return ax


def sweep_columns(pair, *, heldout_w: tuple[float, float] | None = None, n_resamples: int = 1000, seed: int = 0,
                  by: str = "auto", level: float = 0.95, kfold: int = 5) -> dict:
    """The interval columns a pairs table gains (`table_columns`), for one pair: held-out intervals when
    ``heldout_w`` is given, else K-fold (``kfold`` > 0). Units follow `choose_units` (the one rule). A pair with
    too few units gets ``bootstrap_note`` with the reason (unit and count) instead."""
    try:
        frame = bootstrap(pair, n_resamples=n_resamples, seed=seed, by=by, level=level, heldout_w=heldout_w,
                          kfold=None if heldout_w is not None or not kfold else kfold)
    except BootstrapError as e:
        log.warning("bootstrap of %s: %s", pair, e)
        return {"bootstrap_note": str(e)}
    return {**table_columns(frame), "bootstrap_resamples": n_resamples, "bootstrap_seed": seed}
