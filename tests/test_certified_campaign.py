"""Certified bounds against the exact reference (tests/reference_exact.py), through the public APIs.

* The review's regressions as named tests: the float16 gap at a power of two, interval ends rounded
  outward, the exchange-threshold competitor with K = 1 lists.
* The float16 rounding rule exhaustively: every negative float16 value's interval holds every float32 that
  rounds to it (the ends found at the neighbours' midpoints), and its probability bounds hold their exp.
* A property campaign (hypothesis, plus constructed cases): vocabularies 2..257, K from 1 to beyond V,
  widths that differ, ties (within and across models), zero probabilities, targets outside both lists,
  values on float16 binade edges, near-certain models that disagree, float16 / float32 lists, weights
  {0, 1e-300, 0.5, 1 - 2^-53, 1} and a grid. Per position: certified => true => possible at every weight,
  the interval ends against the exact ends, RBP counts, exchange thresholds and their tau intervals; and
  with float32 lists holding every class, certified == possible == truth wherever the truth is decidable
  from float64 (no competitor's margin below 2^-40 of its size).
"""

from __future__ import annotations

import math
import os

import mpmath
import numpy as np
import pytest
import reference  # noqa: F401  (puts the repository first on sys.path)
import reference_exact as rx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis import MemoryStore, Pair
from analysis.lut import float16_ends, float16_tables
from analysis.optimum import acc_pieces
from analysis.rbp import fused_counts, fused_rbp
from pipeline.store.reader import logprob_upper
from pipeline.store.synthetic import arrays_from_logprobs, synthetic_attrs

SPECIAL_W = (0.0, 1e-300, 0.5, 1.0 - 2.0 ** -53, 1.0)
GRID = tuple(np.linspace(0.0, 1.0, 9)[1:-1])
WEIGHTS = np.array(sorted(set(SPECIAL_W + GRID)))
RBP_W = (1e-300, 0.5, 1.0 - 2.0 ** -53)
KS = (1, 2, 3, 1000)
DECIDE_REL = 2.0 ** -40  # a weight is decidable when every |D_j(w)| exceeds this fraction of its terms
N_FAST = int(os.environ.get("CAMPAIGN_EXAMPLES", "30"))


# ---------------------------------------------------------------------------------------------- stores
def make_pair(xa, xb, targets, ka, kb, dtype_a="float32", dtype_b=None, width_a=None, width_b=None):
    """Two MemoryStores written as a store would be, from exact float32 log-probs (n, V) per model; a model's
    ids at or beyond its width must be -inf. Returns (Pair, per-position reference Models)."""
    xa, xb = (np.asarray(x, dtype=np.float32) for x in (xa, xb))
    n, v = xa.shape
    width_a, width_b = width_a or v, width_b or v
    assert np.all(np.isneginf(xa[:, width_a:])) and np.all(np.isneginf(xb[:, width_b:]))
    t = np.asarray(targets, np.int64)
    stores = []
    for x, k, dt, width, name, params in ((xa, ka, dtype_a, width_a, "A", 10**9),
                                           (xb, kb, dtype_b or dtype_a, width_b, "B", 10**8)):
        arr = arrays_from_logprobs(x.astype(np.float64), t, k, dt)
        stores.append(MemoryStore(arr, n_classes=width, attrs=synthetic_attrs(name, n_params=params)))
    models = [(rx.Model(xa[s]), rx.Model(xb[s])) for s in range(n)]
    return Pair(stores[0], stores[1], order="given"), models


def _mp(x: float):
    return mpmath.mpf(x) if math.isfinite(x) else (mpmath.inf if x > 0 else -mpmath.inf)


def _decidable(A, B, t, w) -> bool:
    """Float64 can decide every comparison of t at w: no |D_j(w)| within DECIDE_REL of its terms or below
    2^-1000 (underflow), and w not within DECIDE_REL (relative) of an end x_j where D_j changes sign (the
    kernels step ends a few ulps outward)."""
    with mpmath.workprec(rx.PREC):
        wt, vt = mpmath.mpf(w), 1 - mpmath.mpf(w)
        for j in range(len(A.x)):
            if j == t:
                continue
            if rx.sign(rx.d_terms(A, B, t, j, w)) == 0:
                continue  # an exact tie: decided exactly (identical stored values)
            pa_t, pa_j, pb_t, pb_j = A.p(t, rx.PREC), A.p(j, rx.PREC), B.p(t, rx.PREC), B.p(j, rx.PREC)
            alpha, beta = pa_t - pa_j, pb_t - pb_j
            d = abs(wt * alpha + vt * beta)
            size = wt * (pa_t + pa_j) + vt * (pb_t + pb_j)
            if d <= DECIDE_REL * size or d <= mpmath.mpf(2) ** -1000:
                return False
            if alpha != beta:
                x = beta / (beta - alpha)
                if 0 <= x <= 1 and abs(wt - x) <= DECIDE_REL * x:
                    return False
    return True


# ---------------------------------------------------------------------------------------------- checks
def check_pair(pair, models, exact_lists: bool, weights=WEIGHTS, rbp_weights=RBP_W):
    """Every certified statement of the pair against the exact reference (module docstring)."""
    data = pair.data
    targets = pair.primary.read(["targets"])["targets"].astype(np.int64)
    n = len(targets)
    frame = pair.sweep(weights)
    truth = np.zeros((n, len(weights)), bool)
    for s in range(n):
        A, B, t = *models[s], int(targets[s])
        truth[s] = [rx.right(A, B, t, float(w)) for w in weights]
        code = int(data.code[s])
        assert code == 2 * rx.single_right(A.x, t) + rx.single_right(B.x, t), s
        for i, w in enumerate(weights):
            if w == 0.0 or w == 1.0:
                cert = poss = bool(code & (2 if w == 1.0 else 1))
            else:
                cert = bool(data.l1[s] < w < data.u1[s])
                poss = bool(data.l2[s] < w < data.u2[s])
            assert (not cert or truth[s, i]) and (not truth[s, i] or poss), \
                f"position {s}, w = {w!r}: certified {cert}, true {truth[s, i]}, possible {poss}"
            if exact_lists and 0.0 < w < 1.0 and _decidable(A, B, t, float(w)):
                assert cert == poss == truth[s, i], f"float32 K = V inexact: position {s}, w = {w!r}"
        # interval ends against the exact right set
        true_iv = rx.right_interval(A, B, t)
        if data.l1[s] < data.u1[s] and max(data.l1[s], 0.0) < min(data.u1[s], 1.0):
            assert true_iv is not None, f"position {s}: certified interval where the truth is never right"
            assert _mp(max(data.l1[s], 0.0)) >= true_iv[0] and _mp(min(data.u1[s], 1.0)) <= true_iv[1], s
        if true_iv is not None:
            assert data.l2[s] < data.u2[s], f"position {s}: right on {true_iv}, possible set empty"
            assert _mp(data.l2[s]) <= true_iv[0] and _mp(data.u2[s]) >= true_iv[1], s
    n_true = truth.sum(axis=0)
    assert (frame["n_right_lo"].to_numpy() <= n_true).all() and (n_true <= frame["n_right_hi"].to_numpy()).all()
    assert (frame["n_undetermined"].to_numpy() >= 0).all()
    check_rbp(pair, models, targets, exact_lists, rbp_weights)
    check_thresholds(pair, models, targets)


def check_rbp(pair, models, targets, exact_lists, weights):
    for w in weights:
        c_lo, c_hi, cap = fused_counts(pair.primary, pair.secondary, w)
        true_c = np.array([rx.count_at_least(*models[s], int(targets[s]), w) for s in range(len(targets))])
        assert (c_lo <= true_c).all() and (true_c <= np.minimum(c_hi, cap)).all(), \
            f"w = {w!r}: c_lo {c_lo}, true {true_c}, c_hi {c_hi}, cap {cap}"
        if exact_lists:
            for s in range(len(targets)):
                if _decidable(*models[s], int(targets[s]), w):
                    assert c_lo[s] == true_c[s] == c_hi[s], (s, w)
        f = fused_rbp(pair.primary, pair.secondary, w, ks=KS)
        for row in f.iter_rows(named=True):
            true_rbp = float(np.mean(true_c < row["k"]))
            assert row["rbp_lo"] <= true_rbp <= row["rbp_hi"] and row["n_undetermined"] >= 0, (w, row)


def check_thresholds(pair, models, targets):
    parts = pair.partitions().positions
    arr_a = pair.primary.read(["target_rank", "target_ties"])
    for row in parts.iter_rows(named=True):
        s = row["position"]
        A, B, t = *models[s], int(targets[s])
        assert row["competitor"] != t, f"position {s}: the competitor is the target"
        a_ties = arr_a["target_rank"][s] == 0 and arr_a["target_ties"][s] > 0
        et = rx.exchange_threshold(A, B, t, row["partition"], bool(a_ties))
        assert _mp(row["et_lo"]) <= et <= _mp(row["et_hi"]), f"position {s}: ET {et} outside [{row['et_lo']}, {row['et_hi']}]"
        true_iv = rx.right_interval(A, B, t)
        tau = (lambda w: (1 - w) / w if w > 0 else mpmath.inf)  # noqa: E731
        if true_iv is not None and not math.isnan(row["tau_poss_lo"]):
            with mpmath.workprec(rx.PREC):
                assert _mp(row["tau_poss_lo"]) <= tau(true_iv[1]) and _mp(row["tau_poss_hi"]) >= tau(true_iv[0]), s
        if not math.isnan(row["tau_cert_lo"]) and row["tau_cert_lo"] < row["tau_cert_hi"]:
            assert true_iv is not None, s
            with mpmath.workprec(rx.PREC):
                assert _mp(row["tau_cert_lo"]) >= tau(true_iv[1]) and _mp(row["tau_cert_hi"]) <= tau(true_iv[0]), s


# ---------------------------------------------------------------------------------------------- regressions
def test_regression_float16_gap_below_a_power_of_two():
    """Competitor float32 -1.000487 stored as float16 -1.0 (the gap below -1 is twice the gap above), target
    -1.000366, the strict argmax of both models (float16, K = V = 3): the fusion is right at every w."""
    x = np.array([[-1.000366, -1.000487, -3.0]], np.float32)
    assert np.float16(x[0, 1]) == np.float16(-1.0)
    pair, models = make_pair(x, x, [0], 3, 3, "float16")
    row = pair.at(0.5)
    assert row["n_right_hi"] == 1, "the sweep says never right at w = 0.5"
    assert (pair.sweep(WEIGHTS)["n_right_hi"].to_numpy() == 1).all()
    f = fused_rbp(pair.primary, pair.secondary, 0.5, ks=(1,))
    assert f["rbp_lo"][0] <= 1.0 == f["rbp_hi"][0] and f["n_undetermined"][0] >= 0
    check_pair(pair, models, exact_lists=False)


def test_regression_interval_ends_rounded_outward():
    """A = log[1, e^-80], B = log[e^-60, 1] (float32, K = V = 2, target 0): f(t) - f(j) = 4.4e-27 at w = 0.5,
    right there; the end 0.5 - 4.4e-27 must not round to 0.5 in the possible set."""
    xa = np.array([[0.0, -80.0]], np.float32)
    xb = np.array([[-60.0, 0.0]], np.float32)
    pair, models = make_pair(xa, xb, [0], 2, 2)
    assert rx.right(*models[0], 0, 0.5)
    row = pair.at(0.5)
    assert row["n_right_hi"] == 1
    assert not (row["n_right_lo"] == 1 and row["n_right_hi"] == 0)
    # the ACC pieces (and so the optimum) read the same intervals: possibly right at 0.5, certified near 1
    for lo_bound, want in ((False, 1), (True, 0)):
        p = acc_pieces(pair.data, lo_bound=lo_bound)
        hit = (p.is_point & (p.left == 0.5)) | (~p.is_point & (p.left < 0.5) & (0.5 < p.right))
        assert p.count[hit].tolist() == [want]
    opt = pair.optimum()
    assert opt.acc_detail.n_right_lo == 1 and rx.right(*models[0], 0, opt.w_acc)
    check_pair(pair, models, exact_lists=True)


def test_regression_competitor_is_never_the_target_with_k1():
    """K = 1 lists holding only the target: the wrong model ties it (T: A ties, ET = 0; F: B ties, ET = inf);
    the competitor is an unlisted class (-1), never t."""
    # position 0: T (A ties t with class 2, B right); position 1: F (A right, B ties t with class 1)
    xa = np.array([[-1.0, -2.0, -1.0, -3.0], [-0.5, -1.5, -2.5, -3.5]], np.float32)
    xb = np.array([[-0.3, -2.0, -1.9, -4.0], [-1.2, -1.2, -0.9 - 1, -5.0]], np.float32)
    pair, models = make_pair(xa, xb, [0, 0], 1, 1)
    parts = pair.partitions().positions
    assert parts["partition"].to_list() == ["T", "F"]
    assert parts["competitor"].to_list() == [-1, -1]
    assert parts["et_lo"].to_list() == [0.0, math.inf] and parts["et_hi"].to_list() == [0.0, math.inf]
    check_pair(pair, models, exact_lists=False)
    pair16, models16 = make_pair(xa, xb, [0, 0], 1, 1, "float16")
    check_pair(pair16, models16, exact_lists=False)


def test_float16_intervals_hold_every_float32_that_rounds_to_them():
    """Exhaustive over the 31,744 negative finite float16 values (-0 included): the smallest and largest
    float32 that round to v (found at the neighbours' midpoints, ties to even decided by numpy's cast) lie in
    `float16_ends(v)`, the float32 just outside them do not round to v, and the table's probability bounds
    hold exp of both (mpmath); the truncated view's `logprob_upper` is the same upper end."""
    bits = np.arange(0x8000, 0xFC00, dtype=np.uint32).astype(np.uint16)
    v16 = bits.view(np.float16)
    lo_end, hi_end = float16_ends(v16)
    assert np.array_equal(logprob_upper(v16), hi_end)
    f32 = np.float32
    # candidates: the ends themselves (midpoints, exact in float32) and one float32 ulp inside
    lo32, hi32 = lo_end.astype(f32), hi_end.astype(f32)
    assert np.array_equal(lo32.astype(np.float64), lo_end) and np.array_equal(hi32.astype(np.float64), hi_end)
    with np.errstate(over="ignore"):  # -65520 rounds to -inf
        first = np.where(lo32.astype(np.float16) == v16, lo32, np.nextafter(lo32, f32(np.inf)))
        last = np.where(hi32.astype(np.float16) == v16, hi32, np.nextafter(hi32, f32(-np.inf)))
        # (compared as values: -0 and +0 are one value, whose reals reach 2^-25 on both sides)
        assert np.all(first.astype(np.float16) == v16) and np.all(last.astype(np.float16) == v16)
        # the float32 just beyond them round elsewhere: [first, last] is every float32 rounding to v
        assert not np.any(np.nextafter(first, f32(-np.inf)).astype(np.float16) == v16)
        assert not np.any(np.nextafter(last, f32(np.inf)).astype(np.float16) == v16)
    assert np.all(lo_end <= first) and np.all(last <= hi_end)
    assert lo_end[v16 == np.float16(-1.0)][0] == -1.0 - 2.0 ** -11  # the gap below -1 is 2^-10
    assert lo_end[v16 == np.float16(-65504.0)][0] == -65520.0
    assert lo_end[bits == 0x8000][0] == -(2.0 ** -25) and hi_end[bits == 0x8000][0] == 2.0 ** -25
    # probabilities: exp of the extreme float32 within the table's bounds, exactly (mpmath)
    lo_p, hi_p = float16_tables()
    lo_p, hi_p = lo_p[bits], hi_p[bits]
    x_first = first.astype(np.float64)
    x_last = np.minimum(last.astype(np.float64), 0.0)  # log-probs are <= 0: hi is clipped at probability 1
    with mpmath.workprec(80):
        for i in range(len(bits)):
            e_lo = mpmath.exp(x_first[i])
            e_hi = mpmath.exp(x_last[i])
            assert lo_p[i] <= e_lo and e_hi <= hi_p[i], (v16[i], lo_p[i], e_lo, e_hi, hi_p[i])
    # -inf: a probability of 0 or below exp(-65520)
    inf_bits = np.array([0xFC00], np.uint16)
    assert lo_p[0] >= 0 and float16_tables()[0][inf_bits][0] == 0.0 and float16_tables()[1][inf_bits][0] > 0.0


# ---------------------------------------------------------------------------------------------- campaign
def _edge_values() -> np.ndarray:
    """float32 log-probs on float16 binade edges: every negative power of two in float16 range, the
    midpoints to both neighbours (rounding ties) and one float32 ulp either side, subnormals, the
    largest finite and the overflow boundary, and values whose float64 exp underflows."""
    out = [-0.0, -65504.0, -65520.0, np.nextafter(np.float32(-65520.0), np.float32(0)), -1.000487, -1.000366,
           -2.0 ** -24, -1.5 * 2.0 ** -24, -2.0 ** -14, -745.2, -1.0e4, -3.0e38]
    for e in range(-24, 16):
        v = np.float16(-(2.0 ** e))
        for nb in (np.nextafter(v, np.float16(-np.inf)), np.nextafter(v, np.float16(0))):
            if np.isfinite(nb):
                mid = np.float32((float(v) + float(nb)) / 2)
                out += [float(v), float(mid), float(np.nextafter(mid, np.float32(-np.inf))),
                        float(np.nextafter(mid, np.float32(0)))]
    x = np.unique(np.array(out, np.float32))
    return x[x <= 0]


EDGES = _edge_values()
STYLES = ("random", "ties", "certain", "zeros", "edges", "tiny")


def _row(rng, v, style):
    if style == "random":
        z = rng.standard_normal(v) * rng.choice([0.5, 2.0, 6.0])
    elif style == "ties":
        z = np.round(rng.standard_normal(v) * 2.0 / 0.5) * 0.5
    elif style == "certain":  # one class ~1, the rest 60..100 nats below
        z = -rng.uniform(60.0, 100.0, v)
        z[rng.integers(v)] = 0.0
        return z
    elif style == "tiny":  # everything far down (exp near or below float64 underflow)
        return -rng.uniform(600.0, 800.0, v)
    else:
        z = rng.standard_normal(v) * 2.0
    z = z - (z.max() + np.log(np.exp(z - z.max()).sum()))
    if style == "zeros":
        z[rng.random(v) < 0.4] = -np.inf
    if style == "edges":
        m = rng.random(v) < 0.5
        z[m] = rng.choice(EDGES, int(m.sum()))
    return z


@st.composite
def campaign_cases(draw, max_vocab=24):
    v = draw(st.one_of(st.integers(2, min(6, max_vocab)), st.integers(2, max_vocab)))
    narrow = draw(st.sampled_from(["none", "none", "a", "b"]))
    width = draw(st.integers(1, v))
    return dict(seed=draw(st.integers(0, 2**32 - 1)), v=v, n=draw(st.integers(1, 3)),
                ka=draw(st.integers(1, v + 2)), kb=draw(st.integers(1, v + 2)),
                dtype_a=draw(st.sampled_from(["float16", "float32"])),
                dtype_b=draw(st.sampled_from(["float16", "float32"])),
                width_a=width if narrow == "a" else v, width_b=width if narrow == "b" else v,
                styles=draw(st.lists(st.sampled_from(STYLES), min_size=2, max_size=2)),
                share=draw(st.sampled_from([0.0, 0.0, 0.5, 1.0])),
                target=draw(st.sampled_from(["argmax", "random", "low"])))


def build_case(c):
    rng = np.random.default_rng(c["seed"])
    v, n = c["v"], c["n"]
    xa = np.stack([_row(rng, v, c["styles"][0]) for _ in range(n)])
    xb = np.stack([_row(rng, v, c["styles"][1]) for _ in range(n)])
    share = rng.random((n, v)) < c["share"]  # exact cross-model ties
    xb[share] = xa[share]
    xa[:, c["width_a"]:] = -np.inf
    xb[:, c["width_b"]:] = -np.inf
    xa, xb = np.minimum(xa, 0.0).astype(np.float32), np.minimum(xb, 0.0).astype(np.float32)
    if c["target"] == "argmax":
        t = np.argmax(xa.astype(np.float64) + xb, axis=1)
    elif c["target"] == "low":
        t = np.argmin(np.where(np.isneginf(xa), np.inf, xa), axis=1)
    else:
        t = rng.integers(0, v, n)
    return make_pair(xa, xb, t, c["ka"], c["kb"], c["dtype_a"], c["dtype_b"], c["width_a"], c["width_b"])


def _exact_lists(c) -> bool:
    return c["dtype_a"] == c["dtype_b"] == "float32" and min(c["ka"], c["kb"]) >= c["v"]


@settings(max_examples=N_FAST, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(campaign_cases())
def test_campaign_bounds_bracket_the_exact_truth(case):
    pair, models = build_case(case)
    check_pair(pair, models, _exact_lists(case))


@settings(max_examples=max(4, N_FAST // 3), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(campaign_cases(max_vocab=12))
def test_campaign_float32_full_lists_are_exact(case):
    case = {**case, "dtype_a": "float32", "dtype_b": "float32", "ka": case["v"], "kb": case["v"] + 1}
    pair, models = build_case(case)
    check_pair(pair, models, exact_lists=True)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_campaign_wide_vocabulary_with_edges_and_narrow_secondary(dtype):
    """V = 257, B 200 wide, every style, small and full lists."""
    for seed, (ka, kb), styles in ((1, (3, 1), ("edges", "certain")), (2, (257, 300), ("random", "zeros")),
                                   (3, (16, 64), ("ties", "edges"))):
        case = dict(seed=seed, v=257, n=2, ka=ka, kb=kb, dtype_a=dtype, dtype_b=dtype, width_a=257, width_b=200,
                    styles=styles, share=0.5, target="random")
        pair, models = build_case(case)
        check_pair(pair, models, _exact_lists(case), weights=np.array(SPECIAL_W), rbp_weights=(0.5,))


def test_campaign_every_binade_edge_as_target_and_competitor():
    """One position per edge value: the target at the edge in both models, the competitor at the next edge
    up in A and down in B (so the fusion crosses), K = 1 and K = V."""
    e = EDGES[np.isfinite(EDGES) & (EDGES > -70000)]
    n = len(e) - 1
    xa = np.full((n, 3), -np.inf, np.float32)
    xb = np.full((n, 3), -np.inf, np.float32)
    xa[:, 0], xb[:, 0] = e[1:], e[1:]
    xa[:, 1], xb[:, 1] = e[:-1], np.minimum(e[1:] * 1.5, 0)
    xa[:, 2], xb[:, 2] = e[1:], -80.0
    for k, dt in ((1, "float16"), (3, "float16"), (3, "float32")):
        pair, models = make_pair(xa, xb, np.zeros(n, np.int64), k, k, dt)
        check_pair(pair, models, exact_lists=dt == "float32" and k == 3, weights=np.array(SPECIAL_W),
                   rbp_weights=(0.5,))


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(campaign_cases(max_vocab=257))
def test_campaign_slow(case):
    pair, models = build_case(case)
    check_pair(pair, models, _exact_lists(case))
