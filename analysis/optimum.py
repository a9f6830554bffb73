"""Exact optima and improvement domains (DESIGN.md section 3).

NLL: L(w) = -sum_s log(w a_s + (1 - w) b_s) is convex in w, with L'(w) = -sum (a - b)/x and
L''(w) = sum (a - b)^2 / x^2. w* < 1 iff L'(1) = sum b/a - N > 0 and w* > 0 iff L'(0) = N - sum a/b < 0.
The root of L' is found by safeguarded Newton in u = log beta = log(w / (1 - w)), carrying w and
v = 1 - w separately so that precision holds as w* -> 1; alpha_nll = exp(u*). The improvement domain
{w : L(w) <= L(1)} = [w_D, 1] has w_D the root of E(w) = L(w) - L(1) left of w*, found the same way down to
w = 2^-1074 (D = 0 below it), with E summed term by term as -sum log(x / a), each term to its own relative
precision (`kernels_optimum`): the difference of the two sums would cancel when the gain is far below the
rounding of L. Identical models (a = b everywhere) make L flat: D = 0.

ACC: position s is certified right on the open interval (L1_s, U1_s) of w (and, exactly, at w = 0 / 1
when B / A alone is right). acc_lo(w) is a step function; sorting all interval ends and sweeping gives
its value on every open gap between consecutive ends and at every end itself; its maximisers are
runs of these pieces. `interval_pieces` does the same for any set of open intervals (task items: one or more per
item, `analysis.tasks`), and `pieces_optimum` applies the canonical choices to any such pieces.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import kernels, kernels_optimum
from .data import PairData
from .errors import DegenerateObjectiveError
from .metrics import nll_sums


def _wv(u: float) -> tuple[float, float]:
    """(w, 1 - w) for log beta = u, both to full relative precision."""
    if u >= 0:
        e = math.exp(-u)
        return 1.0 / (1.0 + e), e / (1.0 + e)
    e = math.exp(u)
    return e / (1.0 + e), 1.0 / (1.0 + e)


def _derivs(data: PairData, w: float, v: float, with_value: bool) -> tuple[float, float, float]:
    """(L, L', L'') at w (L = nan when not asked for)."""
    nblk = (data.n + kernels.BLOCK - 1) // kernels.BLOCK
    if with_value:
        out = np.empty((nblk, 3))
        kernels.nll_derivatives(data.a, data.b, w, v, out)
        f, g, h = kernels.reduce_blocks(out)
        return float(f), float(g), float(h)
    out = np.empty((nblk, 2))
    kernels.nll_gradient(data.a, data.b, w, v, out)
    g, h = kernels.reduce_blocks(out)
    return math.nan, float(g), float(h)


U_MAX = 700.0  # |log beta| beyond this is beta = 0 / inf for every purpose (exp overflows near 709)
U_MIN_D = math.log(2.0**-1074)  # log of the least positive float64: a domain end below it is D = 0, correctly rounded


def _solve(fun, u0: float, lo: float, hi: float, tol: float = 1e-13, max_iter: int = 200) -> float:
    """Root of an increasing function of u in (lo, hi) by safeguarded Newton; fun(u) -> (value, d/du)."""
    u = min(max(u0, lo), hi)
    for _ in range(max_iter):
        val, der = fun(u)
        if val == 0.0:
            return u
        if val > 0:
            hi = u
        else:
            lo = u
        step = -val / der if der > 0 and math.isfinite(der) else math.nan
        nxt = u + step
        if not (lo < nxt < hi) or not math.isfinite(nxt):
            # Out of the bracket: a bounded step toward the root while the bracket is wide, else bisect.
            nxt = u - 4.0 if val > 0 else u + 4.0
            if hi - lo <= 8.0 or not lo < nxt < hi:
                nxt = 0.5 * (lo + hi)
        if abs(nxt - u) <= tol * max(1.0, abs(u)) or (hi - lo) <= tol * max(1.0, abs(u)):
            return nxt
        u = nxt
    return u


@dataclass(frozen=True)
class NllOptimum:
    w: float  # w* (1.0 when A alone is best, or when the NLL does not depend on w)
    alpha: float  # beta* = w* / (1 - w*); inf when w* = 1
    w_domain: float  # w_D: L(w) <= L(1) exactly on [w_D, 1]
    d: float  # D = w_D / (1 - w_D)
    slope_at_1: float  # L'(1) = sum b/a - N (> 0 iff fusion helps)
    nll: float = math.nan  # L(w*), the sweep's own sum (`metrics.nll_sums`) at w*; nan without the domain
    gain: float = math.nan  # L(1) - L(w*) >= 0, summed without cancellation (-E(w*)); nan without the domain


def _excess(data: PairData, w: float, v: float) -> tuple[float, float]:
    """(E(w), L'(w)) with E(w) = L(w) - L(1) summed term by term (`kernels_optimum.nll_excess`); a > 0."""
    nblk = (data.n + kernels.BLOCK - 1) // kernels.BLOCK
    out = np.empty((nblk, 2))
    kernels_optimum.nll_excess(data.a, data.b, w, v, out)
    e, g = kernels.reduce_blocks(out)
    return float(e), float(g)


@dataclass(frozen=True)
class NllProblem:
    """What the exact NLL optimum needs of a pair's units (token positions, or word segments: `analysis.words`),
    L(w) = -sum_s log(w pA_s + (1 - w) pB_s), each sum over fixed blocks in order."""

    slope: Callable[[float, float], tuple[float, float]]  # (w, 1 - w) -> (L'(w), L''(w))
    excess: Callable[[float, float], tuple[float, float]]  # (w, 1 - w) -> (E(w) = L(w) - L(1) term by term, L'(w))
    value: Callable[[float], float]  # w -> L(w), the sweep's own sum
    flat: bool  # pA = pB for every unit: L does not depend on w
    a_zero: bool  # pA = 0 for some unit: L(1) = inf


def nll_optimum(data: PairData, with_domain: bool = True) -> NllOptimum:
    """Exact minimiser of the fused NLL over w in [0, 1], and the NLL improvement domain (`solve_nll`)."""
    if np.any((data.a == 0.0) & (data.b == 0.0)):
        s = int(np.flatnonzero((data.a == 0.0) & (data.b == 0.0))[0])
        raise DegenerateObjectiveError(
            f"position {s} has probability 0 under both models, so the fused NLL is infinite for every weight; "
            "check the stores' logit widths (n_classes) and targets")
    return solve_nll(NllProblem(
        slope=lambda w, v: _derivs(data, w, v, False)[1:], excess=lambda w, v: _excess(data, w, v),
        value=lambda w: float(nll_sums(data, np.array([w]))[0]), flat=bool(np.array_equal(data.a, data.b)),
        a_zero=bool(np.any(data.a == 0.0))), with_domain)


def solve_nll(p: NllProblem, with_domain: bool = True) -> NllOptimum:
    """Exact minimiser of a convex fused NLL over w in [0, 1], and its improvement domain.

    When the two models give every unit the same probability the NLL does not depend on w: w* = 1 (A alone, by
    convention: fusion does not help) and the domain is all of [0, 1], so D = 0. Otherwise L is strictly convex
    and the domain is [w_D, 1] with w_D = 1 (D = inf) exactly when L'(1) <= 0.
    """
    flat = p.flat
    g1, _ = p.slope(1.0, 0.0)
    g0, _ = p.slope(0.0, 1.0)
    if flat or not g1 > 0:
        w, u = 1.0, math.inf
    elif not g0 < 0:
        w, u = 0.0, -math.inf
    else:
        def grad(u):
            w, v = _wv(u)
            g, h = p.slope(w, v)
            return g, h * w * v  # dL'/du = L'' dw/du, dw/du = w v

        u = _solve(grad, 0.0, -U_MAX, U_MAX)
        w, _ = _wv(u)
    alpha = math.exp(u) if math.isfinite(u) and u < U_MAX else (math.inf if u > 0 else 0.0)
    if not with_domain:
        return NllOptimum(w, alpha, math.nan, math.nan, g1)
    nll = p.value(w)
    if w == 1.0:  # flat: L(w) = L(1) everywhere; else strictly convex, decreasing up to w = 1
        return NllOptimum(w, alpha, 0.0 if flat else 1.0, 0.0 if flat else math.inf, g1, nll, 0.0)
    if p.a_zero:  # L(1) = inf: every w < 1 improves on A alone
        return NllOptimum(w, alpha, 0.0, 0.0, g1, nll, math.inf)
    v_star = _wv(u)[1] if math.isfinite(u) else 1.0
    gain = -p.excess(w, v_star)[0]
    if w == 0.0 or p.excess(0.0, 1.0)[0] <= 0.0:  # E(0) <= 0: convexity puts all of [0, 1] in the domain
        return NllOptimum(w, alpha, 0.0, 0.0, g1, nll, gain)

    def excess(u):  # E(w) decreases left of u*: negate it to make it increasing
        w_, v_ = _wv(u)
        e, g = p.excess(w_, v_)
        return -e, -g * w_ * v_

    if excess(U_MIN_D)[0] >= 0.0:  # E <= 0 already at w = 2^-1074: the root is below every positive float64
        return NllOptimum(w, alpha, 0.0, 0.0, g1, nll, gain)
    ud = _solve(excess, u - 1.0, U_MIN_D, u)
    wd, _ = _wv(ud)
    return NllOptimum(w, alpha, wd, math.exp(ud) if ud > U_MIN_D else 0.0, g1, nll, gain)


# ---------------------------------------------------------------------------------------------- ACC
@dataclass(frozen=True)
class AccPieces:
    """acc_lo along w as alternating pieces: [w=0], gap, end, gap, ..., end, gap, [w=1].

    ``left[i] < w < right[i]`` for gaps, w == left[i] == right[i] for points; ``count[i]`` certified-right
    positions on the piece.
    """

    left: np.ndarray
    right: np.ndarray
    is_point: np.ndarray
    count: np.ndarray


def acc_pieces(data: PairData, lo_bound: bool = True) -> AccPieces:
    """Exact acc count (certified if lo_bound, else possible) on every piece of [0, 1]."""
    lo_, hi_ = (data.l1, data.u1) if lo_bound else (data.l2, data.u2)
    n_code = np.bincount(data.code, minlength=4)
    # B alone right at w = 0, A alone right at w = 1
    return interval_pieces(lo_, hi_, int(n_code[1] + n_code[3]), int(n_code[2] + n_code[3]))


def interval_pieces(lo_: np.ndarray, hi_: np.ndarray, at0: int, at1: int) -> AccPieces:
    """Pieces of a count that is the number of open intervals (lo_[j], hi_[j]) holding w, for 0 < w < 1, and
    ``at0`` / ``at1`` at w = 0 / 1 exactly. Intervals may be empty (lo >= hi) and reach past [0, 1]; several
    may belong to one unit (disjoint ones: a task item right on two separate ranges of w)."""
    valid = (lo_ < hi_) & (lo_ < 1.0) & (hi_ > 0.0)
    starts = lo_[valid & (lo_ > 0.0)]
    ends = hi_[valid & (hi_ < 1.0)]
    base = int(np.count_nonzero(valid & (lo_ <= 0.0)))
    coords = np.unique(np.concatenate([starts, ends]))
    starts.sort()
    ends.sort()
    n_start = np.searchsorted(starts, coords, "right") - np.searchsorted(starts, coords, "left")
    n_end = np.searchsorted(ends, coords, "right") - np.searchsorted(ends, coords, "left")
    gaps = base + np.concatenate([[0], np.cumsum(n_start - n_end)])  # gap i lies right of coords[i-1]
    points = gaps[:-1] - n_end  # at coords[i]: the gap to its left minus intervals ending there
    m = coords.size
    count = np.empty(2 * m + 3, np.int64)
    left = np.empty(2 * m + 3)
    right = np.empty(2 * m + 3)
    is_point = np.zeros(2 * m + 3, bool)
    edges = np.concatenate([[0.0], coords, [1.0]])
    count[0], left[0], right[0], is_point[0] = at0, 0.0, 0.0, True
    count[1:-1:2] = gaps
    left[1:-1:2] = edges[:-1]
    right[1:-1:2] = edges[1:]
    count[2:-2:2] = points
    left[2:-2:2] = right[2:-2:2] = coords
    is_point[2:-2:2] = True
    count[-1], left[-1], right[-1], is_point[-1] = at1, 1.0, 1.0, True
    return AccPieces(left, right, is_point, count)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[first, last] index pairs of the runs of True."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return []
    cut = np.flatnonzero(np.diff(idx) > 1)
    firsts = np.concatenate([[idx[0]], idx[cut + 1]])
    lasts = np.concatenate([idx[cut], [idx[-1]]])
    return list(zip(firsts.tolist(), lasts.tolist()))


@dataclass(frozen=True)
class WInterval:
    """An interval of weights with its closedness, and the same in beta."""

    w_lo: float
    w_hi: float
    lo_closed: bool
    hi_closed: bool

    @property
    def beta_lo(self) -> float:
        return _beta(self.w_lo)

    @property
    def beta_hi(self) -> float:
        return _beta(self.w_hi)


def _beta(w: float) -> float:
    return math.inf if w >= 1.0 else w / (1.0 - w)


def _interval(p: AccPieces, first: int, last: int) -> WInterval:
    return WInterval(float(p.left[first]), float(p.right[last]), bool(p.is_point[first]), bool(p.is_point[last]))


def representative(iv: WInterval) -> float:
    """The canonical weight of a maximising interval: its geometric midpoint in beta; where an end is
    beta = 0 or inf, the midpoint in w; the end itself if the interval holds w = 1 (A alone) or is {0}."""
    if iv.hi_closed and iv.w_hi == 1.0:
        return 1.0
    if iv.w_lo == iv.w_hi:
        return iv.w_lo
    if iv.w_lo > 0.0 and iv.w_hi < 1.0:
        beta = math.sqrt(_beta(iv.w_lo) * _beta(iv.w_hi))
        w = beta / (1.0 + beta)
        if iv.w_lo < w < iv.w_hi:
            return w
    return 0.5 * (iv.w_lo + iv.w_hi)


@dataclass(frozen=True)
class AccOptimum:
    w: float  # canonical maximiser (in the maximising interval nearest beta = inf)
    alpha: float
    n_right_lo: int  # max of the certified-right count
    intervals: tuple  # every maximising interval (WInterval), increasing w
    w_domain: float  # lower end in w of the connected part of {acc_lo >= ACC_A} holding w = 1
    domain_closed: bool
    d: float  # the same in beta
    disconnected: bool  # {acc_lo >= ACC_A} has parts below the one holding w = 1


def acc_optimum(data: PairData) -> AccOptimum:
    """Maximise acc_lo(w) exactly; improvement domain of ACC against A alone."""
    return pieces_optimum(acc_pieces(data, lo_bound=True))


def pieces_optimum(p: AccPieces) -> AccOptimum:
    """Maximisers of a piecewise-constant count (`acc_pieces`, `interval_pieces`), canonical choices of DESIGN
    section 3: every maximising interval, the representative weight of the one nearest beta = inf, and the
    domain {count >= count at w = 1} walked down from w = 1."""
    best = int(p.count.max())
    runs = _runs(p.count == best)
    intervals = tuple(_interval(p, f, last) for f, last in runs)
    w = representative(intervals[-1])
    # D_acc: walk down from w = 1 while acc_lo >= ACC_A.
    acc_a = int(p.count[-1])
    ok = p.count >= acc_a
    i = p.count.size - 1
    while i > 0 and ok[i - 1]:
        i -= 1
    w_d = float(p.left[i])
    closed = bool(p.is_point[i])
    disconnected = bool(ok[:i].any())
    d = _beta(w_d)
    return AccOptimum(w, _beta(w), best, intervals, w_d, closed, d, disconnected)
