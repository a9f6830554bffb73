"""Bootstrap of fusion gains and optima against explicit resampling (tests/reference_law.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference as ref
import reference_law as rl

from analysis.bootstrap import (
    MIN_UNITS,
    BootstrapError,
    bootstrap,
    choose_units,
    draw_counts,
    kfold_choice,
    make_units,
    percentile_interval,
    position_values,
    resampled_optima,
    sweep_columns,
    table_columns,
    unit_kind,
)
from analysis.data import PairData
from analysis.metrics import sweep_frame
from analysis.optimum import acc_optimum, nll_optimum


def _data(seed, n=3000, **kw):
    sa, sb, *_ = ref.memory_pair(seed, n=n, **kw)
    return PairData.load(sa, sb), sa


def _subset(data, idx):
    return PairData(*(np.ascontiguousarray(getattr(data, f)[idx]) for f in
                      ("a", "b", "code", "l1", "u1", "l2", "u2", "n_chars", "n_bytes")))


def test_draw_counts_is_seeded_and_sums_to_the_number_of_units():
    c1 = draw_counts(17, 50, seed=3)
    c2 = draw_counts(17, 50, seed=3)
    assert np.array_equal(c1, c2)
    assert not np.array_equal(c1, draw_counts(17, 50, seed=4))
    assert np.all(c1.sum(axis=1) == 17)


@pytest.mark.parametrize("seed,sharp,limit", [(0, 2.0, 30.0), (1, 0.7, 30.0), (2, 3.0, 30.0), (3, 2.0, 0.3)])
def test_resampled_optima_match_explicit_resamples(seed, sharp, limit):
    data, _ = _data(seed, n=2400, sharpness=sharp)
    doc = np.arange(data.n) // 60  # 40 documents
    units = make_units(data.n, "doc", doc)
    counts = draw_counts(units.n_units, 25, seed=seed)
    full = nll_optimum(data)
    ro = resampled_optima(data, units, counts, centres=(math.log(full.alpha) if 0 < full.alpha < math.inf else 0.0,),
                          limit=limit)
    if limit < 1:  # a grid too narrow for the roots: every one is solved exactly instead
        assert ro.n_fallback > 0
    for r in range(counts.shape[0]):
        idx = rl.resample_positions(units.unit, counts[r])
        sub = _subset(data, idx)
        alpha = rl.nll_optimum_bisect(sub.a, sub.b)
        d = rl.nll_domain_bisect(sub.a, sub.b, alpha)
        for got, want in ((ro.alpha_nll[r], alpha), (ro.d_nll[r], d)):
            if math.isinf(want) or want == 0.0:
                assert got == want
            else:
                assert got == pytest.approx(want, rel=1e-6)
        acc = acc_optimum(sub)
        assert ro.alpha_acc[r] == acc.alpha
        assert ro.d_acc[r] == acc.d
        fr = sweep_frame(sub, [acc.w, 1.0])
        assert ro.dacc_lo[r] == pytest.approx(fr["acc_lo"][0] - fr["acc_lo"][1], abs=1e-12)
        w_star = alpha / (1 + alpha) if math.isfinite(alpha) else 1.0
        fr = sweep_frame(sub, [w_star, 1.0])
        assert ro.dppl[r] == pytest.approx(fr["ppl"][0] - fr["ppl"][1], rel=1e-7, abs=1e-9)
        assert ro.dbpc[r] == pytest.approx(fr["bpc"][0] - fr["bpc"][1], rel=1e-7, abs=1e-9)


def test_block_units_and_fixed_weight_gains_match_explicit_resamples():
    data, sa = _data(5, n=3 * 4096 + 100)
    units = make_units(data.n, "block")
    assert units.n_units == 4
    frame = bootstrap(None, data=data, n_resamples=200, seed=1, heldout_w=(0.7, 0.6), by="block", min_units=2)
    assert (frame["ci_unit"][0], frame["ci_n_units"][0]) == ("block", 4)
    counts = draw_counts(units.n_units, 200, seed=1)
    vals = []
    for r in range(200):
        sub = _subset(data, rl.resample_positions(units.unit, counts[r]))
        fr = sweep_frame(sub, [0.7, 0.6, 1.0])
        vals.append((fr["ppl"][0] - fr["ppl"][2], fr["acc_lo"][1] - fr["acc_lo"][2]))
    vals = np.array(vals)
    row = frame.filter((frame["scope"] == "held-out") & (frame["statistic"] == "dppl")).row(0, named=True)
    lo, hi = rl.percentile_ci(vals[:, 0], 0.95)
    assert row["ci_lo"] == pytest.approx(lo, rel=1e-9) and row["ci_hi"] == pytest.approx(hi, rel=1e-9)
    full = sweep_frame(data, [0.7, 1.0])
    assert row["estimate"] == pytest.approx(full["ppl"][0] - full["ppl"][1], rel=1e-9)
    row = frame.filter((frame["scope"] == "held-out") & (frame["statistic"] == "dacc_lo")).row(0, named=True)
    lo, hi = rl.percentile_ci(vals[:, 1], 0.95)
    assert (row["ci_lo"], row["ci_hi"]) == pytest.approx((lo, hi), abs=1e-12)
    cols = table_columns(frame)
    assert "heldout_dppl_ci_lo" in cols and "insample_alpha_nll_ci_hi" in cols
    assert (cols["ci_unit"], cols["ci_n_units"]) == ("block", 4)


def test_percentile_interval_matches_reference_and_keeps_inf():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(1001)
    assert percentile_interval(x, 0.9) == rl.percentile_ci(x, 0.9)
    x[-30:] = np.inf
    lo, hi = percentile_interval(x, 0.95)
    assert hi == math.inf and math.isfinite(lo)


def test_kfold_choice_uses_only_other_folds():
    data, _ = _data(7, n=2000)
    doc = np.arange(data.n) // 100  # 20 documents
    kf = kfold_choice(data, 4, doc)
    assert kf.by == "doc" and kf.folds.height == 4
    fold = (doc * 4) // 20
    for f in range(4):
        train = _subset(data, np.flatnonzero(fold != f))
        assert kf.folds["w_nll"][f] == nll_optimum(train, with_domain=False).w
        assert kf.folds["w_acc"][f] == acc_optimum(train).w
        test = np.flatnonzero(fold == f)
        pv = position_values(_subset(data, test), kf.folds["w_nll"][f])
        assert np.array_equal(kf.values_nll["nll"][test], pv["nll"])
    frame = bootstrap(None, data=data, doc_id=doc, by="doc", n_resamples=100, kfold=4)
    assert set(frame["scope"]) == {"in-sample", "k-fold"}


def test_bootstrap_errors_name_the_value():
    data, _ = _data(0, n=500)
    with pytest.raises(BootstrapError, match="too few resampling units: 1 4,096-position block over 500"):
        bootstrap(None, data=data, n_resamples=100)
    with pytest.raises(BootstrapError, match="only 1 resampling unit"):
        make_units(500, "block")
    with pytest.raises(BootstrapError, match="'weird'"):
        make_units(10, "weird")
    with pytest.raises(BootstrapError, match="'weird'"):
        bootstrap(None, data=data, by="weird")
    with pytest.raises(BootstrapError, match="level=1.5"):
        bootstrap(None, data=data, level=1.5)


def test_resampled_optima_on_realistic_top64_float16_lists():
    """Zipf-shaped K = 64 float16 lists over a 50,257-token vocabulary (the benchmark's data), block units."""
    from analysis.data import MemoryStore
    from pipeline.store.synthetic import synthetic_attrs, zipf_blocks

    _, (arr_a, arr_b) = next(zipf_blocks(5 * 4096, k=64, vocab=50257, seed=3))
    sa = MemoryStore(arr_a, n_classes=50257, attrs=synthetic_attrs("A", n_params=10 ** 9))
    sb = MemoryStore(arr_b, n_classes=50257, attrs=synthetic_attrs("B", n_params=10 ** 8))
    data = PairData.load(sa, sb)
    units = make_units(data.n, "block")
    counts = draw_counts(units.n_units, 8, seed=0)
    full = nll_optimum(data)
    ro = resampled_optima(data, units, counts, centres=(math.log(full.alpha), math.log(full.d)))
    for r in range(counts.shape[0]):
        sub = _subset(data, rl.resample_positions(units.unit, counts[r]))
        want = nll_optimum(sub)
        assert ro.alpha_nll[r] == pytest.approx(want.alpha, rel=1e-7)
        assert ro.d_nll[r] == pytest.approx(want.d, rel=1e-7)
        acc = acc_optimum(sub)
        assert (ro.alpha_acc[r], ro.d_acc[r]) == (acc.alpha, acc.d)


def _with_docs(store, doc_id):
    from analysis.data import MemoryStore

    return MemoryStore({**store.arrays, "doc_id": doc_id}, n_classes=store.n_classes, attrs=store.attrs)


def test_sweep_columns_for_the_pairs_table():
    from analysis import Pair

    sa, sb, *_ = ref.memory_pair(8, n=2 * 4096 + 10)
    doc = np.arange(sa.n) // 200  # 42 documents, 3 blocks: documents
    cols = sweep_columns(Pair(_with_docs(sa, doc), _with_docs(sb, doc)), heldout_w=(0.8, 0.8), n_resamples=50)
    assert (cols["ci_unit"], cols["ci_n_units"]) == ("doc", 42)
    assert {"heldout_dppl_ci_lo", "insample_alpha_nll_ci_hi", "insample_dacc_lo_ci_lo"} <= set(cols)
    assert cols["insample_alpha_nll_ci_lo"] <= cols["insample_alpha_nll_ci_hi"]
    # one document and 3 blocks: documents, too few of them; said with the unit and count, no interval
    note = sweep_columns(Pair(sa, sb), n_resamples=50)
    assert set(note) == {"bootstrap_note"}
    assert "too few resampling units: 1 document over 8,202 positions" in note["bootstrap_note"]
    small = ref.memory_pair(8, n=100)
    assert "too few resampling units: 1 document over 100" in sweep_columns(Pair(*small[:2]),
                                                                              n_resamples=50)["bootstrap_note"]


@pytest.mark.parametrize("n,n_docs,want", [(99 * 4096, 40, ("doc", 40)), (99 * 4096 + 1, 40, ("block", 100)),
                                           (3000, None, None), (30 * 4096, None, ("block", 30)),
                                           (3000, 19, None), (3000, 20, ("doc", 20))])
def test_one_unit_rule(n, n_docs, want):
    """Documents, or 4,096-position blocks when there are at least 100 of them (or no documents); fewer than
    MIN_UNITS = 20 units of the chosen kind: refused, whatever the other kind would give."""
    doc = None if n_docs is None else (np.arange(n) * n_docs) // n
    if want is None:
        with pytest.raises(BootstrapError, match="too few resampling units") as e:
            choose_units(n, doc)
        assert f"at least {MIN_UNITS}" in str(e.value)
        return
    u = choose_units(n, doc)
    assert (u.kind, u.n_units) == want
    assert unit_kind(n, doc is not None) == want[0]
