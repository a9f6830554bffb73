"""Appendix A measurements against loops over the definitions (tests/reference_law.py)."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
import reference_law as rl

from analysis import Pair
from analysis.theorems import _dip, acc_profile, mainstay_deviation, stratified_sets, theorem_checks


@pytest.mark.parametrize("seed,dtype,k", [(0, "float16", 4), (1, "float32", 3), (2, "float16", 8)])
def test_stratification_sets_match_pairwise_loops(seed, dtype, k):
    sa, sb, *_ = ref.memory_pair(seed, n=300, vocab=10, k=k, logprob_dtype=dtype, sharpness=1.0)
    pair = Pair(sa, sb, order="given")
    sets = stratified_sets(pair)
    cert, poss = rl.stratified_members(sa.arrays, sb.arrays, sb.n_classes)
    assert set(np.flatnonzero(sets["A_lo"]).tolist()) == cert
    assert set(np.flatnonzero(sets["A_hi"]).tolist()) == poss
    assert cert <= poss
    w = pair.optimum().w_acc
    lo, _ = ref.certified_right(sa.arrays, sb.arrays, sa.n_classes, sb.n_classes, [w])
    assert set(np.flatnonzero(sets["R_lo"]).tolist()) == cert & set(np.flatnonzero(lo[:, 0]).tolist())
    row = theorem_checks(pair).row(0, named=True)
    assert row["A_lo"] == len(cert) and row["T"] == int((ref.partition_codes(sa.arrays, sb.arrays) == 1).sum())
    assert row["bound_R_over_S_lo"] == pytest.approx(row["R_lo"] / 300)
    assert row["A25_improves_certified"] == (pair.optimum().at_acc["acc_lo"] > pair.optimum().primary["acc_lo"])


def test_mainstay_deviation_counts_match_loops():
    sa, sb, *_ = ref.memory_pair(3, n=400, vocab=8, k=3)
    pair = Pair(sa, sb, order="given")
    md = mainstay_deviation(pair, top=5)
    assert md.height == 5
    for row in md.iter_rows(named=True):
        want = rl.mainstay(sa.arrays, sb.arrays, row["h"])
        assert {k: row[k] for k in want} == want
        assert row["conclusion_NS_gt_NL"] == (want["N_S"] > want["N_L"])
        if row["assumption_A21"]:
            assert row["conclusion_NS_gt_NL"]  # the theorem is a true implication
    tot = (md["n"] + md["m"]).to_list()
    assert tot == sorted(tot, reverse=True)


def test_unimodality_dip_matches_loops_and_the_dense_grid():
    for seq in ([1, 2, 3, 2, 1], [3, 1, 3], [1, 1, 1], [5, 2, 4, 1, 6], [2]):
        assert _dip(np.array(seq))[0] == rl.unimodal_dip(seq)
    assert _dip(np.array([1, 3, 2, 4, 1]))[1] == 2
    sa, sb, *_ = ref.memory_pair(5, n=300, vocab=10, k=4)
    pair = Pair(sa, sb, order="given")
    prof = acc_profile(pair.data, True)
    # Every value of the profile is acc_lo on some open piece: compare with the reference at midpoints.
    crit = ref.critical_weights(sa.arrays, sb.arrays, 10, 10)
    mids = (np.concatenate([[0.0], crit]) + np.concatenate([crit, [1.0]])) / 2
    lo, _ = ref.certified_right(sa.arrays, sb.arrays, 10, 10, np.concatenate([[0.0], mids, [1.0]]))
    grid_counts = lo.sum(axis=0)
    assert rl.unimodal_dip(grid_counts) == _dip(prof)[0]
    row = theorem_checks(pair).row(0, named=True)
    assert row["A27_unimodal_lo"] == (rl.unimodal_dip(grid_counts) == 0)
