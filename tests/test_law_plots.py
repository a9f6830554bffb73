"""Plot functions only draw: each puts the expected artists on the axes it is given."""

from __future__ import annotations

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
