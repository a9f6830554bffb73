"""The sweep table's bootstrap columns: present for every scope, seeded, and rendered in table.md."""

import numpy as np
import polars as pl

from analysis.sweep import AnalyzeSettings, render, run
from pipeline.store.synthetic import random_distributions, write_store_from_logprobs


def _stores(root, n=3000):
    rng = np.random.default_rng(5)
    for split in ("valid", "test"):
        targets, models = random_distributions(n, 25, rng, n_models=2, noise=(0.6, 1.4))
        for name, params, lp in zip(("big", "small"), (8_000_000, 1_000_000), models):
            write_store_from_logprobs(root / split / f"{name}.zarr", lp, targets, 8, model=name, n_params=params,
                                      split=split, doc_id=np.arange(n) // 100)


def test_sweep_gains_seeded_bootstrap_intervals(tmp_path):
    _stores(tmp_path / "s")
    cfg = AnalyzeSettings(stores=tmp_path / "s", out_dir=tmp_path / "r1", n_resamples=200)
    frames = run(cfg)
    test = frames["pairs"].filter(pl.col("split") == "test").row(0, named=True)
    valid = frames["pairs"].filter(pl.col("split") == "valid").row(0, named=True)
    assert (test["ci_unit"], test["ci_n_units"]) == ("doc", 30)  # 'auto' with fewer than 100 blocks: documents
    for scope in ("insample", "heldout"):  # test has a validation split: held-out intervals
        for stat in ("dppl", "dbpc", "dacc_lo"):
            assert test[f"{scope}_{stat}_ci_lo"] <= test[f"{scope}_{stat}_ci_hi"]
    assert "kfold_dppl_ci_lo" in valid and valid["kfold_dppl_ci_lo"] is not None  # no validation split of its own
    # the fused PPL gain at the in-sample optimum lies inside its interval
    gain = test["fused_ppl"] - frames["baselines"].filter((pl.col("model") == "big") & (pl.col("split") == "test"))["ppl"][0]
    assert test["insample_dppl_ci_lo"] <= gain <= test["insample_dppl_ci_hi"]
    again = run(AnalyzeSettings(stores=tmp_path / "s", out_dir=tmp_path / "r2", n_resamples=200))
    assert again["pairs"].equals(frames["pairs"])  # seeded: identical
    md = render(frames, cfg)
    assert "95% bootstrap intervals" in md and "dppl (heldout)" in md
    assert "| resampled |" in md
    assert md.count("30 documents") == 2  # the unit and count beside both pairs' intervals


def test_too_small_for_a_bootstrap_says_so(tmp_path):
    _stores(tmp_path / "s", n=150)
    cfg = AnalyzeSettings(stores=tmp_path / "s", out_dir=tmp_path / "r", n_resamples=200, bootstrap_unit="block")
    frames = run(cfg)
    notes = frames["pairs"]["bootstrap_note"]
    assert notes.str.contains("too few resampling units: 1 4,096-position block over 150 positions").all()
    assert "needs at least 20" in render(frames, cfg)
    assert not any(c.endswith("_ci_lo") for c in frames["pairs"].columns)  # no interval printed


def test_a_family_is_one_vocabulary_whatever_the_tokenizer_names(tmp_path):
    """Trained models save their tokenizer beside themselves, so the names differ while the vocabulary is one."""
    rng = np.random.default_rng(2)
    targets, models = random_distributions(400, 25, rng, n_models=3, noise=(0.6, 1.0, 1.4))
    for name, params, lp in zip(("m-big", "m-mid", "m-small"), (8_000_000, 3_000_000, 1_000_000), models):
        write_store_from_logprobs(tmp_path / "s" / f"{name}.zarr", lp, targets, 8, model=name, n_params=params,
                                  attrs={"tokenizer": {"name": f"stores/_models/{name}"}})
    cfg = AnalyzeSettings(stores=tmp_path / "s", out_dir=tmp_path / "r", n_resamples=0)
    frames = run(cfg)
    assert frames["pairs"].height == 3 and frames["pairs"]["family"].n_unique() == 1
    assert frames["pairs"]["family"][0].endswith("(m-big, m-mid, m-small)")
    assert frames["pairs"]["flags"].to_list() == ["", "", ""]  # equal vocabularies: nothing to flag
    assert render(frames, cfg).count("### vocabulary") == 1


def test_one_pair_one_interval_in_sweep_law_and_bootstrap(tmp_path):
    """Regression: the sweep resampled documents (30 here) while analysis.law and analysis.bootstrap(pair)
    resampled 4,096-position blocks, so one statistic had two different '95%' intervals. Now all three use
    `choose_units`: the same unit, the same count and (same seed) the same interval."""
    from analysis import Pair, bootstrap
    from analysis.law import LawSettings
    from analysis.law import run as law_run
    from pipeline.store import open_store

    _stores(tmp_path / "s")
    sweep = run(AnalyzeSettings(stores=tmp_path / "s", out_dir=tmp_path / "sweep", n_resamples=100,
                                write_sweeps=False))
    law = law_run(LawSettings(stores=tmp_path / "s", out_dir=tmp_path / "law", n_resamples=100, rbp_ks=(1,),
                              multi=False, plots=False))
    pair = Pair(open_store(tmp_path / "s" / "test" / "big.zarr"), open_store(tmp_path / "s" / "test" / "small.zarr"))
    row = sweep["pairs"].filter(pl.col("split") == "test").row(0, named=True)
    direct = bootstrap(pair, n_resamples=100, seed=0, heldout_w=(row["heldout_w_nll"], row["heldout_w_acc"]))
    lb = law["bootstrap"].filter(pl.col("split") == "test")
    pts = law["points"].filter(pl.col("split") == "test").row(0, named=True)
    for frame in (direct, lb):
        assert set(frame["ci_unit"]) == {"doc"} and set(frame["ci_n_units"]) == {30}
    assert (row["ci_unit"], row["ci_n_units"]) == (pts["ci_unit"], pts["ci_n_units"]) == ("doc", 30)
    n_checked = 0
    for r in direct.iter_rows(named=True):
        scope = r["scope"].replace("-", "")
        want = (r["ci_lo"], r["ci_hi"])
        in_law = lb.filter((pl.col("scope") == r["scope"]) & (pl.col("statistic") == r["statistic"]))
        assert (in_law["ci_lo"][0], in_law["ci_hi"][0]) == want
        assert (pts[f"{scope}_{r['statistic']}_ci_lo"], pts[f"{scope}_{r['statistic']}_ci_hi"]) == want
        if f"{scope}_{r['statistic']}_ci_lo" in row:
            assert (row[f"{scope}_{r['statistic']}_ci_lo"], row[f"{scope}_{r['statistic']}_ci_hi"]) == want
            n_checked += 1
    assert n_checked == 12  # in-sample: 8 statistics; held-out: the 4 gains
    md = (tmp_path / "law" / "law.md").read_text()
    assert "| ci_unit | ci_n_units |" in md and "| doc | 30 |" in md
