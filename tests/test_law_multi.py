"""Multi-model fusion: EM with a certified gap against a brute-force simplex grid; certified ACC."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference as ref
import reference_law as rl

from analysis.errors import WeightError
from analysis.multi import (
    MultiData,
    MultiFusionError,
    certified_right,
    em_weights,
    fused_metrics,
    geometric_sweep,
    geometric_weights,
    multi_summary,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_em_optimum_beats_every_grid_point_and_gap_is_certified(seed):
    stores, *_ = rl.memory_family(seed, n=400)
    md = MultiData.load(stores[::-1])  # given smallest first: loaded largest first
    assert md.names == ["m0", "m1", "m2"]
    opt = em_weights(md.p, tol=1e-12)
    grid = rl.simplex_grid(3, 0.01)
    with np.errstate(divide="ignore"):
        grid_nll = np.array([np.mean(-np.log(md.p @ g)) for g in grid])
    assert opt.nll <= grid_nll.min() + 1e-12
    assert 0 <= opt.gap <= 1e-12
    assert abs(opt.weights.sum() - 1) < 1e-12 and np.all(opt.weights >= 0)
    # The certificate is a true bound: from any start, F(opt) - F(w) <= log max g(w).
    for w in grid[::97]:
        x = md.p @ w
        if np.all(x > 0):
            g = (md.p / x[:, None]).mean(axis=0)
            assert np.mean(-np.log(x)) - opt.nll <= math.log(g.max()) + 1e-12


def test_em_at_a_vertex_when_one_model_dominates():
    p = np.array([[0.9, 0.1, 0.2], [0.8, 0.3, 0.1], [0.7, 0.2, 0.2]])
    opt = em_weights(p, tol=1e-9, max_iter=200_000)
    assert opt.weights[0] > 0.999 and opt.gap <= 1e-9


@pytest.mark.parametrize("seed,dtype,k", [(0, "float16", 4), (1, "float32", 3), (2, "float16", 12)])
def test_certified_right_matches_brute_force_and_contains_truth(seed, dtype, k):
    stores, lps, targets = rl.memory_family(seed, n=200, k=k, logprob_dtype=dtype)
    md = MultiData.load(stores)
    for w in ([0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [1.0, 0.0, 0.0], [0.0, 0.7, 0.3]):
        lo, hi = certified_right(md, w)
        r_lo, r_hi = rl.multi_right([s.arrays for s in stores], [12, 12, 12], w)
        assert np.array_equal(lo, r_lo) and np.array_equal(hi, r_hi)
        f = sum(wi * np.exp(lp) for wi, lp in zip(w, lps))
        rows = np.arange(len(targets))
        ft = f[rows, targets]
        f[rows, targets] = -1
        truth = ft > f.max(axis=1)
        if np.count_nonzero(w) > 1:
            assert np.all(truth[lo]) and np.all(hi[truth])
        else:
            assert np.array_equal(lo, truth)


def test_geometric_weights_and_summary():
    assert geometric_weights(3, 0.5).tolist() == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert geometric_weights(3, 0.0).tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(WeightError, match="-1"):
        geometric_weights(3, -1)
    stores, *_ = rl.memory_family(3, n=300)
    md = MultiData.load(stores)
    sw = geometric_sweep(md, [0.0, 0.5, 1.0])
    assert sw["nll"][0] == pytest.approx(fused_metrics(md, [1, 0, 0])["nll"])
    assert sw["acc_lo"][0] == pytest.approx(ref.single_right(stores[0].arrays).mean())
    summ = multi_summary(md, rs=[0.0, 0.25, 0.5, 1.0])
    em = summ.filter(summ["method"] == "likelihood-optimal (EM)")
    assert em["nll"][0] <= summ["nll"].min() + 1e-12
    with pytest.raises(MultiFusionError, match="at least 2"):
        MultiData.load(stores[:1])
    with pytest.raises(WeightError, match="simplex"):
        fused_metrics(md, [0.5, 0.5, 0.5])
