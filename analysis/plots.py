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


def improvement_vs_beta(curves: dict[str, pl.DataFrame], metric: str = "ppl", ax=None, title: str | None = None,
                        optima: dict[str, float] | None = None, focus: bool = True):
    """Relative improvement (%) of the fused model against the best single model, against beta (log axis).

    ``curves``: label -> frame from `analysis.curves.relative_improvement_curve`; ``optima``: label -> exact
    optimal beta, drawn as a dotted line. ``focus`` limits the y axis to the region near the best values (the
    curves fall steeply where the weaker model dominates).
    """
    fig, ax = _axes(ax)
    tops, bottoms = [], []
    for label, c in curves.items():
        c = c.filter((pl.col("beta") > 0) & pl.col("beta").is_finite()).sort("beta")
        y = c[f"rel_{metric}"].to_numpy()
        line, = ax.plot(c["beta"].to_numpy(), y, label=label)
        if optima and label in optima and 0 < optima[label] < np.inf:
            ax.axvline(optima[label], color=line.get_color(), ls=":", lw=1)
        finite = y[np.isfinite(y)]
        if finite.size:
            tops.append(finite.max())
            bottoms.append(finite.min())
    if focus and tops:
        top = max(max(tops), 0.0)
        span = max(top, 0.05)
        ax.set_ylim(max(min(bottoms), -4 * span), top + 0.5 * span)
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


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in str(s))


def plot_run(frames: dict, out_dir, skip_splits=()) -> list[Path]:
    """The PNGs of a sweep run (`analysis.sweep` frames): per pair, relative improvement in PPL and certified
    ACC against beta and the T/F/N flips; per dataset split, alpha against the parameter ratio k."""
    from .curves import relative_improvement_curve

    plt = _plt()
    out_dir = Path(out_dir)
    written = []
    pairs = frames.get("pairs")
    sweeps = frames.get("sweeps")
    if sweeps is not None and sweeps.height:
        keys = ["primary", "secondary", "dataset", "split"]
        for key, sw in sorted(sweeps.group_by(keys, maintain_order=True), key=lambda kv: kv[0]):
            primary, secondary, dataset, split = key
            if split in skip_splits:
                continue
            curve = relative_improvement_curve(sw)
            fig, axes = plt.subplots(1, 3, figsize=(15, 4))
            label = f"A={primary}, B={secondary}"
            opt = {}
            if pairs is not None and pairs.height:
                row = pairs.filter((pl.col("primary") == primary) & (pl.col("secondary") == secondary)
                                   & (pl.col("dataset") == dataset) & (pl.col("split") == split))
                opt = row.row(0, named=True) if row.height else {}
            improvement_vs_beta({label: curve}, "ppl", ax=axes[0], title=f"PPL, {dataset}/{split}",
                                optima={label: opt.get("alpha_nll", np.nan)})
            improvement_vs_beta({label: curve}, "acc_lo", ax=axes[1], title=f"certified ACC (lower), {dataset}/{split}",
                                optima={label: opt.get("alpha_acc", np.nan)})
            partition_flips(curve, ax=axes[2], title=f"T/F/N flips, {label}")
            written.append(save(fig, out_dir / f"pair_{_slug(dataset)}_{_slug(split)}_{_slug(primary)}_vs_"
                                               f"{_slug(secondary)}.png"))
    if pairs is not None and pairs.height and "k" in pairs.columns:
        for (dataset, split), p in sorted(pairs.group_by(["dataset", "split"], maintain_order=True),
                                          key=lambda kv: kv[0]):
            if split in skip_splits:
                continue
            k_from = p["k_from"][0] if "k_from" in p.columns else "k"
            fig = alpha_vs_k(p, title=f"alpha vs k ({k_from}), {dataset}/{split}")
            written.append(save(fig, out_dir / f"alpha_vs_k_{_slug(dataset)}_{_slug(split)}.png"))
    return written
