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
    assert test["bootstrap_unit"] == "doc"  # 'auto' with fewer than 100 blocks: documents
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


def test_too_small_for_a_bootstrap_says_so(tmp_path):
    _stores(tmp_path / "s", n=150)
    cfg = AnalyzeSettings(stores=tmp_path / "s", out_dir=tmp_path / "r", n_resamples=200, bootstrap_unit="block")
    frames = run(cfg)
    assert frames["pairs"]["bootstrap_note"].str.contains("at least 2").all()
    assert "at least 2" in render(frames, cfg)


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
