"""The law CLI on the Dask engine (analysis.engine=dask): points, fits and held-out weights equal the in-memory
engine's exactly; what needs every position in memory is reported as not computed, never a crash.

One stream of 4 models of different sizes (so the fixed primary has 3 secondaries and its alpha ~ k fit is a real
fit) on a test split, two of them also on a validation split (held-out weights for their test pair), 5,000 positions
in chunks of 1,000: heavy and light tasks (the NLL solver's waves) of 4,096 positions, two per wave and the last
partial, whose block sums are reduced across tasks.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

pytest.importorskip("dask")

from analysis.law import NOT_ON_DASK, LawSettings, run  # noqa: E402
from pipeline.store import StoreWriter  # noqa: E402
from pipeline.store.synthetic import arrays_from_logprobs, random_distributions, synthetic_attrs  # noqa: E402

MODELS = (("xl", 4 * 10 ** 9), ("big", 10 ** 9), ("mid", 10 ** 8), ("small", 10 ** 7))


def _write_family(root, seed, split, n=5_000, vocab=24, k=5, models=MODELS):
    rng = np.random.default_rng(seed)
    targets, lps = random_distributions(n, vocab, rng, n_models=4, noise=(0.5, 0.8, 1.1, 1.6))
    doc = np.arange(n) // 250
    for lp, (name, params) in zip(lps, models):
        attrs = synthetic_attrs(name, n_params=params, split=split)
        w = StoreWriter(root / "syn" / split / f"{name}.zarr", n_positions=n, top_k=k, n_classes=vocab,
                        logprob_dtype="float16", attrs=attrs, setting_hash=f"{name}-{split}", chunk_size=1000)
        with w:
            w.write(0, **arrays_from_logprobs(lp, targets, k, "float16", doc_id=doc))
        w.close()


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("lawdask")
    _write_family(root, 0, "test")
    _write_family(root, 1, "validation", models=MODELS[:2])
    return root


def _settings(stores, out, **kw):
    return LawSettings(stores=stores, out_dir=out, n_resamples=0, unit="doc", kfold=0, rbp_ks=(1, 5), multi=False,
                       plots=False, **kw)


@pytest.fixture(scope="module")
def local(stores, tmp_path_factory):
    return run(_settings(stores, tmp_path_factory.mktemp("local")))


def _same_results(local, dk):
    pts = dk["points"]
    assert pts.height == 7  # 6 test pairs, 1 validation pair
    assert_frame_equal(local["points"].select(pts.columns).drop("bootstrap_note"), pts.drop("bootstrap_note"),
                       check_exact=True)
    assert_frame_equal(local["fits"], dk["fits"], check_exact=True)
    for name in ("rbp", "rbp_scaling", "vocab"):  # streamed: computed on either engine
        assert_frame_equal(local[name], dk[name], check_exact=True)


def test_law_on_dask_equals_local(stores, local, tmp_path, monkeypatch):
    import analysis.engines.dask as engine

    graphs = []
    real = engine.prefetch
    monkeypatch.setattr(engine, "prefetch", lambda pairs, *a: (graphs.append(len(pairs)), real(pairs, *a))[1])
    dk = run(_settings(stores, tmp_path, engine="dask", dask={"group": 4096, "light_group": 4096, "n_workers": 2}))
    assert graphs == [7]  # every pair of both splits prefetched as one graph
    _same_results(local, dk)
    pts = dk["points"]
    # the held-out weights of the test pair (xl, big) come from its validation pair
    held = pts.filter(pl.col("heldout_split").is_not_null())
    assert held.select("primary", "secondary", "split").rows() == [("xl", "big", "test")]
    assert held["heldout_w_nll"].is_finite().all() and held["heldout_alpha_nll"][0] > 0
    # the law is a fit here (xl has 3 secondaries): a finite slope on both engines
    xl = dk["fits"].filter((pl.col("primary") == "xl") & (pl.col("metric") == "alpha_nll") & (pl.col("split") == "test"))
    assert xl.height == 1 and xl["p"].is_finite().all() and xl["n_points"][0] == 3
    # in-memory-only analyses: not computed, said so in the frames and in law.md, no crash
    for name in NOT_ON_DASK:
        assert name not in dk
    assert set(dk["not_computed"]["analysis"]) == set(NOT_ON_DASK) - {"multi"}
    assert set(pts["bootstrap_note"]) == {"not computed on the dask engine: rerun with analysis.engine=local"}
    md = (tmp_path / "law.md").read_text()
    assert "## Not computed on the dask engine" in md and "analysis.engine=local" in md
    assert "Appendix A checks" not in md and (tmp_path / "not_computed.csv").is_file()


def test_law_config_takes_the_engine_settings(stores, tmp_path):
    from hydra import compose, initialize_config_dir

    from analysis.law import __file__ as law_file

    conf = str(__import__("pathlib").Path(law_file).resolve().parents[1] / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose("law", overrides=[f"stores={stores}", "analysis.engine=dask", "analysis.dask.group=8192",
                                        "analysis.dask.address=tcp://host:8786", "law.n_resamples=7",
                                        "law.unit=doc"])
        plain = compose("law", overrides=[f"stores={stores}"])
    s = LawSettings.from_cfg(cfg, tmp_path)
    assert (s.engine, s.dask["group"], s.dask["address"], s.n_resamples, s.unit) == \
        ("dask", 8192, "tcp://host:8786", 7, "doc")
    assert LawSettings.from_cfg(plain, tmp_path).engine == "local"  # the default: in memory


def test_law_rejects_an_unknown_engine(stores, tmp_path):
    from analysis.errors import SettingsError

    with pytest.raises(SettingsError, match="not one of"):
        _settings(stores, tmp_path, engine="spark")


@pytest.mark.slow
def test_law_on_a_local_cluster_equals_local(stores, local, tmp_path):
    dk = run(_settings(stores, tmp_path, engine="dask",
                       dask={"cluster": "local", "n_workers": 2, "threads_per_worker": 1, "memory_limit": "1GB"}))
    _same_results(local, dk)
