"""Plots that only draw. Inputs are frames from `analysis` (sweeps, curves, tables); nothing is computed here
beyond choosing what to show. matplotlib is an optional dependency (the `plots` extra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _axes(ax):
    if ax is not None:
        return ax.figure, ax
    fig, ax = _plt().subplots(figsize=(6, 4))
    return fig, ax


def improvement_vs_beta(curves: dict[str, pl.DataFrame], metric: str = "ppl", ax=None, title: str | None = None):
    """Relative improvement (%) of the fused model against the best single model, against beta (log axis).

    ``curves``: label -> frame from `analysis.curves.relative_improvement_curve`.
    """
    fig, ax = _axes(ax)
    for label, c in curves.items():
        c = c.filter((pl.col("beta") > 0) & pl.col("beta").is_finite()).sort("beta")
        ax.plot(c["beta"].to_numpy(), c[f"rel_{metric}"].to_numpy(), label=label)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("beta = w / (1 - w)")
    ax.set_ylabel(f"relative improvement in {metric} (%)")
    ax.set_title(title or f"fused {metric} vs the best single model")
    ax.legend(fontsize=7)
    return fig


def alpha_vs_k(table: pl.DataFrame, ax=None, k_col: str = "k", title: str | None = None):
    """alpha (the best weight ratio) against the parameter ratio k, log-log; one marker per pair.

    ``table`` needs columns ``k_col``, ``alpha_nll`` and optionally ``alpha_acc``; infinite or zero alphas
    are not drawn (say so in the title).
    """
    fig, ax = _axes(ax)
    for col, marker in (("alpha_nll", "o"), ("alpha_acc", "s")):
        if col not in table.columns:
            continue
        k, a = table[k_col].to_numpy().astype(float), table[col].to_numpy().astype(float)
        ok = np.isfinite(a) & (a > 0) & np.isfinite(k) & (k > 0)
        ax.scatter(k[ok], a[ok], marker=marker, label=f"{col} ({(~ok).sum()} at 0/inf not drawn)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"parameter ratio {k_col}")
    ax.set_ylabel("alpha")
    ax.set_title(title or "AR law: alpha vs parameter ratio")
    ax.legend(fontsize=7)
    return fig


def partition_flips(sweep: pl.DataFrame, ax=None, title: str | None = None):
    """Per weight: T positions made right, F positions made wrong, both-wrong positions made right (certified
    lower/upper ends as a band), against beta (log axis)."""
    fig, ax = _axes(ax)
    s = sweep.filter((pl.col("beta") > 0) & pl.col("beta").is_finite()).sort("beta")
    beta = s["beta"].to_numpy()
    for name, label in (("t_fixed", "T made right"), ("f_broken", "F made wrong"), ("nww_fixed", "Nww made right")):
        lo, hi = s[f"{name}_lo"].to_numpy(), s[f"{name}_hi"].to_numpy()
        line, = ax.plot(beta, lo, label=label)
        if np.any(hi != lo):
            ax.fill_between(beta, lo, hi, color=line.get_color(), alpha=0.25)
    ax.set_xscale("log")
    ax.set_xlabel("beta = w / (1 - w)")
    ax.set_ylabel("positions")
    ax.set_title(title or "T/F/N flips")
    ax.legend(fontsize=7)
    return fig


def save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _plt().close(fig)
    return path
