"""The exact NLL optimum and improvement domain (analysis.optimum.nll_optimum) against mpmath.

The reference shares no code with the kernels: L(w) = -sum log(w a + (1 - w) b) and its derivative are summed in
60-digit arithmetic from the same float64 a, b, and the roots are found by bisection in w (120 halvings: 1e-36). The
tolerances follow the conditioning of the float64 sums: a root v* (or v_D) of a sum of terms r_s = (b - a)/a whose
total is small against sum |r_s| is only as precise as eps * sum |r| / |sum r| (rounding of r_s alone moves it that
much); each case asserts that this bound is below the tolerance used.
"""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis import Pair, kernels, kernels_optimum
from analysis.data import MemoryStore, PairData
from analysis.metrics import nll_sums
from analysis.optimum import nll_optimum
from pipeline.store.synthetic import arrays_from_logprobs

DPS = 60
EPS = 2.0**-53


def _data(a: np.ndarray, b: np.ndarray) -> PairData:
    n = a.size
    z = np.zeros(n)
    return PairData(np.ascontiguousarray(a, np.float64), np.ascontiguousarray(b, np.float64), np.zeros(n, np.int8),
                    z, z, z, z, np.ones(n, np.int64), np.ones(n, np.int64))


# ---------------------------------------------------------------------------------------------- reference
def _mp(x) -> list:
    return [mp.mpf(float(v)) for v in x]


def ref_excess(a, b, w) -> mp.mpf:
    """E(w) = L(w) - L(1) = -sum log((w a + (1 - w) b) / a), 60 digits; w a float (taken exactly)."""
    with mp.workdps(DPS):
        w = mp.mpf(float(w))
        return -mp.fsum(mp.log((w * x + (1 - w) * y) / x) for x, y in zip(_mp(a), _mp(b)))


def ref_slope(a, b, w) -> mp.mpf:
    """L'(w) = sum (b - a) / (w a + (1 - w) b) (a term over 0 is -inf: b = 0 at w = 0)."""
    return mp.fsum((y - x) / d if (d := w * x + (1 - w) * y) else -mp.inf for x, y in zip(a, b))


def ref_optimum(a, b) -> tuple[mp.mpf, mp.mpf]:
    """(w*, w_D) in 60 digits, by bisection: w* the root of L' (or an end), w_D the root of E left of w*."""
    with mp.workdps(DPS):
        am, bm = _mp(a), _mp(b)
        if ref_slope(am, bm, mp.mpf(1)) <= 0:
            return mp.mpf(1), (mp.mpf(0) if all(x == y for x, y in zip(am, bm)) else mp.mpf(1))
        if ref_slope(am, bm, mp.mpf(0)) >= 0:
            return mp.mpf(0), mp.mpf(0)
        lo, hi = mp.mpf(0), mp.mpf(1)
        for _ in range(120):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if ref_slope(am, bm, mid) > 0 else (mid, hi)
        ws = (lo + hi) / 2

        def e(w):
            return -mp.fsum(mp.log((w * x + (1 - w) * y) / x) for x, y in zip(am, bm))

        if e(mp.mpf(0)) <= 0:  # b = 0 somewhere: log 0 = -inf, E(0) = inf
            return ws, mp.mpf(0)
        lo, hi = mp.mpf(0), ws
        for _ in range(120):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if e(mid) > 0 else (lo, mid)
        return ws, (lo + hi) / 2


def _beta(w: mp.mpf) -> mp.mpf:
    return mp.inf if w == 1 else w / (1 - w)


def _condition(a, b) -> float:
    """eps * sum |r| / |sum r|, r = (b - a)/a: the relative precision a float64 root of these sums can have."""
    r = (b - a) / a
    return float(EPS * np.abs(r).sum() / max(abs(math.fsum(r)), 1e-300))


def _check_against_reference(a, b, rel=1e-6):
    opt = nll_optimum(_data(a, b))
    ws, wd = ref_optimum(a, b)
    with mp.workdps(DPS):
        for got, want in ((opt.alpha, _beta(ws)), (opt.d, _beta(wd))):
            if want in (0, mp.inf):
                assert got == float(want)
            else:
                assert abs(mp.mpf(got) - want) <= rel * want, (got, want)
        # the returned values are the values at the returned w (log space: nats)
        gain = -ref_excess(a, b, opt.w)
        assert abs(mp.mpf(opt.gain) - gain) <= rel * abs(gain) + 1e-300, (opt.gain, gain)
        l_ref = -mp.fsum(mp.log(opt.w * x + (1 - mp.mpf(opt.w)) * y) for x, y in zip(_mp(a), _mp(b)))
        # the sweep's sum multiplies up to 16 fused probabilities before one log: each product's rounding is a
        # relative error of eps, an absolute one of eps in the log, so the bound is absolute per position
        assert abs(mp.mpf(opt.nll) - l_ref) <= 1e-13 * abs(l_ref) + 4 * len(a) * EPS
    return opt, ws, wd


# ---------------------------------------------------------------------------------------------- named cases
def test_identical_models_give_d_nll_zero_not_inf():
    # review: NLL constant in w -> the domain {L(w) <= L(1)} is all of [0, 1]; d_nll was reported as inf
    rng = np.random.default_rng(0)
    a = rng.uniform(1e-6, 1.0, 300)
    opt = nll_optimum(_data(a, a.copy()))
    assert (opt.w, opt.alpha, opt.w_domain, opt.d, opt.gain) == (1.0, math.inf, 0.0, 0.0, 0.0)
    assert opt.nll == float(nll_sums(_data(a, a), np.array([1.0]))[0])
    # the same through a pair of two stores of one model
    lp = np.log(rng.dirichlet(np.ones(20), 50))
    t = rng.integers(0, 20, 50)
    arrays = arrays_from_logprobs(lp, t, 4, "float16")
    pair = Pair(MemoryStore(arrays, n_classes=20), MemoryStore(dict(arrays), n_classes=20), order="given")
    o = pair.optimum()
    assert o.d_nll == 0.0 and o.w_d_nll == 0.0 and o.alpha_nll == math.inf
    assert o.d_nll_domain == (0.0, math.inf)


def test_strictly_convex_with_no_gain_has_the_single_point_domain():
    # L'(1) <= 0 and a != b somewhere: L(w) > L(1) for every w < 1
    a = np.array([0.5, 0.25, 0.125])
    b = np.array([0.25, 0.25, 0.125])
    opt = nll_optimum(_data(a, b))
    assert (opt.w, opt.w_domain, opt.d, opt.gain) == (1.0, 1.0, math.inf, 0.0)


def _tiny_gain_pair(gain: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """b = a (1 + d) with sum d chosen so that the best fusion gains about `gain` nats over A alone:
    E(v) ~ -v sum d + v^2 sum d^2 / 2, whose minimum is -(sum d)^2 / (2 sum d^2)."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.01, 0.9, n)
    d = rng.standard_normal(n) * 1e-3
    d -= d.mean()
    d += math.sqrt(2.0 * gain * float(np.sum(d * d))) / n
    return a, a * (1.0 + d)


@pytest.mark.parametrize("gain", [3e-15, 1e-15, 1e-12])
def test_tiny_gains_give_d_to_1e6_relative(gain):
    # review: D from L(w) - L(1) cancelled: 15% relative error at a total gain of 3e-15 nats
    a, b = _tiny_gain_pair(gain, 200, 7)
    assert _condition(a, b) < 1e-7
    opt, ws, wd = _check_against_reference(a, b)
    assert 0.3 * gain < opt.gain < 3.0 * gain and 0.0 < opt.w_domain < opt.w < 1.0


def test_near_certain_models_that_disagree():
    # A sure and right at most positions, B sure and wrong at a few (and the reverse): probabilities 1 - 1e-12
    # next to 1e-10, and a target B gives probability 0 (E(0) = inf: the domain stops short of w = 0)
    a = np.array([1 - 1e-12, 1 - 3e-13, 1e-10, 1 - 1e-9, 0.5, 1 - 2**-52])
    b = np.array([1e-10, 1 - 1e-12, 1 - 1e-13, 0.0, 0.5, 1 - 2**-50])
    opt, ws, wd = _check_against_reference(a, b)
    assert 0.0 < opt.w_domain < opt.w < 1.0


def test_a_zero_somewhere_makes_every_fusion_an_improvement():
    a = np.array([0.0, 0.5, 0.9])
    b = np.array([1e-30, 0.5, 0.8])
    opt = nll_optimum(_data(a, b))
    assert opt.w < 1.0 and opt.d == 0.0 and opt.w_domain == 0.0 and opt.gain == math.inf


def test_w_star_near_one_alpha_huge():
    rng = np.random.default_rng(3)
    n = 60
    a = rng.uniform(0.05, 0.9, n)
    d = np.exp(rng.standard_normal(n) * 0.3) - 1.0
    d -= d.mean()
    d += 1e-8 * float(np.sum(d * d)) / n  # v* ~ sum d / sum d^2 = 1e-8: alpha ~ 1e8
    b = a * (1.0 + d)
    assert _condition(a, b) < 1e-7
    opt, ws, wd = _check_against_reference(a, b)
    assert opt.alpha > 1e7 and opt.d > 1e7


def test_w_star_near_zero():
    # the mirror image: B alone is almost best, A adds a sliver; E(0) < 0, so D = 0
    b, a = _tiny_gain_pair(1e-15, 200, 11)  # roles swapped: w* ~ 3e-6 and E(0) < 0
    assert _condition(a, b) < 1e-7
    opt, ws, wd = _check_against_reference(a, b)
    assert opt.alpha < 1e-5 and opt.d == 0.0


# ---------------------------------------------------------------------------------------------- properties
@st.composite
def pairs(draw):
    n = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["generic", "peaked", "near_one", "ties"]))
    if kind == "generic":
        a, b = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    elif kind == "peaked":  # log-probabilities spread over 30 nats, some exactly 1
        a, b = np.exp(-rng.exponential(5.0, n)), np.exp(-rng.exponential(5.0, n))
        a[rng.random(n) < 0.2] = 1.0
    elif kind == "near_one":
        a, b = 1 - np.exp(-rng.uniform(5, 35, n)), 1 - np.exp(-rng.uniform(5, 35, n))
    else:  # many positions where the models agree exactly
        a = rng.uniform(0, 1, n)
        b = np.where(rng.random(n) < 0.7, a, rng.uniform(0, 1, n))
    a = np.maximum(a, 1e-300)
    return a, b


GRID = np.concatenate([np.linspace(0, 1, 41), 1 / (1 + np.exp(-np.linspace(-30, 30, 31)))])


@settings(max_examples=25, deadline=None)
@given(pairs())
def test_optimum_and_domain_match_the_reference_and_beat_every_grid_point(ab):
    a, b = ab
    opt = nll_optimum(_data(a, b))
    # where the sums cancel (cond large) a float64 root is only that precise: the margins follow it
    cond = _condition(a, b)
    margin = max(1e-9, 1e3 * cond)
    with mp.workdps(DPS):
        e_opt = ref_excess(a, b, opt.w)
        slack = max(mp.mpf(1e-12), mp.mpf(cond)) * abs(e_opt)
        for g in GRID:
            assert e_opt <= ref_excess(a, b, g) + slack, g
        # the domain: E <= 0 right of w_D, E > 0 left of it (on the grid, outside the margin)
        for g in GRID:
            if g > opt.w_domain * (1 + margin) + 1e-300:
                assert ref_excess(a, b, g) <= slack, g
            elif g < opt.w_domain * (1 - margin):
                assert ref_excess(a, b, g) > 0, g
    if cond < 1e-8:
        _check_against_reference(a, b, rel=max(1e-8, 1e3 * cond))


# ---------------------------------------------------------------------------------------------- extreme magnitudes
# B far below A (b = 0 or 1e-300 against a = 1), weights at the ends of float64 (2^-1074, 1 - 2^-53), A subnormal
# against B near 1. The reference bisects in u = log beta (60 digits), so it resolves domain ends of any size; it
# shares no code with `analysis`.
TINY = 2.0**-1074
ITER = 64  # bisection steps over 2800 in u: 2e-16
BIG = float(np.finfo(np.float64).max)


def _wv_mp(u):
    beta = mp.exp(u)
    return beta / (1 + beta), 1 / (1 + beta)


def ref_optimum_log(a, b) -> tuple[mp.mpf, mp.mpf, mp.mpf, mp.mpf, mp.mpf]:
    """(beta*, D, gain at beta*, cond_star, cond_d) in 60 digits; a > 0, b >= 0 floats (taken exactly), not all
    equal, L'(1) > 0 > L'(0). cond_*: the error in u a float64 root can have, eps * sum |term| / |d sum / du|; for
    beta* also 2^-1075 / x per term, where the slope's float64 x = w a + v b is subnormal."""
    with mp.workdps(DPS):
        am, bm = _mp(a), _mp(b)
        rho = [y / x for x, y in zip(am, bm)]

        def slope(u):  # L'(w) = sum (rho - 1) / (w + v rho)
            w, v = _wv_mp(u)
            return mp.fsum((r - 1) / (w + v * r) for r in rho)

        def terms(u):  # -log(x / a) per position
            w, v = _wv_mp(u)
            return [-mp.log(w + v * r) for r in rho]

        lo, hi = mp.mpf(-2000), mp.mpf(800)
        for _ in range(ITER):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if slope(mid) > 0 else (mid, hi)
        us = (lo + hi) / 2
        ws, vs = _wv_mp(us)
        gain = -mp.fsum(terms(us))
        h = mp.fsum(((r - 1) / (ws + vs * r)) ** 2 for r in rho) * ws * vs
        sub = mp.fsum(abs(y - x) / (ws * x + vs * y) * TINY / (ws * x + vs * y) for x, y in zip(am, bm))
        cond_star = (EPS * mp.fsum(abs((r - 1) / (ws + vs * r)) for r in rho) + sub) / h
        if all(r > 0 for r in rho) and mp.fsum(-mp.log(r) for r in rho) <= 0:  # E(0) <= 0
            return mp.exp(us), mp.mpf(0), gain, cond_star, mp.mpf(0)
        lo, hi = mp.mpf(-2000), us
        if mp.fsum(terms(lo)) <= 0:
            return mp.exp(us), mp.mpf(0), gain, cond_star, mp.mpf(0)
        for _ in range(ITER):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if mp.fsum(terms(mid)) > 0 else (lo, mid)
        ud = (lo + hi) / 2
        wd, vd = _wv_mp(ud)
        de = abs(mp.fsum((r - 1) / (wd + vd * r) for r in rho)) * wd * vd  # |dE/du| at the root
        cond_d = EPS * mp.fsum(abs(t) for t in terms(ud)) / de
        return mp.exp(us), mp.exp(ud), gain, cond_star, cond_d


def _close_in_log(got: float, want: mp.mpf, tol_u: float) -> bool:
    """got and want within tol_u in log; got = 0 stands for a root at or below 2^-1074 (`solve_nll`)."""
    if got == 0.0:
        return want <= mp.mpf(TINY) * (1 + tol_u)
    if want == 0:
        return False
    # a subnormal result holds want only to half an ulp of 2^-1074
    return abs(mp.log(mp.mpf(got)) - mp.log(want)) <= tol_u + (TINY / want if want < 2.0**-1022 else 0)


def _check_extreme(a, b, tol_u=1e-9):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    opt = nll_optimum(_data(a, b))
    beta, d, gain, cs, cd = ref_optimum_log(a, b)
    with mp.workdps(DPS):
        assert _close_in_log(opt.alpha, beta, tol_u + 1e3 * float(cs)), (opt.alpha, beta)
        assert _close_in_log(opt.d, d, tol_u + 1e3 * float(cd)), (opt.d, d)
        # the gain at the returned w (as the solver's v = 1 - w is rounded, give it a few ulps of v per unit slope)
        w = mp.mpf(opt.w)
        gain = mp.fsum(mp.log(w + (1 - w) * y / x) for x, y in zip(_mp(a), _mp(b)))
        slack = 4 * EPS * (1 - w) * mp.fsum(abs(y - x) / (w * x + (1 - w) * y) for x, y in zip(_mp(a), _mp(b)))
        assert abs(mp.mpf(opt.gain) - gain) <= 1e-13 * abs(gain) + 1e3 * EPS + slack, (opt.gain, gain)
    return opt, beta, d


@pytest.mark.parametrize("b0, k", [(0.0, 1), (0.0, 2), (0.0, 25), (0.0, 31), (0.0, 33), (1e-300, 25), (1e-300, 31),
                                   (TINY, 31)])
def test_regression_b_far_below_a_gives_the_exact_tiny_domain_end(b0, k):
    # A sure and right at one position where B gives 0 (or 1e-300, or 2^-1074); B far better at k others: the
    # domain end is near 1e-10^k. With v = 1 - w rounding to 1 and (b - a)/a to -1, log1p(v (b - a)/a) was -inf:
    # D was 1.1e-16 for every k >= 2 (1e-20, 1e-250, 1e-310 or 0 exactly), and 1e-10 lost 6 digits at k = 1.
    # k = 31: D = 1e-310 is subnormal; k = 33: D = 1e-330 rounds to 0.
    a = np.array([1.0] + [1e-10] * k)
    b = np.array([b0] + [1.0] * k)
    opt, beta, d = _check_extreme(a, b)
    if k == 33 or (b0 == 1e-300 and k == 31):  # E(2^-1074) <= 0 or E(0) <= 0: D rounds to 0
        assert opt.d == 0.0 == opt.w_domain
    else:
        assert 0.0 < opt.d < 1e-9 and abs(opt.w_domain - opt.d / (1.0 + opt.d)) <= 1e-15 * opt.d


def test_regression_subnormal_a_against_b_near_one_is_finite():
    # A's target probability is subnormal (float32 log-prob in [-745, -708]) where B is near 1: (b - a)/a overflows
    # to inf, and E(w) was -inf: gain inf instead of 744 nats, D = 1.1e-16 instead of 1.9e-310 next to b = 0
    opt, beta, d = _check_extreme([TINY, 0.5, 0.9], [1.0, 0.4, 0.8])
    assert opt.d == 0.0 and opt.alpha == 0.0 and 744.0 < opt.gain < 744.2
    opt, beta, d = _check_extreme([1e-310, 0.9, 1.0], [1.0, 0.9, 0.0])
    assert 1e-311 < opt.d < 1e-309 and 712.0 < opt.gain < 713.0


def _excess_ref(a, b, w, v) -> tuple[mp.mpf, mp.mpf, mp.mpf, mp.mpf]:
    """(E, sum |terms|, L', sum |terms|) at the given floats w, v (60 digits)."""
    with mp.workdps(DPS):
        wm, vm = mp.mpf(w), mp.mpf(v)
        t = [-mp.log(wm + vm * y / x) for x, y in zip(_mp(a), _mp(b))]
        q = [(y - x) / (wm * x + vm * y) for x, y in zip(_mp(a), _mp(b))]
        return mp.fsum(t), mp.fsum(abs(z) for z in t), mp.fsum(q), mp.fsum(abs(z) for z in q)


def _kernel_excess(a, b, w, v) -> tuple[float, float]:
    a = np.ascontiguousarray(a, np.float64)
    b = np.ascontiguousarray(b, np.float64)
    out = np.empty(((a.size + kernels.BLOCK - 1) // kernels.BLOCK, 2))
    kernels_optimum.nll_excess(a, b, w, v, out)
    e, g = kernels.reduce_blocks(out)
    return float(e), float(g)


def _assert_excess_exact(a, b, w, v):
    """E and L' of the kernel within a few ulps of every term's size. Near x / a = 1 the kernel takes the weight
    as 1 - v (log1p), so the mismatch |1 - w - v| of the given pair adds up to twice that per term."""
    e, g = _kernel_excess(a, b, w, v)
    e_ref, e_abs, g_ref, g_abs = _excess_ref(a, b, w, v)
    with mp.workdps(DPS):
        mismatch = abs(1 - mp.mpf(w) - mp.mpf(v))
        assert abs(mp.mpf(e) - e_ref) <= 8 * EPS * e_abs + 2 * len(a) * mismatch, (w, v, e, e_ref)
        if abs(g_ref) > BIG:  # beyond float64 (1 / w at w below 1 / DBL_MAX)
            assert g == math.copysign(math.inf, g_ref)
        elif g_abs <= BIG:  # (else some term is beyond float64 while the sum is not: no float64 sum holds it)
            assert abs(mp.mpf(g) - g_ref) <= 8 * EPS * g_abs, (w, v, g, g_ref)


W_EXTREME = [TINY, 1e-300, 1e-20, 2.0**-60, 1e-10, 0.25, 0.5, 1 - 2.0**-30, 1 - 2.0**-53]


@pytest.mark.parametrize("w", W_EXTREME)
@pytest.mark.parametrize("ab", [(1.0, 0.0), (1.0, 1e-300), (1.0, TINY), (1.0, 1e-20), (0.3, 1e-310), (TINY, 1.0),
                                (1e-310, 1.0), (1e-300, 0.5), (1.0, 1.0 - 2.0**-53), (1 - 2.0**-53, 1.0)])
def test_regression_excess_terms_at_the_ends_of_float64(ab, w):
    # one position each: the term itself to a few ulps (it was inf for b << a once v = 1 - w rounds to 1,
    # and -inf once (b - a)/a overflows), with v = 1 - w as the solver gives it (rounded)
    _assert_excess_exact([ab[0]], [ab[1]], w, 1.0 - w)


@st.composite
def extreme_positions(draw):
    n = draw(st.integers(1, 12))
    mag = st.one_of(st.floats(-1074.0, 0.0), st.sampled_from([-1074.0, -1022.0, -1000.0, -53.0, -1.0, 0.0]))
    la = np.array(draw(st.lists(mag, min_size=n, max_size=n)))
    lb = np.array(draw(st.lists(mag, min_size=n, max_size=n)))
    a = np.maximum(np.exp2(la), TINY)
    b = np.maximum(np.exp2(lb), TINY)
    b[np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))] = 0.0
    a[a == 1.0] = 1.0 - 2.0**-53 * draw(st.integers(0, 3))
    return a, b


weights_extreme = st.one_of(
    st.floats(-1074.0, -1.0).map(lambda e: max(2.0**e, TINY)),
    st.floats(-53.0, -1.0).map(lambda e: 1.0 - 2.0**e),
    st.sampled_from([TINY, 1e-300, 0.5, 1 - 2.0**-53]))


@settings(max_examples=30, deadline=None)
@given(extreme_positions(), weights_extreme)
def test_excess_matches_the_reference_at_extreme_magnitudes(ab, w):
    a, b = ab
    _assert_excess_exact(a, b, w, 1.0 - w)


@settings(max_examples=8, deadline=None)
@given(extreme_positions())
def test_optimum_matches_the_log_domain_reference_at_extreme_magnitudes(ab):
    a, b = ab
    with mp.workdps(DPS):
        am, bm = _mp(a), _mp(b)
        s1 = mp.fsum((y - x) / x for x, y in zip(am, bm))  # L'(1)
        s0 = mp.fsum((y - x) / y if y else -mp.inf for x, y in zip(am, bm))  # L'(0)
        scale = mp.fsum(abs((y - x) / x) for x, y in zip(am, bm))
        scale0 = mp.fsum(abs((y - x) / y) for x, y in zip(am, bm) if y)
    opt = nll_optimum(_data(a, b))
    if s1 <= 0 or s0 >= 0:  # an end is best: only where the sign is clear at float64 precision
        if s1 < -1e3 * EPS * scale:
            assert opt.w == 1.0 and opt.d == math.inf
        if s1 > 0 and s0 > 1e3 * EPS * scale0:
            assert opt.w == 0.0 and opt.d == 0.0
        return
    if abs(s1) <= 1e3 * EPS * scale or abs(s0) <= 1e3 * EPS * scale0:
        return  # w* at an end or not, the float64 sums cannot tell
    _check_extreme(a, b)


def _target_store(lt) -> MemoryStore:
    """Three classes, the target (class 0) at float64 log-probability lt (-inf: probability 0), the rest halved."""
    lt = np.asarray(lt, np.float64)
    lp = np.empty((lt.size, 3))
    lp[:, 0] = lt
    lp[:, 1:] = (np.log(-np.expm1(np.minimum(lt, -1e-300))) - math.log(2.0))[:, None]
    return MemoryStore(arrays_from_logprobs(lp, np.zeros(lt.size, np.int64), 3, "float32"), n_classes=3)


@pytest.mark.parametrize("lb0", [-math.inf, math.log(1e-300)])
def test_regression_pair_optimum_with_a_target_b_gives_nothing(lb0):
    # through the stores: A sure of the target where B stores log-prob -inf (or log 1e-300), B far better at 10
    # positions; Pair.optimum() reported d_nll = 1.1e-16 where it is 1e-100 (the reference: the stored float32
    # log-probs, exponentiated in 60 digits)
    sa = _target_store([-1e-7] + [math.log(1e-10)] * 10)
    sb = _target_store([lb0] + [-1e-7] * 10)
    o = Pair(sa, sb, order="given").optimum()
    with mp.workdps(DPS):
        a = [float(mp.exp(mp.mpf(float(x)))) for x in sa.arrays["target_logprob"]]
        b = [float(mp.exp(mp.mpf(float(x)))) if x > -np.inf else 0.0 for x in sb.arrays["target_logprob"]]
    beta, d, gain, cs, cd = ref_optimum_log(np.array(a), np.array(b))
    with mp.workdps(DPS):
        assert _close_in_log(o.alpha_nll, beta, 1e-9) and _close_in_log(o.d_nll, d, 1e-9), (o.alpha_nll, o.d_nll, d)
        assert 1e-101 < o.d_nll < 1e-99 and o.w_d_nll == o.d_nll
        assert abs(mp.mpf(o.nll_detail.gain) - gain) <= 1e-12 * gain
