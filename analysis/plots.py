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
    fig, ax = _plt().subplots(figsize=(6, 4), layout="constrained")
    return fig, ax


METRIC_NAMES = {"ppl": "PPL", "bpc": "BPC", "bpb": "BPB", "acc_lo": "certified ACC",
                "acc_hi": "ACC (upper bound)", "nll": "NLL"}
BETA_LABEL = "β = w / (1 − w)  (weight of A relative to B)"
SPLIT_MARKERS = ("o", "s", "^", "D", "v", "P")
SPLIT_LINES = ("-", "--", ":", "-.")


def _plain(v, _pos=None) -> str:
    """A tick label as a plain number: 0.2, 1, 1.5, 30, 2,000."""
    if v >= 1000:
        return f"{v:,.0f}"
    return f"{v:.6g}"


def readable_log_axis(ax, which: str = "both") -> None:
    """Readable ticks on a log axis: over less than 2.5 decades, plain numbers at 1-2-5 steps (every integer
    multiple below one decade) instead of labelled minor ticks like '3x10^0' that overlap; over more, labelled
    decades only. Call after everything is drawn (the axis limits decide)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.autoscale_view()
    for name in ("x", "y") if which == "both" else (which,):
        axis = ax.xaxis if name == "x" else ax.yaxis
        if axis.get_scale() != "log":
            continue
        lo, hi = sorted(ax.get_xlim() if name == "x" else ax.get_ylim())
        if not (lo > 0 and np.isfinite(hi)):
            continue
        decades = np.log10(hi / lo)
        if decades < 2.5:
            subs = (1.0, 2.0, 5.0) if decades >= 1 else tuple(float(m) for m in range(1, 10))
            axis.set_major_locator(LogLocator(base=10, subs=subs))
            axis.set_major_formatter(FuncFormatter(_plain))
        axis.set_minor_formatter(NullFormatter())


def improvement_vs_beta(curves: dict[str, pl.DataFrame], metric: str = "ppl", ax=None, title: str | None = None,
                        optima: dict[str, float] | None = None, focus: bool = True):
    """Relative improvement (%) of the fused model against the best single model, against beta (log axis).

    ``curves``: label -> frame from `analysis.curves.relative_improvement_curve`; ``optima``: label -> exact
    optimal beta, drawn as a dotted line. ``focus`` limits the y axis to the region near the best values (the
    curves fall steeply where the weaker model dominates).
    """
    fig, ax = _axes(ax)
    tops, bottoms = [], []
    several = len(curves) > 1
    for label, c in curves.items():
        c = c.filter((pl.col("beta") > 0) & pl.col("beta").is_finite()).sort("beta")
        y = c[f"rel_{metric}"].to_numpy()
        line, = ax.plot(c["beta"].to_numpy(), y, label=label if several else None)
        if optima and label in optima and optima[label] is not None and 0 < optima[label] < np.inf:
            ax.axvline(optima[label], color=line.get_color(), ls=":", lw=1,
                       label=f"exact optimum β = {optima[label]:.3g}" + (f" ({label})" if several else ""))
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
    readable_log_axis(ax, "x")
    name = METRIC_NAMES.get(metric, metric)
    ax.set_xlabel(BETA_LABEL)
    ax.set_ylabel(f"relative improvement in {name} (%)")
    ax.set_title(title or f"Fused {name} vs the best single model")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return fig


def alpha_vs_k(table: pl.DataFrame, ax=None, k_col: str = "k", title: str | None = None):
    """alpha (the best weight ratio) against the parameter ratio k, log-log; one marker per pair, coloured by
    primary (when the table has one), shaped by the optimum (NLL: circles, certified ACC: squares).

    ``table`` needs columns ``k_col``, ``alpha_nll`` and optionally ``alpha_acc``, ``primary``, ``k_from``;
    infinite or zero alphas cannot sit on a log axis: the legend counts them. The legend lists only what is drawn.
    """
    from matplotlib.lines import Line2D

    fig, ax = _axes(ax)
    cycle = _plt().rcParams["axes.prop_cycle"].by_key()["color"]
    prim = table["primary"].cast(pl.Utf8).to_list() if "primary" in table.columns else [""] * table.height
    colours = {p: cycle[i % len(cycle)] for i, p in enumerate(dict.fromkeys(prim))}
    k = table[k_col].to_numpy().astype(float)
    handles, drawn_prim = [], set()
    for col, marker, name in (("alpha_nll", "o", "α for NLL"), ("alpha_acc", "s", "α for certified ACC")):
        if col not in table.columns:
            continue
        a = table[col].to_numpy().astype(float)
        ok = np.isfinite(a) & (a > 0) & np.isfinite(k) & (k > 0)
        if ok.any():
            ax.scatter(k[ok], a[ok], marker=marker, c=[colours[p] for p, o in zip(prim, ok) if o])
            drawn_prim.update(p for p, o in zip(prim, ok) if o)
            missing = f"; {int((~ok).sum())} at 0 or ∞ not drawn" if (~ok).any() else ""
            handles.append(Line2D([], [], ls="", marker=marker, color="grey", label=name + missing))
    if len(drawn_prim) > 1 or drawn_prim - {""}:
        handles = [Line2D([], [], ls="", marker="o", color=colours[p], label=f"primary {p}")
                   for p in colours if p in drawn_prim] + handles
    ax.set_xscale("log")
    ax.set_yscale("log")
    readable_log_axis(ax)
    k_from = f" ({table['k_from'][0]})" if "k_from" in table.columns and table.height else ""
    ax.set_xlabel(f"parameter ratio k = |A| / |B|{k_from}")
    ax.set_ylabel("optimal weight ratio α = w* / (1 − w*)")
    ax.set_title(title or "AR law: α against the parameter ratio")
    if handles:
        ax.legend(handles=handles, fontsize=7)
    return fig


def partition_flips(sweep: pl.DataFrame, ax=None, title: str | None = None):
    """Per weight: T positions made right, F positions made wrong, both-wrong positions made right (certified
    lower/upper ends as a band), against beta (log axis)."""
    fig, ax = _axes(ax)
    s = sweep.filter((pl.col("beta") > 0) & pl.col("beta").is_finite()).sort("beta")
    beta = s["beta"].to_numpy()
    banded = False
    for name, label in (("t_fixed", "T (A wrong, B right) made right"), ("f_broken", "F (A right, B wrong) made wrong"),
                        ("nww_fixed", "both wrong, made right")):
        lo, hi = s[f"{name}_lo"].to_numpy(), s[f"{name}_hi"].to_numpy()
        line, = ax.plot(beta, lo, label=label)
        if np.any(hi != lo):
            ax.fill_between(beta, lo, hi, color=line.get_color(), alpha=0.25, lw=0)
            banded = True
    ax.set_xscale("log")
    readable_log_axis(ax, "x")
    ax.set_xlabel(BETA_LABEL)
    ax.set_ylabel("positions (certified lower bound" + ("; band: to upper)" if banded else ")"))
    ax.set_title(title or "Positions whose correctness the fusion flips")
    ax.legend(fontsize=7)
    return fig


def save(fig, path) -> Path:
    """Write a PNG with nothing cut off (constrained layout where set, else tight; tight bounding box)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
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
            fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), layout="constrained")
            label = f"A={primary}, B={secondary}"
            opt = {}
            if pairs is not None and pairs.height:
                row = pairs.filter((pl.col("primary") == primary) & (pl.col("secondary") == secondary)
                                   & (pl.col("dataset") == dataset) & (pl.col("split") == split))
                opt = row.row(0, named=True) if row.height else {}
            # the pair and the data once, in the figure's title; short panel titles that fit their panels
            fig.suptitle(f"Fusion of A = {primary} (primary) and B = {secondary} on {dataset} / {split}")
            improvement_vs_beta({label: curve}, "ppl", ax=axes[0], title="PPL against the best single model",
                                optima={label: opt.get("alpha_nll", np.nan)})
            improvement_vs_beta({label: curve}, "acc_lo", ax=axes[1],
                                title="Certified ACC against the best single model",
                                optima={label: opt.get("alpha_acc", np.nan)})
            partition_flips(curve, ax=axes[2], title="Positions flipped by the fusion")
            written.append(save(fig, out_dir / f"pair_{_slug(dataset)}_{_slug(split)}_{_slug(primary)}_vs_"
                                               f"{_slug(secondary)}.png"))
    if pairs is not None and pairs.height and "k" in pairs.columns:
        for (dataset, split), p in sorted(pairs.group_by(["dataset", "split"], maintain_order=True),
                                          key=lambda kv: kv[0]):
            if split in skip_splits:
                continue
            fig = alpha_vs_k(p, title=f"AR law: α against the parameter ratio, {dataset} / {split}")
            written.append(save(fig, out_dir / f"alpha_vs_k_{_slug(dataset)}_{_slug(split)}.png"))
    return written
