"""AR-law fit and RBP against brute force (tests/reference_law.py)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import reference as ref
import reference_law as rl
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.law import LawFitError, ar_law, fit_power_law, law_points, plot_ar_law
from analysis.rbp import fused_counts, fused_rbp, rbp_scaling, single_rbp


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(1.01, 1e4), st.floats(1e-3, 1e3)), min_size=3, max_size=12))
def test_fit_power_law_matches_polyfit(pts):
    x, y = np.array(pts).T
    fit = fit_power_law(x, y)
    if np.ptp(np.log(x)) < 0.01:  # found by hypothesis: k = 3354, 3354, 3353 gave p ~ 2e4 and overflowed c
        assert fit["note"].startswith("not fitted") and math.isnan(fit["p"]) and math.isnan(fit["c"])
        return
    want = rl.power_fit(x, y)
    assert fit["p"] == pytest.approx(want["p"], rel=1e-6, abs=1e-9)
    assert fit["c"] == pytest.approx(want["c"], rel=1e-6)
    assert fit["p_se"] == pytest.approx(want["p_se"], rel=1e-5, abs=1e-9)
    if math.isfinite(want["r2"]):
        assert fit["r2"] == pytest.approx(want["r2"], rel=1e-6, abs=1e-9)


def test_fit_refuses_k_that_barely_varies():
    """Found by hypothesis: k = 1506, 1470, 1509 with y = 1, 1, 0.001 overflowed exp(intercept)."""
    fit = fit_power_law([3354.0, 3354.0, 3353.0], [1.0, 1.0, 0.001])
    assert math.isnan(fit["p"]) and "k spans only" in fit["note"]
    wide = fit_power_law([1506.0, 1470.0, 1509.0], [1.0, 1.0, 0.001])
    assert wide["p"] < -100 and wide["c"] == math.inf  # a steep fit: c beyond float64, no OverflowError


def test_fit_r2_is_nan_without_spread_in_y():
    """Found by hypothesis: equal y values left only rounding noise in the total sum of squares."""
    fit = fit_power_law([2.0, 2.0, 3.0], [27.5, 27.5, 27.5])
    assert math.isnan(fit["r2"]) and fit["p"] == pytest.approx(0.0, abs=1e-12)


def test_fit_excludes_and_counts_zero_and_inf():
    k = np.array([2.0, 4.0, 8.0, 16.0, 32.0])
    y = np.array([1.0, 2.0 ** 0.5 * 1.0, 2.0, math.inf, 0.0])
    fit = fit_power_law(k, y)
    assert (fit["n_points"], fit["n_inf"], fit["n_zero"]) == (3, 1, 1)
    assert fit["p"] == pytest.approx(0.5)
    assert fit["r2"] == pytest.approx(1.0)
    two = fit_power_law([2.0, 4.0], [1.0, 3.0])
    assert math.isnan(two["p_se"]) and math.isnan(two["p"]) and math.isnan(two["r2"])  # 2 points: not fitted
    assert two["note"] == "not fitted: 2 points < 3"
    with pytest.raises(LawFitError, match="-1.0"):
        fit_power_law([-1.0, 2.0], [1.0, 1.0])


def test_ar_law_groups_by_primary_and_plots():
    pts = pl.DataFrame({"primary": ["L"] * 4 + ["M"] * 3, "dataset": ["d"] * 7, "split": ["test"] * 7,
                        "k": [2.0, 4.0, 8.0, 16.0, 2.0, 4.0, 8.0], "k_from": ["n_params_nonembed"] * 7,
                        "alpha_nll": [1.0, 2.0, 4.0, math.inf, 3.0, 9.0, 27.0]})
    fits = ar_law(pts, metrics=("alpha_nll",))
    assert fits.height == 2
    row = fits.filter(pl.col("primary") == "L").row(0, named=True)
    assert row["p"] == pytest.approx(1.0) and row["n_inf"] == 1 and row["k_from"] == "n_params_nonembed"
    assert fits.filter(pl.col("primary") == "M")["p"][0] == pytest.approx(math.log(3) / math.log(2))
    import matplotlib

    matplotlib.use("Agg")
    ax = plot_ar_law(pts, fits, "alpha_nll")
    assert ax.get_xscale() == "log" and len(ax.lines) >= 4


def test_law_points_from_pairs():
    from analysis import Pair

    sa, sb, *_ = ref.memory_pair(3, n=400)
    pts = law_points([Pair(sa, sb)], param_count="n_params")
    assert pts["k"][0] == pytest.approx(10.0) and pts["k_from"][0] == "n_params"
    assert pts["alpha_nll"][0] == Pair(sa, sb).optimum().alpha_nll


@pytest.mark.parametrize("seed,dtype,k,tie", [(0, "float16", 4, None), (1, "float32", 3, None),
                                              (2, "float16", 5, 0.5), (3, "float32", 12, None)])
def test_fused_counts_match_brute_force_and_contain_truth(seed, dtype, k, tie):
    sa, sb, lp_a, lp_b, targets = ref.memory_pair(seed, n=300, vocab=12, k=k, logprob_dtype=dtype, tie_grid=tie)
    for w in (0.2, 0.5, 0.9):
        c_lo, c_hi, cap = fused_counts(sa, sb, w)
        r_lo, r_hi, r_cap = rl.fused_count_bounds(sa.arrays, sb.arrays, 12, 12, w)
        assert np.array_equal(c_lo, r_lo) and np.array_equal(c_hi, r_hi) and np.array_equal(cap, r_cap)
        truth = rl.true_fused_counts(lp_a, lp_b, targets, w)
        assert np.all(c_lo <= truth) and np.all(truth <= np.minimum(c_hi, cap))
        if dtype == "float32" and k == 12:
            assert np.array_equal(c_lo, truth) and np.array_equal(c_hi, truth)


def test_rbp_single_exact_and_fused_bounds():
    sa, sb, lp_a, lp_b, targets = ref.memory_pair(4, n=500, vocab=30, k=4)
    s = single_rbp(sa, ks=(1, 2, 5, 50))
    rows = np.arange(len(targets))
    lt = lp_a[rows, targets]
    c = (lp_a >= lt[:, None]).sum(axis=1) - 1
    assert s["rbp"].to_list() == [float(np.mean(c < k)) for k in (1, 2, 5, 50)]
    f = fused_rbp(sa, sb, 0.6, ks=(1, 5, 10, 50))
    truth = rl.true_fused_counts(lp_a, lp_b, targets, 0.6)
    for row in f.iter_rows(named=True):
        true_rbp = float(np.mean(truth < row["k"]))
        assert row["rbp_lo"] <= true_rbp <= row["rbp_hi"]
    assert f.filter(pl.col("k") == 50)["method"][0] == "exact"  # vocab 30 < 50: everything is inside
    assert set(f["method"]) <= {"exact", "bounded", "rank-sum bound"}
    assert fused_rbp(sa, sb, 1.0, ks=(1, 5))["rbp_lo"].to_list() == single_rbp(sa, ks=(1, 5))["rbp"].to_list()


def test_rbp_scaling_recovers_exponent():
    params = {"s": 1e6, "m": 1e7, "l": 1e8}
    gamma = 0.3
    rows = [{"model": m, "k": k, "rbp": math.exp(-2.0 * n ** -gamma)} for m, n in params.items() for k in (1, 10)]
    fit = rbp_scaling(pl.DataFrame(rows), params)
    assert fit["gamma"].to_list() == pytest.approx([gamma, gamma])
    assert fit["r2"].to_list() == pytest.approx([1.0, 1.0])
