"""Curves from sweeps, and the draw-only plots (written to PNG and read back)."""

import numpy as np
import polars as pl
import pytest

from analysis import Pair, relative_improvement
from analysis.curves import log_beta_grid, relative_improvement_curve
from analysis.errors import AnalysisError
from pipeline.store.synthetic import random_distributions, write_store_from_logprobs

plots = pytest.importorskip("analysis.plots")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("pair")
    targets, (la, lb) = random_distributions(400, 30, np.random.default_rng(3), noise=(0.8, 1.5))
    a = write_store_from_logprobs(d / "a.zarr", la, targets, 8, model="A", n_params=2_000_000)
    b = write_store_from_logprobs(d / "b.zarr", lb, targets, 8, model="B", n_params=500_000)
    return Pair(a, b)


def test_log_beta_grid_has_single_models_and_log_spaced_betas():
    w = log_beta_grid(5, 1e-2, 1e2)
    assert w[0] == 0.0 and w[-1] == 1.0
    betas = w[1:-1] / (1 - w[1:-1])
    np.testing.assert_allclose(np.log10(betas), [-2, -1, 0, 1, 2], atol=1e-12)


def test_relative_improvement_curve_matches_paper_formula(pair):
    curve = relative_improvement_curve(pair.sweep(log_beta_grid(21)))
    a = curve.filter(pl.col("w") == 1.0).row(0, named=True)
    b = curve.filter(pl.col("w") == 0.0).row(0, named=True)
    for row in curve.iter_rows(named=True):
        want = relative_improvement(row, a, b)
        for m in ("ppl", "bpc", "acc_lo"):
            assert row[f"rel_{m}"] == pytest.approx(want[m], nan_ok=True)
    # the better single model sits at 0, the worse below it
    assert max(a["rel_ppl"], b["rel_ppl"]) == pytest.approx(0.0)
    assert min(a["rel_ppl"], b["rel_ppl"]) < 0
    with pytest.raises(AnalysisError, match="w = 0 and w = 1"):
        relative_improvement_curve(pair.sweep(np.linspace(0.1, 0.9, 5)))


def test_plots_write_pngs(pair, tmp_path):
    from matplotlib.image import imread

    curve = relative_improvement_curve(pair.sweep(log_beta_grid(31)))
    table = pl.DataFrame({"k": [2.0, 4.0, 8.0, 3.0], "alpha_nll": [1.0, 2.5, 4.0, np.inf],
                          "alpha_acc": [0.5, 1.0, 3.0, 0.0]})
    files = [
        plots.save(plots.improvement_vs_beta({"A+B": curve}, "ppl"), tmp_path / "rel.png"),
        plots.save(plots.alpha_vs_k(table), tmp_path / "law.png"),
        plots.save(plots.partition_flips(curve), tmp_path / "tfn.png"),
    ]
    for f in files:
        img = imread(f)
        assert img.shape[0] > 100 and img.shape[1] > 100
        assert img[..., :3].std() > 0.01  # something was drawn


def test_plot_run_draws_every_pair_and_the_law(tmp_path):
    from analysis.sweep import AnalyzeSettings, run

    rng = np.random.default_rng(5)
    for split in ("valid", "test"):
        targets, models = random_distributions(300, 25, rng, n_models=3, noise=(0.6, 1.0, 1.6))
        for name, params, lp in zip(("big", "mid", "small"), (8_000_000, 2_000_000, 500_000), models):
            write_store_from_logprobs(tmp_path / "stores" / split / f"{name}.zarr", lp, targets, 8, model=name,
                                      n_params=params, split=split)
    frames = run(AnalyzeSettings(stores=tmp_path / "stores", out_dir=tmp_path / "run"))
    pngs = plots.plot_run(frames, tmp_path / "run" / "plots", skip_splits=("valid",))
    names = sorted(p.name for p in pngs)
    assert names == ["alpha_vs_k_synthetic_test.png", "pair_synthetic_test_big_vs_mid.png",
                     "pair_synthetic_test_big_vs_small.png", "pair_synthetic_test_mid_vs_small.png"]
    assert all(p.stat().st_size > 10_000 for p in pngs)


def test_pair_panels_titles_labels_and_legends(pair):
    """Regression (issue 12): the pair's name repeated in every legend and a third title cut off; now the pair goes
    in the figure title, each panel has a short title, axis labels say the unit, legends hold only what is drawn."""
    import matplotlib.pyplot as plt

    curve = relative_improvement_curve(pair.sweep(log_beta_grid(31)))
    fig, axes = plt.subplots(1, 3, layout="constrained")
    plots.improvement_vs_beta({"A+B": curve}, "ppl", ax=axes[0], optima={"A+B": 2.5})
    plots.improvement_vs_beta({"A+B": curve}, "acc_lo", ax=axes[1])
    plots.partition_flips(curve, ax=axes[2])
    assert axes[0].get_ylabel() == "relative improvement in PPL (%)"
    assert axes[1].get_ylabel() == "relative improvement in certified ACC (%)"
    assert all(ax.get_xlabel().startswith("β = w / (1 − w)") for ax in axes)
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["exact optimum β = 2.5"]
    assert axes[1].get_legend() is None  # one curve, no optimum: nothing to tell apart
    assert len(axes[2].get_legend().get_texts()) == 3
    assert all(ax.get_title() for ax in axes) and axes[2].get_ylabel().startswith("positions")
    plt.close(fig)


@pytest.mark.parametrize("lo,hi,want", [(1.7, 9.5, {"2", "3", "4", "5", "6", "7", "8", "9"}),
                                        (3.0, 60.0, {"5", "10", "20", "50"}),
                                        (1e-3, 1e4, set())])
def test_log_axis_ticks_are_plain_numbers_over_narrow_ranges(lo, hi, want):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([lo, hi], [lo, hi], "o")
    ax.set_xscale("log")
    ax.set_yscale("log")
    plots.readable_log_axis(ax)
    fig.canvas.draw()
    ticks = {t.get_text() for t in ax.get_xticklabels() if t.get_text()}
    minor = {t.get_text() for t in ax.get_xminorticklabels() if t.get_text()}
    assert not minor  # no labelled minor ticks to overlap
    if want:
        assert want <= ticks and not any("10^" in t or "times" in t for t in ticks)
    else:
        assert all("10^" in t or "10^{" in t or t.startswith("$") for t in ticks)  # decades, as powers of ten
    plt.close(fig)
