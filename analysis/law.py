"""The AR law across a family of models (issue 7.2), and the `python -m analysis.law` CLI.

For each fixed primary A and secondaries B of one family (one token stream), the pair's optimal ratio
alpha and improvement-domain bound D are points against the parameter ratio k = |A| / |B| (non-embedding
counts by default, ``param_count="n_params"`` for totals; the column ``k_from`` says which). The law is
the log-log fit
    log alpha = log c + p log k       (ordinary least squares over the points with 0 < alpha < inf)
with the points at alpha = 0 or alpha = inf excluded and counted. p's standard error needs at least 3
points: se(p) = sqrt(SSR / (n - 2) / Sxx), Sxx = sum (log k - mean log k)^2; R^2 = 1 - SSR / SST.

CLI: ``python -m analysis.law stores=DIR`` writes law points and fits, bootstrap intervals, RBP, theorem
checks, vocabulary use and multi-model fusion to the Hydra run directory (see `conf/law.yaml`).
``analysis.engine=dask`` builds the pairs on the Dask engine (`analysis.sweep.engine`, as the sweep CLI):
every pair of every family and dataset goes into one task graph, and the points, fits and held-out weights equal
the in-memory engine's bit for bit. What needs a pair's every position in memory (bootstrap intervals, theorem
checks, the mainstay deviation, the fusion's RBP, the similarity variant, multi-model fusion) is not computed
there; ``not_computed`` and law.md say so. Single-model RBP and vocabulary use stream the stores chunk by chunk
and are computed on either engine.
"""

from __future__ import annotations

import logging
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from .errors import AnalysisError, check_cli_settings
from .fits import MIN_FIT_POINTS, LawFitError, fit_power_law  # noqa: F401  (re-exported)
from .table import markdown

log = logging.getLogger(__name__)

LAW_METRICS = ("alpha_nll", "alpha_acc", "d_nll", "d_acc")
RERUN = "rerun with analysis.engine=local"
# analyses that need a pair's (or a family's) every position in memory: not computed on the dask engine
NOT_ON_DASK = {
    "bootstrap": "bootstrap intervals (they resample every position in memory)",
    "theorems": "appendix A checks (they read the pair's per-position arrays, Pair.data)",
    "mainstay": "mainstay deviation (it reads the pair's per-position arrays, Pair.data)",
    "rbp_pairs": "RBP of the fusion (it holds per-position counts of the whole pair)",
    "similarity": "similarity-based variant (it holds the primary's top-K lists of the whole pair)",
    "multi": "multi-model fusion (its EM holds every store of the stream in memory)",
}


def law_points(pairs, param_count: str = "n_params_nonembed") -> pl.DataFrame:
    """One row per `analysis.Pair`: primary, secondary, dataset, split, k, k_from and the exact optima."""
    rows = []
    for pair in pairs:
        opt = pair.optimum()
        ds = pair.primary.dataset
        rows.append({"primary": pair.names[0], "secondary": pair.names[1], "dataset": ds.get("name"),
                     "split": ds.get("split"), "k": pair.param_ratio(param_count), "k_from": param_count,
                     "alpha_nll": opt.alpha_nll, "d_nll": opt.d_nll, "alpha_acc": opt.alpha_acc, "d_acc": opt.d_acc})
    return pl.DataFrame(rows, schema={"primary": pl.Utf8, "secondary": pl.Utf8, "dataset": pl.Utf8,
                                      "split": pl.Utf8, "k": pl.Float64, "k_from": pl.Utf8,
                                      **{m: pl.Float64 for m in LAW_METRICS}})


def ar_law(points: pl.DataFrame, metrics=LAW_METRICS, by=("primary", "dataset", "split")) -> pl.DataFrame:
    """Fit alpha (and D) ~ c k^p for each fixed primary (and dataset, split); see `fit_power_law`.

    ``points``: a frame with columns k, k_from, the ``by`` columns and the metrics (e.g. `law_points`, or the
    sweep CLI's pairs table).
    """
    missing = [c for c in ("k", *by, *metrics) if c not in points.columns]
    if missing:
        raise LawFitError(f"the points frame lacks columns {missing}; it has {points.columns}")
    rows = []
    if points.height == 0:
        return pl.DataFrame(schema={**{c: pl.Utf8 for c in by}, "metric": pl.Utf8, "k_from": pl.Utf8})
    for key, grp in points.group_by(list(by), maintain_order=True):
        for m in metrics:
            fit = fit_power_law(grp["k"].to_numpy(), grp[m].to_numpy())
            k_from = grp["k_from"][0] if "k_from" in grp.columns else "n_params_nonembed"
            rows.append({**dict(zip(by, key)), "metric": m, "k_from": k_from, **fit})
    return pl.DataFrame(rows)


METRIC_TITLES = {"alpha_nll": ("α for NLL", "optimal weight ratio α = w* / (1 − w*)"),
                 "alpha_acc": ("α for certified ACC", "optimal weight ratio α (certified ACC)"),
                 "d_nll": ("D for NLL", "improvement-domain bound D (in β = w / (1 − w))"),
                 "d_acc": ("D for certified ACC", "improvement-domain bound D (in β, certified ACC)")}


def plot_ar_law(points: pl.DataFrame, fits: pl.DataFrame, metric: str = "alpha_nll", ax=None):
    """Log-log scatter of ``metric`` against k: colour = primary, marker = dataset/split, with each fitted
    line (per primary and split, line style = split). Points at 0 / inf are drawn as open markers at the plot's
    edge; fits refused for too few points are listed under the plot. The legend lists only what is drawn.
    Only draws; returns the axes."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from .plots import SPLIT_LINES, SPLIT_MARKERS, readable_log_axis

    ax = ax or plt.gca()
    has_ds = "dataset" in points.columns and "split" in points.columns
    groups = list(dict.fromkeys(zip(points["dataset"], points["split"]))) if has_ds else [(None, None)]
    one_ds = len({g[0] for g in groups}) == 1
    gname = {g: (str(g[1]) if one_ds else f"{g[0]} / {g[1]}") for g in groups}
    style = {g: (SPLIT_MARKERS[i % len(SPLIT_MARKERS)], SPLIT_LINES[i % len(SPLIT_LINES)]) for i, g in enumerate(groups)}
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = {p: cycle[i % len(cycle)] for i, p in enumerate(dict.fromkeys(points["primary"].to_list()))}
    finite_y = points[metric].to_numpy()
    finite_y = finite_y[np.isfinite(finite_y) & (finite_y > 0)]
    drawn_prim, drawn_groups, fit_handles, not_fitted = [], [], [], []
    for prim in colours:
        for g in groups:
            grp = points.filter(pl.col("primary") == prim)
            if has_ds:
                grp = grp.filter((pl.col("dataset") == g[0]) & (pl.col("split") == g[1]))
            if not grp.height:
                continue
            k, y = grp["k"].to_numpy(), grp[metric].to_numpy()
            ok = np.isfinite(y) & (y > 0)
            edge = ((y == 0) | np.isposinf(y)) & bool(finite_y.size)  # NaN (no optimum): not drawn at all
            marker, ls = style[g]
            if ok.any():
                ax.plot(k[ok], y[ok], marker, color=colours[prim], ls="")
            if edge.any():
                ax.plot(k[edge], np.where(np.isinf(y[edge]), finite_y.max() * 1.5, finite_y.min() / 1.5), marker,
                        mfc="none", color=colours[prim], ls="")
            if ok.any() or edge.any():
                drawn_prim.append(prim)
                drawn_groups.append(g)
            fit = fits.filter((pl.col("primary") == prim) & (pl.col("metric") == metric))
            if has_ds and "dataset" in fits.columns:
                fit = fit.filter((pl.col("dataset") == g[0]) & (pl.col("split") == g[1]))
            if not fit.height:
                continue
            f = fit.row(0, named=True)
            if f.get("note") or not math.isfinite(f["p"]):
                if ok.any() or edge.any():
                    not_fitted.append(prim)
                continue
            xs = np.geomspace(k[ok].min(), k[ok].max(), 50)
            ax.plot(xs, f["c"] * xs ** f["p"], ls=ls, color=colours[prim])
            se = f" ± {f['p_se']:.2f}" if math.isfinite(f["p_se"]) else ""
            r2 = f", R² = {f['r2']:.2f}" if math.isfinite(f["r2"]) else ""
            fit_handles.append(Line2D([], [], ls=ls, color=colours[prim],
                                      label=f"fit {prim} ({gname[g]}): p = {f['p']:.2f}{se}{r2}"))
    handles = [Line2D([], [], ls="", marker="o", color=colours[p], label=f"primary {p}")
               for p in dict.fromkeys(drawn_prim)]
    handles += [Line2D([], [], ls="", marker=style[g][0], color="grey", label=gname[g])
                for g in dict.fromkeys(drawn_groups) if g != (None, None)]
    handles += fit_handles
    all_y = points[metric].to_numpy()
    if ((all_y == 0) | np.isposinf(all_y)).any() and finite_y.size:
        handles.append(Line2D([], [], ls="", marker="o", mfc="none", color="grey", label="at 0 or ∞ (plot edge)"))
    ax.set_xscale("log")
    ax.set_yscale("log")
    readable_log_axis(ax)
    k_from = points["k_from"][0] if points.height and "k_from" in points.columns else ""
    ax.set_xlabel(f"parameter ratio k = |A| / |B| ({k_from})")
    title, ylabel = METRIC_TITLES.get(metric, (metric, metric))
    ax.set_ylabel(ylabel)
    ax.set_title(f"AR law: {title} against k")
    if handles:  # below the axes: never over a point
        nf = ", ".join(dict.fromkeys(not_fitted))
        # wrapped to about the legend's width, so that a long list of primaries never squeezes the axes
        note = "\n".join(textwrap.wrap(f"no fit for {nf} (fewer than {MIN_FIT_POINTS} finite points)", 70,
                                       break_on_hyphens=False, break_long_words=False))
        ax.legend(handles=handles, fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2,
                  title=note if nf else None, title_fontsize="small", frameon=False)
    return ax


# ---------------------------------------------------------------------------------------------- CLI
@dataclass(frozen=True)
class LawSettings:
    stores: Path
    out_dir: Path
    n_resamples: int = 1000
    seed: int = 0
    unit: str = "auto"
    level: float = 0.95
    kfold: int = 5
    valid_splits: tuple = ("validation", "valid", "val", "dev")
    param_count: str = "n_params_nonembed"
    order: str = "auto"
    rbp_ks: tuple = (1, 5, 10, 50, 100, 1000)
    mainstay_top: int = 10
    multi: bool = True
    multi_tol: float = 1e-10
    plots: bool = True
    engine: str = "local"  # "dask": pairs on analysis.engines.dask (see the module docstring); settings in ``dask``
    dask: dict = field(default_factory=dict)

    def __post_init__(self):
        check_cli_settings(self.stores, self.order, self.param_count, (), ("auto", "block", "doc"), self.unit)
        from .engines import check_engine

        check_engine(self.engine)

    @classmethod
    def from_cfg(cls, cfg, out_dir) -> LawSettings:
        c = cfg.law
        a = cfg.get("analysis") or {}
        return cls(stores=Path(str(cfg.stores)), out_dir=Path(out_dir), n_resamples=int(c.n_resamples),
                   seed=int(c.seed), unit=str(c.unit), level=float(c.level), kfold=int(c.kfold),
                   valid_splits=tuple(c.valid_splits), param_count=str(c.param_count), order=str(c.order),
                   rbp_ks=tuple(int(k) for k in c.rbp_ks), mainstay_top=int(c.mainstay_top), multi=bool(c.multi),
                   multi_tol=float(c.multi_tol), plots=bool(c.plots), engine=str(a.get("engine", "local")),
                   dask={k: v for k, v in (a.get("dask") or {}).items()})


def _name(s) -> str:
    return str(s.model.get("name", s.path))


def _groups(root: Path) -> tuple[dict, list]:
    from pipeline.store import StoreError, find_stores, open_store

    groups, skipped = {}, []
    for p in find_stores(root):
        if "_runs" in p.parts:
            continue
        try:
            s = open_store(p)
        except StoreError as e:
            log.warning("skipping %s: %s", p, e)
            skipped.append({"store": str(p), "reason": str(e)})
            continue
        if isinstance(s.attrs.get("task"), dict):  # items and options, not a text stream: analysis.TaskPair
            skipped.append({"store": str(p), "reason": "task store: see python -m analysis.sweep (analysis.TaskPair)"})
            continue
        groups.setdefault(s.stream_hash, []).append(s)
    return groups, skipped



def _study_pair(pair, names, dataset, split, pairs: dict, cfg) -> dict[str, list]:
    """Every per-pair frame of the law run (points with bootstrap columns, theorems, mainstay, RBP, similarity)."""
    from .bootstrap import BootstrapError, bootstrap, table_columns
    from .rbp import pair_rbp
    from .similarity import similarity_sweep
    from .theorems import mainstay_deviation, theorem_checks

    got: dict[str, list] = {k: [] for k in ("points", "bootstrap", "theorems", "mainstay", "rbp_pairs", "similarity")}
    tag = {"primary": names[0], "secondary": names[1], "dataset": dataset, "split": split}
    valid_split = None
    if split not in cfg.valid_splits:
        valid_split = next((vs for vs in cfg.valid_splits if (names, dataset, vs) in pairs), None)
    valid = pairs[(names, dataset, valid_split)] if valid_split is not None else None
    heldout_w = None
    pts = law_points([pair], cfg.param_count)
    if valid is not None:  # the weights chosen on the validation split, beside the in-sample optima
        h = pair.heldout(valid)
        heldout_w = (h.w_nll, h.w_acc)
        pts = pts.with_columns(pl.lit(valid_split).alias("heldout_split"),
                               *(pl.lit(float(x), pl.Float64).alias(c) for c, x in (
                                   ("heldout_w_nll", h.w_nll), ("heldout_alpha_nll", h.alpha_nll),
                                   ("heldout_w_acc", h.w_acc), ("heldout_alpha_acc", h.alpha_acc))))
    if getattr(pair, "engine", "local") == "dask":  # the rest needs every position in memory (NOT_ON_DASK)
        got["points"].append(pts.with_columns(pl.lit(f"not computed on the dask engine: {RERUN}")
                                              .alias("bootstrap_note")))
        return got
    kfold = cfg.kfold if (valid is None and cfg.kfold) else None
    try:  # the units of `choose_units`, as in the sweep CLI: one pair, one interval
        bs = bootstrap(pair, n_resamples=cfg.n_resamples, seed=cfg.seed, by=cfg.unit, level=cfg.level,
                       heldout_w=heldout_w, kfold=kfold)
        got["bootstrap"].append(bs.with_columns(**{k: pl.lit(v) for k, v in tag.items()}))
        pts = pts.with_columns(**{k: pl.lit(v) for k, v in table_columns(bs).items()})
    except BootstrapError as e:
        log.warning("bootstrap of %s: %s", pair, e)
        pts = pts.with_columns(pl.lit(str(e)).alias("bootstrap_note"))
    got["points"].append(pts)
    got["theorems"].append(theorem_checks(pair).with_columns(pl.lit(dataset).alias("dataset"), pl.lit(split).alias("split")))
    got["mainstay"].append(mainstay_deviation(pair, cfg.mainstay_top).with_columns(**{k: pl.lit(v) for k, v in tag.items()}))
    got["rbp_pairs"].append(pair_rbp(pair, cfg.rbp_ks).with_columns(pl.lit(dataset).alias("dataset"), pl.lit(split).alias("split")))
    if "embedding" in getattr(pair.primary, "tables", ()):
        sw = similarity_sweep(pair)
        got["similarity"].append(sw.with_columns(**{k: pl.lit(v) for k, v in tag.items()}))
    return got


def run(cfg: LawSettings) -> dict[str, pl.DataFrame]:
    """Every analysis of issue 7 on every stream group under cfg.stores; returns (and writes) the frames."""

    from .sweep import engine

    with engine(cfg) as pair_cls:  # the sweep CLI's: Pair in memory, or on Dask with cfg.dask
        return _run(cfg, pair_cls)


def _run(cfg: LawSettings, pair_cls) -> dict[str, pl.DataFrame]:
    from pipeline.store import StoreError

    from .multi import MultiData, multi_summary
    from .pair import stream_pairs
    from .rbp import rbp_scaling, single_rbp
    from .vocab_use import vocab_use

    on_dask = cfg.engine == "dask"
    groups, skipped = _groups(cfg.stores)
    out: dict[str, list] = {k: [] for k in ("points", "bootstrap", "theorems", "mainstay", "rbp_pairs", "rbp",
                                            "vocab", "multi", "similarity")}
    pairs: dict = {}
    for members in groups.values():
        ds = members[0].dataset
        tag = {"dataset": ds.get("name"), "split": ds.get("split")}
        for a, b, pair, error in stream_pairs(members, cfg.order, pair_cls):
            if error is not None:
                skipped.append({"store": f"{_name(a)} + {_name(b)}", "reason": str(error)})
                continue
            pairs[(pair.names, tag["dataset"], tag["split"])] = pair
        for s in members:
            try:
                out["rbp"].append(single_rbp(s, cfg.rbp_ks).with_columns(
                    pl.lit(s.model.get(cfg.param_count)).cast(pl.Float64).alias("params"),
                    **{k: pl.lit(v) for k, v in tag.items()}))
            except StoreError as e:  # damaged on reading: reported with the pairs, the run goes on
                log.warning("RBP of %s skipped: %s", _name(s), e)
        try:
            out["vocab"].append(vocab_use(members).with_columns(**{k: pl.lit(v) for k, v in tag.items()}))
        except StoreError as e:
            log.warning("vocabulary use of %s skipped: %s", [_name(s) for s in members], e)
        if cfg.multi and not on_dask and len({_name(s) for s in members}) >= 3:
            try:
                md = MultiData.load(members, cfg.param_count)
                out["multi"].append(multi_summary(md, tol=cfg.multi_tol).with_columns(
                    **{k: pl.lit(v) for k, v in tag.items()}))
            except (AnalysisError, StoreError) as e:
                log.warning("multi-model fusion of %s skipped: %s", [_name(s) for s in members], e)
    if on_dask:  # every pair of every family and dataset: one task graph, then all the optima together
        from .engines.dask import prefetch

        prefetch(list(pairs.values()))
    for (names, dataset, split), pair in pairs.items():
        log.info("law: %s on %s/%s", pair, dataset, split)
        try:  # a chunk found damaged while reading skips this pair, not the run
            got = _study_pair(pair, names, dataset, split, pairs, cfg)
        except StoreError as e:
            log.warning("law: %s on %s/%s skipped: %s", pair, dataset, split, e)
            skipped.append({"store": f"{names[0]} + {names[1]} ({dataset}/{split})", "reason": str(e)})
            continue
        for k, v in got.items():
            out[k].extend(v)
    frames = {k: pl.concat(v, how="diagonal_relaxed") for k, v in out.items() if v}
    if "points" in frames:
        frames["fits"] = ar_law(frames["points"])
    if "rbp" in frames:
        params = dict(zip(frames["rbp"]["model"].to_list(), frames["rbp"]["params"].to_list()))
        frames["rbp_scaling"] = rbp_scaling(frames["rbp"], params, by=("dataset", "split", "k"))
    frames["skipped"] = pl.DataFrame(skipped, schema={"store": pl.Utf8, "reason": pl.Utf8})
    if on_dask:
        wanted = [k for k in NOT_ON_DASK if k != "multi" or cfg.multi]
        frames["not_computed"] = pl.DataFrame({"analysis": wanted, "why": [NOT_ON_DASK[k] for k in wanted],
                                               "note": [f"not computed on the dask engine: {RERUN}"] * len(wanted)})
    _write(cfg, frames)
    return frames


def _write(cfg: LawSettings, frames: dict) -> None:
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    for name, df in frames.items():
        df.write_parquet(out / f"{name}.parquet")
        flat = df.select([c for c in df.columns if df[c].dtype != pl.List(pl.Utf8) and not isinstance(df[c].dtype, pl.List)])
        flat.write_csv(out / f"{name}.csv")
    if cfg.plots and "points" in frames:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), layout="constrained")
        for ax, m in zip(axes, ("alpha_nll", "d_nll")):
            plot_ar_law(frames["points"], frames["fits"], m, ax=ax)
        fig.savefig(out / "ar_law.png", dpi=120, bbox_inches="tight")
        plt.close(fig)
    (out / "law.md").write_text(render(frames, cfg))
    log.info("wrote %s", out)


def render(frames: dict, cfg: LawSettings) -> str:
    from .bootstrap import AUTO_MIN_BLOCKS, MIN_UNITS

    rule = (f"4,096-position blocks when a pair has at least {AUTO_MIN_BLOCKS}, else documents" if cfg.unit == "auto"
            else f"{cfg.unit} units (as configured)")
    parts = ["# AR law: intervals, fits and checks", "",
             f"Parameter ratio k from `{cfg.param_count}`; bootstrap: {cfg.n_resamples} resamples of {rule} "
             f"(ci_unit, ci_n_units beside every interval; fewer than {MIN_UNITS} units: not bootstrapped), seed "
             f"{cfg.seed}, {cfg.level:.0%} percentile intervals.", ""]
    if "not_computed" in frames:
        parts += ["## Not computed on the dask engine", "",
                  "The dask engine computed every pair's optima (alpha, D), the fits below and the held-out weights "
                  "(equal to the in-memory engine's), and streamed the single-model RBP and vocabulary use. These "
                  f"need every position in memory and were not computed ({RERUN}):", "",
                  markdown(frames["not_computed"].select("analysis", "why")), ""]
    if "fits" in frames:
        parts += ["## alpha, D ~ c k^p (finite points; 0 / inf excluded and counted; fewer than 3 points: not fitted)",
                  "", markdown(frames["fits"]), ""]
    if "bootstrap" in frames:
        bs = frames["bootstrap"].select("primary", "secondary", "dataset", "split", "scope", "statistic", "estimate",
                                        "ci_lo", "ci_hi", "ci_unit", "ci_n_units")
        parts += ["## Bootstrap intervals (gains are fused minus primary alone)", "", markdown(bs), ""]
    pts = frames.get("points")
    if pts is not None and "bootstrap_note" in pts.columns:
        nb = pts.filter(pl.col("bootstrap_note").is_not_null()).select("primary", "secondary", "dataset", "split",
                                                                       "bootstrap_note")
        if nb.height:
            parts += ["## Not bootstrapped", "", markdown(nb), ""]
    if "theorems" in frames:
        parts += ["## Appendix A checks", "", markdown(frames["theorems"]), ""]
    if "rbp_scaling" in frames:
        parts += ["## Relative-based scaling law: -log RBP@k = c N^-gamma", "", markdown(frames["rbp_scaling"]), ""]
    if "vocab" in frames:
        parts += ["## Vocabulary use (appendix B.1)", "", markdown(frames["vocab"]), ""]
    if "multi" in frames:
        parts += ["## Multi-model fusion", "", markdown(frames["multi"]), ""]
    if "similarity" in frames:
        from .similarity import similarity_optimum

        rows = [{"primary": key[0], "secondary": key[1], **similarity_optimum(g)}
                for key, g in frames["similarity"].group_by(["primary", "secondary"], maintain_order=True)]
        parts += ["## Similarity-based variant (appendix B.3): best exponent p", "", markdown(pl.DataFrame(rows)), ""]
    if frames["skipped"].height:
        parts += ["## Skipped", "", markdown(frames["skipped"]), ""]
    return "\n".join(parts)


def main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from pipeline import rundir

    rundir.register()  # ${run_id:} in hydra.run.dir: every run its own directory

    from pipeline.cli import exit_on_errors, report_errors

    @exit_on_errors  # a project error: one line on stderr, exit status 1 (HYDRA_FULL_ERROR=1: the traceback)
    @hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parents[1] / "conf"),
                config_name="law")
    @report_errors
    def _main(cfg) -> None:
        settings = LawSettings.from_cfg(cfg, HydraConfig.get().runtime.output_dir)
        run(settings)
        print((settings.out_dir / "law.md").read_text())  # the CLI's one print: the final report

    _main()


if __name__ == "__main__":
    main()
