"""Plot functions only draw: each puts the expected artists on the axes it is given."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import reference as ref  # noqa: E402
import reference_law as rl  # noqa: E402

from analysis import Pair  # noqa: E402
from analysis.bootstrap import plot_intervals  # noqa: E402
from analysis.multi import MultiData, em_weights, geometric_sweep, plot_geometric_sweep  # noqa: E402
from analysis.rbp import plot_rbp_scaling, rbp_scaling  # noqa: E402
from analysis.similarity import plot_similarity_sweep, similarity_sweep  # noqa: E402


def test_plots_draw_their_series():
    fig, axes = plt.subplots(2, 2)
    frame = pl.DataFrame({"statistic": ["dppl", "dppl", "dacc_lo"], "scope": ["in-sample", "held-out", "in-sample"],
                          "primary": ["A"] * 3, "secondary": ["B"] * 3, "estimate": [-1.0, -0.8, 0.01],
                          "ci_lo": [-1.2, -1.1, 0.0], "ci_hi": [-0.7, -0.5, 0.02]})
    ax = plot_intervals(frame, "dppl", ax=axes[0, 0])
    assert len(ax.get_yticks()) == 2
    stores, *_ = rl.memory_family(0, n=200)
    md = MultiData.load(stores)
    ax = plot_geometric_sweep(geometric_sweep(md, [0.0, 0.1, 1.0]), em_weights(md.p).nll, ax=axes[0, 1])
    assert len(ax.lines) == 2
    params = {"s": 1e6, "m": 1e7, "l": 1e8}
    rbp = pl.DataFrame([{"model": m, "k": k, "rbp": float(np.exp(-n ** -0.2))} for m, n in params.items() for k in (1, 5)])
    ax = plot_rbp_scaling(rbp, params, rbp_scaling(rbp, params), ax=axes[1, 0])
    assert len(ax.lines) == 4
    sa, sb, *_ = ref.memory_pair(0, n=100)
    sw = similarity_sweep(Pair(sa, sb), np.random.default_rng(0).standard_normal((12, 4)) + 1, ps=[0.0, 1.0, 2.0])
    ax = plot_similarity_sweep(sw, ax=axes[1, 1])
    assert len(ax.lines) == 1
    plt.close(fig)


def _texts(labels):
    return [t.get_text() for t in labels]


def test_ar_law_plot_titles_labels_and_a_legend_of_what_is_drawn():
    """Regression (issue 12): no title, models without points in the legend, the test and valid points at one
    k unlabelled, '1.52x10^2'-style ticks over a narrow range, a fit drawn through 2 points."""
    from analysis.law import ar_law, plot_ar_law

    rows = []
    for split, shift in (("test", 1.0), ("valid", 0.9)):
        rows += [{"primary": "L", "k": k, "alpha_nll": shift * k ** 0.5} for k in (2.0, 4.0, 8.0)]
        rows += [{"primary": "M", "k": k, "alpha_nll": shift * k} for k in (2.0, 4.0)]  # 2 points: no fit
        rows += [{"primary": "N", "k": 3.0, "alpha_nll": float("nan")}]  # no optimum: nothing drawn
        rows[-6:] = [{**r, "dataset": "wiki", "split": split, "k_from": "n_params_nonembed"} for r in rows[-6:]]
    pts = pl.DataFrame(rows)
    fits = ar_law(pts, metrics=("alpha_nll",))
    fig, ax = plt.subplots(layout="constrained")
    plot_ar_law(pts, fits, "alpha_nll", ax=ax)
    fig.canvas.draw()
    assert ax.get_title() == "AR law: α for NLL against k"
    assert ax.get_xlabel() == "parameter ratio k = |A| / |B| (n_params_nonembed)"
    assert "α" in ax.get_ylabel()
    legend = ax.get_legend()
    labels = _texts(legend.get_texts())
    assert labels[:4] == ["primary L", "primary M", "test", "valid"]  # N has no point on a log axis
    assert not any("N" in t for t in labels[:4])
    fit_labels = [t for t in labels if t.startswith("fit ")]
    assert [t.split(":")[0] for t in fit_labels] == ["fit L (test)", "fit L (valid)"]  # not M: 2 points
    assert "p = 0.50" in fit_labels[0]
    assert legend.get_title().get_text() == "no fit for M (fewer than 3 finite points)"
    markers = {line.get_marker() for line in ax.lines if line.get_linestyle() == "None"}
    assert {"o", "s"} <= markers  # the splits drawn with different markers
    for tick in _texts(ax.get_xticklabels()) + _texts(ax.get_yticklabels()):  # narrow ranges: plain numbers
        assert "10^" not in tick and "times" not in tick and "×" not in tick
    assert {"2", "5"} <= set(_texts(ax.get_xticklabels()))
    plt.close(fig)


def test_interval_plot_names_pair_split_scope_and_units():
    frame = pl.DataFrame({"statistic": ["dppl"] * 2, "scope": ["in-sample", "in-sample"], "primary": ["A"] * 2,
                          "secondary": ["B"] * 2, "dataset": ["wiki"] * 2, "split": ["test", "valid"],
                          "estimate": [-1.0, -0.8], "ci_lo": [-1.2, -1.1], "ci_hi": [-0.7, -0.5],
                          "ci_unit": ["doc"] * 2, "ci_n_units": [300, 120], "level": [0.95] * 2})
    fig, ax = plt.subplots()
    plot_intervals(frame, "dppl", ax=ax)
    assert _texts(ax.get_yticklabels()) == ["A + B, wiki/test, in-sample, 300 docs",
                                           "A + B, wiki/valid, in-sample, 120 docs"]
    assert ax.get_title() == "dppl: estimate and 95% bootstrap interval"
    plt.close(fig)


def test_ar_law_plot_keeps_its_axes_wide_when_many_primaries_are_not_fitted():
    """Regression (the demo with image and protein families): one line naming every primary without a fit, in the
    legend's title, squeezed the two panels of ar_law.png to slivers with overlapping tick labels."""
    from analysis.law import ar_law, plot_ar_law

    names = [f"a-rather-long-model-name-{i}" for i in range(8)]
    pts = pl.DataFrame([{"primary": n, "k": k, "alpha_nll": 10.0 * k, "dataset": "d", "split": "test",
                         "k_from": "n_params_nonembed"} for n in names for k in (2.0, 50.0)])
    fits = ar_law(pts, metrics=("alpha_nll",))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), layout="constrained")
    for ax in axes:
        plot_ar_law(pts, fits, "alpha_nll", ax=ax)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns when the constrained layout cannot make room
        fig.canvas.draw()
    for ax in axes:
        assert ax.get_position().width > 0.3  # each panel keeps most of its half of the figure
        title = ax.get_legend().get_title().get_text()
        assert all(n in title for n in names) and max(len(line) for line in title.splitlines()) <= 70
    plt.close(fig)
