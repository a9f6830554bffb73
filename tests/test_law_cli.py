"""The law CLI end to end on a small family of stores (test + validation splits)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from analysis.law import LawSettings, run
from pipeline.store import StoreWriter
from pipeline.store.synthetic import arrays_from_logprobs, random_distributions, synthetic_attrs


def _write_family(root, seed, split, n=600, vocab=16, k=5):
    """Three models of one stream, each store with a token embedding table (for the similarity variant)."""
    rng = np.random.default_rng(seed)
    targets, lps = random_distributions(n, vocab, rng, n_models=3, noise=(0.6, 1.0, 1.6))
    doc = np.arange(n) // 30
    emb = (np.random.default_rng(99).standard_normal((vocab, 8)) + 1.0).astype(np.float32)
    for lp, name, params in zip(lps, ("big", "mid", "small"), (10 ** 9, 10 ** 8, 10 ** 7)):
        attrs = synthetic_attrs(name, n_params=params, split=split)
        w = StoreWriter(root / "syn" / split / f"{name}.zarr", n_positions=n, top_k=k, n_classes=vocab,
                        logprob_dtype="float16", attrs=attrs, setting_hash=f"{name}-{split}", chunk_size=256)
        with w:
            w.write(0, **arrays_from_logprobs(lp, targets, k, "float16", doc_id=doc))
            w.write_table("embedding", emb)
        w.close()


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("law")
    _write_family(root, 0, "test")
    _write_family(root, 1, "validation")
    return root


def test_law_run_writes_every_frame(stores, tmp_path):
    frames = run(LawSettings(stores=stores, out_dir=tmp_path, n_resamples=200, unit="doc", kfold=3,
                             rbp_ks=(1, 5, 10)))
    for name in ("points", "fits", "bootstrap", "theorems", "mainstay", "rbp_pairs", "rbp", "rbp_scaling",
                 "vocab", "multi", "similarity"):
        assert name in frames and frames[name].height > 0, name
        assert (tmp_path / f"{name}.parquet").is_file()
    bs = frames["bootstrap"]
    test_scopes = set(bs.filter(bs["split"] == "test")["scope"])
    assert test_scopes == {"in-sample", "held-out"}  # validation split exists: held-out, no K-fold
    assert set(bs.filter(bs["split"] == "validation")["scope"]) == {"in-sample", "k-fold"}
    assert frames["points"].height == 6 and "insample_alpha_nll_ci_lo" in frames["points"].columns
    assert set(frames["fits"]["primary"]) == {"big", "mid"}
    assert (tmp_path / "ar_law.png").is_file()
    md = (tmp_path / "law.md").read_text()
    assert "n_params_nonembed" in md and "Multi-model fusion" in md and "Similarity-based" in md
    # regression: a power law was fitted through 2 points (R^2 = 1); each primary here has at most 2 secondaries
    fits = frames["fits"]
    assert fits["p"].is_nan().all() and fits["r2"].is_nan().all()
    assert set(fits["note"]) == {"not fitted: 2 points < 3", "not fitted: 1 point < 3"}
    assert "not fitted: 2 points < 3" in md
    # the resampling unit and its count beside every interval
    assert set(bs["ci_unit"]) == {"doc"} and set(bs["ci_n_units"]) == {20}


@pytest.mark.slow
def test_law_cli_subprocess(stores, tmp_path):
    r = subprocess.run([sys.executable, "-m", "analysis.law", f"stores={stores}", f"hydra.run.dir={tmp_path}",
                        "law.n_resamples=100", "law.unit=doc", "law.plots=false"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "# AR law" in r.stdout
    assert (tmp_path / "fits.parquet").is_file()


def test_law_run_skips_the_bootstrap_of_too_small_pairs(stores, tmp_path):
    # 600 positions are a single 4,096-position block: no block bootstrap, everything else still runs.
    frames = run(LawSettings(stores=stores, out_dir=tmp_path, n_resamples=50, unit="block", kfold=0,
                             rbp_ks=(1,), multi=False, plots=False))
    assert "bootstrap" not in frames and frames["points"].height == 6
    assert frames["theorems"].height == 6
