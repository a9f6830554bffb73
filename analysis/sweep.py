"""Sweep CLI: every compatible pair of every dataset, in the paper's layout.

    python -m analysis.sweep stores=DIR

Finds the stores under DIR, groups them by token-stream hash, evaluates every pair of different models in
a group (larger model primary), takes the held-out weight from a validation split of the same two models
where one exists, and writes to the Hydra run directory (under stores/_runs/analyze/ by default):
baselines / pairs / skipped (parquet + CSV), sweeps.parquet, and table.md (printed at the end).
Stores of one dataset split that do not share a token stream are listed as skipped with the reason;
pairs that differ in context length, stride, dtype or quantisation are flagged.

Task stores (attribute ``task``: LAMBADA's last word, multiple choice) are paired the same way and evaluated as
`analysis.TaskPair`: their baselines and pairs rows carry the task's metrics (word/token PPL and certified ACC,
or ACC / ACC_norm / ACC_bytes), their sweeps go to task_sweeps.parquet, and the table shows, per dataset, only
the metrics that apply to it (the task's ``metrics`` attribute; the configured metrics for language modelling).
Task pairs are not bootstrapped: their units are items (hundreds to a few thousand), and a held-out split is
the honest check there; the pairs table says so in ``bootstrap_note``.

Image classifiers and masked models (store kinds "classification" and "masked") are paired the same way (one
label set / one masking per stream group; no BPC or BPB) and get tables of their own in the layouts of the
paper's Tables 3 and 4, table_classification.md and table_masked.md, printed after table.md
(`analysis.front.appendix_c`).
"""

from __future__ import annotations

import itertools
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from pipeline.store import StoreError, align, find_stores, open_store

from .curves import log_beta_grid
from .errors import AnalysisError, check_cli_settings
from .front.appendix_c import APPENDIX_KINDS, appendix_texts, write_appendix_tables
from .pair import stream_pairs
from .table import markdown, paper_table
from .tasks import TaskPair, is_task_store, task_stream_pairs
from .words import WordPair
from .words.cli import add_word_pairs, word_table
from .words.cli import bootstrap_columns as word_bootstrap_columns
from .words.cli import heldout_row as word_heldout_row

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalyzeSettings:
    stores: Path
    out_dir: Path
    n_weights: int = 101
    metrics: tuple = ("ppl", "bpc", "acc")
    valid_splits: tuple = ("validation", "valid", "val", "dev")
    param_count: str = "n_params_nonembed"
    order: str = "auto"
    write_sweeps: bool = True
    plots: bool = False
    n_resamples: int = 1000  # paired blocked bootstrap (0: no confidence intervals)
    bootstrap_unit: str = "auto"
    seed: int = 0
    kfold: int = 5
    engine: str = "local"  # "dask": one task per chunk group (analysis.engines.dask); settings in ``dask``
    dask: dict = field(default_factory=dict)

    def __post_init__(self):
        check_cli_settings(self.stores, self.order, self.param_count, self.metrics, ("auto", "block", "doc"),
                           self.bootstrap_unit)
        from .engines import check_engine

        check_engine(self.engine)

    @classmethod
    def from_cfg(cls, cfg, out_dir) -> AnalyzeSettings:
        a = cfg.analysis
        return cls(stores=Path(str(cfg.stores)), out_dir=Path(out_dir), n_weights=int(a.n_weights),
                   metrics=tuple(a.metrics), valid_splits=tuple(a.valid_splits), param_count=str(a.param_count),
                   order=str(a.order), write_sweeps=bool(a.write_sweeps),
                   plots=bool(a.get("plots", False)), n_resamples=int(a.get("n_resamples", 1000)),
                   bootstrap_unit=str(a.get("bootstrap_unit", "auto")), seed=int(a.get("seed", 0)),
                   kfold=int(a.get("kfold", 5)), engine=str(a.get("engine", "local")),
                   dask={k: v for k, v in (a.get("dask") or {}).items()})


@dataclass
class Found:
    stores: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # dicts: a, b, dataset, split, reason


def _model(s) -> str:
    return str(s.model.get("name", s.path))


def _vocab(s) -> str:
    return str(s.attrs.get("tokenizer", {}).get("vocab_hash"))


def family_labels(stores) -> dict[str, str]:
    """vocabulary hash -> table label. A family is every store of one vocabulary (what makes stores pairable);
    it is named by its tokenizer when all its stores agree on the name (a hub tokenizer), else by the hash
    and its models (tokenizers saved beside each trained model carry that model's path as their name)."""
    by_vocab: dict[str, list] = {}
    for s in stores:
        by_vocab.setdefault(_vocab(s), []).append(s)
    labels = {}
    for h, members in by_vocab.items():
        names = {str(s.attrs.get("tokenizer", {}).get("name", "unknown tokenizer")) for s in members}
        labels[h] = names.pop() if len(names) == 1 else \
            f"vocabulary {h[:8]} ({', '.join(sorted({_model(s) for s in members}))})"
    return labels


def discover(root: Path) -> Found:
    found = Found()
    for p in find_stores(root):
        if "_runs" in p.parts:
            continue
        try:
            found.stores.append(open_store(p))
        except StoreError as e:
            log.warning("skipping %s: %s", p, e)
            found.skipped.append({"a": str(p), "b": "", "dataset": "", "split": "", "reason": str(e)})
    log.info("found %d readable stores under %s", len(found.stores), root)
    return found


def _baseline_row(s, family: str, pair_row: dict) -> dict:
    return {"model": _model(s), "family": family, "n_params": s.model.get("n_params"), "kind": s.kind,
            "dataset": s.dataset.get("name"), "split": s.dataset.get("split"), "n_positions": s.n,
            "nll": pair_row["nll"], "ppl": pair_row["ppl"], "bpc": pair_row["bpc"], "bpb": pair_row["bpb"],
            "acc": pair_row["acc_lo"], "path": str(s.path)}


def run(cfg: AnalyzeSettings) -> dict[str, pl.DataFrame]:
    with engine(cfg) as pair_cls:
        return _run(cfg, pair_cls)


def _run(cfg: AnalyzeSettings, pair_cls) -> dict[str, pl.DataFrame]:
    found = discover(cfg.stores)
    labels = family_labels(found.stores)
    _family = lambda s: labels[_vocab(s)]  # noqa: E731
    groups: dict[str, list] = {}
    for s in found.stores:
        groups.setdefault(s.stream_hash, []).append(s)
    # The written sweeps: a linear grid in w plus log-spaced betas from 1e-3 to 1e4 (optima are often near w = 1).
    weights = np.union1d(np.linspace(0.0, 1.0, cfg.n_weights), log_beta_grid(141, 1e-3, 1e4))
    baselines, pairs, sweeps, task_sweeps = {}, {}, [], []
    ordered = sorted(groups.items(), key=lambda kv: (kv[1][0].dataset.get("name"), kv[1][0].dataset.get("split")))
    built = {h: list(stream_pairs(members, cfg.order, pair_cls)) for h, members in ordered
             if not any(is_task_store(s) for s in members)}
    if cfg.engine == "dask":  # every pair of every dataset: one task graph
        from .engines.dask import prefetch

        prefetch([p for lst in built.values() for _, _, p, _ in lst if p is not None], weights)
    for h, members in tqdm(ordered, desc="stream groups", unit="group", disable=len(ordered) < 2):
        if any(is_task_store(s) for s in members):
            _task_group(members, cfg, weights, _family, found, baselines, pairs, task_sweeps)
            continue
        for a, b, pair, error in built[h]:
            if error is not None:
                found.skipped.append({"a": _model(a), "b": _model(b), "dataset": a.dataset.get("name"),
                                      "split": a.dataset.get("split"), "reason": str(error)})
                continue
            log.info("pair %s on %s/%s", pair, a.dataset.get("name"), a.dataset.get("split"))
            try:
                opt = pair.optimum()  # reads the stores: a chunk found damaged now skips the pair, not the run
            except StoreError as e:
                log.warning("skipping %s: %s", pair, e)
                found.skipped.append({"a": _model(a), "b": _model(b), "dataset": a.dataset.get("name"),
                                      "split": a.dataset.get("split"), "reason": str(e)})
                continue
            key = (pair.names, _family(a), a.dataset.get("name"), a.dataset.get("split"))
            for s, row in ((pair.primary, opt.primary), (pair.secondary, opt.secondary)):
                baselines[(_model(s), _family(s), s.dataset.get("name"), s.dataset.get("split"))] = \
                    _baseline_row(s, _family(s), row)
            k = pair.param_ratio(cfg.param_count)
            pairs[key] = {"pair": pair, "row": {
                "primary": pair.names[0], "secondary": pair.names[1], "family": _family(pair.primary),
                "dataset": a.dataset.get("name"), "split": a.dataset.get("split"),
                "k": k, "k_from": cfg.param_count, "k_sort": k if math.isfinite(k) else math.inf,
                "flags": pair.alignment.flags, "kind": pair.primary.kind,
                "w_nll": opt.w_nll, "alpha_nll": opt.alpha_nll, "d_nll": opt.d_nll,
                "w_acc": opt.w_acc, "alpha_acc": opt.alpha_acc, "d_acc": opt.d_acc,
                "d_acc_disconnected": opt.d_acc_disconnected, "n_acc_intervals": len(opt.acc_intervals),
                "fused_ppl": opt.at_nll["ppl"], "fused_bpc": opt.at_nll["bpc"], "fused_bpb": opt.at_nll["bpb"],
                "fused_acc_lo": opt.at_acc["acc_lo"], "fused_acc_hi": opt.at_acc["acc_hi"],
                **{f"impr_{m}": v for m, v in opt.improvement.items()},
            }}
            if cfg.write_sweeps:
                sweeps.append(pair.sweep(weights).with_columns(
                    primary=pl.lit(pair.names[0]), secondary=pl.lit(pair.names[1]),
                    dataset=pl.lit(a.dataset.get("name")), split=pl.lit(a.dataset.get("split"))))
    _skipped_across_groups(groups, found)
    add_word_pairs(found.stores, cfg, weights, pairs, found)  # level = word rows, across and within tokenizers
    _heldout(pairs, cfg)
    if cfg.n_resamples:
        from .bootstrap import sweep_columns

        for entry in tqdm(list(pairs.values()), desc=f"bootstrap ({cfg.n_resamples} resamples)", unit="pair"):
            row = entry["row"]
            if isinstance(entry["pair"], TaskPair):
                row["bootstrap_note"] = "task pair: not bootstrapped (see the held-out columns)"
                continue
            if getattr(entry["pair"], "engine", "local") == "dask":
                row["bootstrap_note"] = ("not bootstrapped on the dask engine (it resamples every position in "
                                         "memory): rerun with analysis.engine=local, or analysis.n_resamples=0")
                continue
            if isinstance(entry["pair"], WordPair):  # documents resampled
                row.update(word_bootstrap_columns(entry["pair"], row.get("heldout_w_nll"), cfg.n_resamples, cfg.seed))
                continue
            hw = (row["heldout_w_nll"], row["heldout_w_acc"]) if "heldout_w_nll" in row else None
            row.update(sweep_columns(entry["pair"], heldout_w=hw, n_resamples=cfg.n_resamples, seed=cfg.seed,
                                     by=cfg.bootstrap_unit, kfold=cfg.kfold))
    return _write(cfg, baselines, pairs, sweeps, found, task_sweeps)


@contextmanager
def engine(cfg):
    """The pair class of ``cfg.engine`` (see `engine_pairs`) for the length of a run; a Dask cluster this run
    started is closed at the end (a scheduler given by address is left running)."""
    pair_cls, client = engine_pairs(cfg)
    try:
        yield pair_cls
    finally:
        if client is not None:
            cluster = getattr(client, "cluster", None)
            client.close()
            if cluster is not None:
                cluster.close()


def engine_pairs(cfg: AnalyzeSettings):
    """(the pair class to build, the Dask client or None) for ``cfg.engine``: `Pair` in memory, or on Dask with
    ``cfg.dask`` (address, cluster, n_workers, threads_per_worker, memory_limit, numba_threads, group,
    light_group). The law CLI (`analysis.law`) builds its pairs here too."""
    from functools import partial

    from .pair import Pair

    if cfg.engine != "dask":
        return None, None
    d = dict(cfg.dask)
    group = d.pop("group", None)
    light_group = d.pop("light_group", None)
    numba_threads = int(d.get("numba_threads", 1) or 1)
    client = None
    if d.get("address") or d.get("cluster") not in (None, "threads"):
        from .engines.dask import connect

        client = connect(address=d.get("address"), cluster=str(d.get("cluster") or "local"),
                         n_workers=d.get("n_workers"), threads_per_worker=int(d.get("threads_per_worker") or 1),
                         memory_limit=d.get("memory_limit"), numba_threads=numba_threads)
        log.info("dask engine on %s", client)
    return partial(Pair, engine="dask", client=client, group=group, numba_threads=numba_threads,
                   workers=d.get("n_workers"), light_group=light_group), client


def _task_baseline_row(s, family: str, row: dict, pair: TaskPair) -> dict:
    lay = pair.layout
    out = {"model": _model(s), "family": family, "n_params": s.model.get("n_params"),
           "dataset": s.dataset.get("name"), "split": s.dataset.get("split"), "n_positions": s.n,
           "task": pair.kind, "task_metrics": ",".join(lay.metrics), "n_items": lay.n_items}
    out.update({m: row[m] for m in lay.available()})
    out["path"] = str(s.path)
    return out


def _task_group(members, cfg, weights, family, found, baselines, pairs, task_sweeps) -> None:
    """Every pair of a group of task stores (one token stream): baselines, pairs rows, sweeps."""
    tasks = [s for s in members if is_task_store(s)]
    for s in members:
        if not is_task_store(s):
            found.skipped.append({"a": _model(s), "b": "", "dataset": s.dataset.get("name"),
                                  "split": s.dataset.get("split"),
                                  "reason": "shares a task store's stream hash but has no 'task' attribute"})
    for a, b, pair, error in task_stream_pairs(tasks, cfg.order):
        ds, split = a.dataset.get("name"), a.dataset.get("split")
        try:
            if error is not None:
                raise error
            log.info("task pair %s on %s/%s", pair, ds, split)
            opt = pair.optimum()
            fam = family(pair.primary)
            for s, row in ((pair.primary, opt.primary), (pair.secondary, opt.secondary)):
                baselines[(_model(s), family(s), ds, split)] = _task_baseline_row(s, family(s), row, pair)
            k = pair.param_ratio(cfg.param_count)
            pairs[(pair.names, fam, ds, split)] = {"pair": pair, "row": {
                "primary": pair.names[0], "secondary": pair.names[1], "family": fam, "dataset": ds, "split": split,
                "task": pair.kind, "n_items": pair.layout.n_items,
                "k": k, "k_from": cfg.param_count, "k_sort": k if math.isfinite(k) else math.inf,
                "flags": pair.alignment.flags, **opt.row()}}
            if cfg.write_sweeps:
                task_sweeps.append(pair.sweep(weights).with_columns(
                    primary=pl.lit(pair.names[0]), secondary=pl.lit(pair.names[1]), dataset=pl.lit(ds),
                    split=pl.lit(split), task=pl.lit(pair.kind)))
        except (AnalysisError, StoreError) as e:
            found.skipped.append({"a": _model(a), "b": _model(b), "dataset": ds, "split": split, "reason": str(e)})


def _skipped_across_groups(groups: dict, found: Found) -> None:
    """Stores of one dataset split in different stream groups: say why they cannot be paired."""
    heads = list(groups.values())
    for ga, gb in itertools.combinations(heads, 2):
        if (ga[0].dataset.get("name"), ga[0].dataset.get("split")) != (gb[0].dataset.get("name"),
                                                                      gb[0].dataset.get("split")):
            continue
        for a in ga:
            for b in gb:
                if _model(a) == _model(b):
                    continue
                al = align(a, b)
                f, va, vb = al.differences[0] if al.differences else ("stream_hash", a.stream_hash, b.stream_hash)
                reason = al.reason or f"different {f}: {va!r} vs {vb!r}" + (
                    " (different tokenizer)" if f.startswith("tokenizer") else
                    " (different text or protocol)")
                found.skipped.append({"a": _model(a), "b": _model(b), "dataset": a.dataset.get("name"),
                                      "split": a.dataset.get("split"), "reason": reason})


def _heldout(pairs: dict, cfg: AnalyzeSettings) -> None:
    for (names, family, dataset, split), entry in pairs.items():
        row = entry["row"]
        if split in cfg.valid_splits:
            continue
        valid = next((pairs[(names, family, dataset, vs)] for vs in cfg.valid_splits
                      if (names, family, dataset, vs) in pairs), None)
        if valid is None:
            continue
        if isinstance(entry["pair"], TaskPair):
            row.update({"heldout_split": valid["row"]["split"], **entry["pair"].heldout(valid["pair"]).row()})
            continue
        if isinstance(entry["pair"], WordPair):
            row.update({"heldout_split": valid["row"]["split"], **word_heldout_row(entry["pair"], valid["pair"])})
            continue
        h = entry["pair"].heldout(valid["pair"])
        row.update({"heldout_split": valid["row"]["split"], "heldout_w_nll": h.w_nll, "heldout_alpha_nll": h.alpha_nll,
                    "heldout_w_acc": h.w_acc, "heldout_alpha_acc": h.alpha_acc,
                    **{f"heldout_impr_{m}": v for m, v in h.improvement.items()}})


def _write(cfg, baselines, pairs, sweeps, found, task_sweeps=()) -> dict[str, pl.DataFrame]:
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    base = pl.DataFrame(list(baselines.values()), infer_schema_length=None) if baselines else pl.DataFrame(
        schema={"model": pl.Utf8, "family": pl.Utf8, "n_params": pl.Int64, "dataset": pl.Utf8, "split": pl.Utf8})
    prs = pl.DataFrame([e["row"] for e in pairs.values()], infer_schema_length=None) if pairs else pl.DataFrame(
        schema={"primary": pl.Utf8, "secondary": pl.Utf8, "family": pl.Utf8, "dataset": pl.Utf8,
                "split": pl.Utf8, "k_sort": pl.Float64, "flags": pl.Utf8})
    skipped = pl.DataFrame(found.skipped, schema={"a": pl.Utf8, "b": pl.Utf8, "dataset": pl.Utf8,
                                                  "split": pl.Utf8, "reason": pl.Utf8})
    frames = {"baselines": base, "pairs": prs, "skipped": skipped}
    for name, df in frames.items():
        df.write_parquet(out / f"{name}.parquet")
        df.write_csv(out / f"{name}.csv")
    if sweeps:
        sw = pl.concat(sweeps)
        sw.write_parquet(out / "sweeps.parquet")
        frames["sweeps"] = sw
    if task_sweeps:
        tw = pl.concat(task_sweeps, how="diagonal_relaxed")
        tw.write_parquet(out / "task_sweeps.parquet")
        frames["task_sweeps"] = tw
    (out / "table.md").write_text(render(frames, cfg))
    write_appendix_tables(frames, out, cfg.valid_splits)  # classifiers, masked models: table_<kind>.md
    log.info("wrote %s", out)
    return frames


def render(frames: dict, cfg: AnalyzeSettings) -> str:
    base, prs, skipped = frames["baselines"], frames["pairs"], frames["skipped"]
    parts = ["# Accept-Reject fusion: single models and relative improvement of each pair", ""]
    table_splits = lambda df: df.filter(~pl.col("split").is_in(list(cfg.valid_splits))) if df.height else df  # noqa: E731
    appendix = base.height and "kind" in base.columns and base["kind"].is_in(APPENDIX_KINDS).any()
    if appendix:  # classifiers and masked models: tables of their own (analysis.front.appendix_c)
        base = base.filter(~pl.col("kind").is_in(APPENDIX_KINDS).fill_null(False))
        parts.append("Image classifiers and masked models: see table_classification.md / table_masked.md.\n")
    families = sorted(set(base["family"].to_list())) if base.height else []
    for fam in families:
        b = table_splits(base.filter(pl.col("family") == fam))
        p = table_splits(prs.filter(pl.col("family") == fam)) if prs.height else prs
        parts.append(paper_table(b, p, list(cfg.metrics), family=fam, task_metrics=task_metrics(b)))
    if prs.height:
        cols = [c for c in ("primary", "secondary", "dataset", "split", "level", "k", "alpha_nll", "d_nll", "alpha_acc",
                            "d_acc", "alpha_acc_norm", "d_acc_disconnected", "heldout_alpha_nll", "heldout_alpha_acc",
                            "flags") if c in prs.columns]
        parts += ["## Optimal weight ratios (beta = w / (1 - w); inf = primary alone)", "",
                  markdown(prs.select(cols)), ""]
    parts += word_table(prs, cfg.valid_splits)  # level = word rows: BPB / BPC / word PPL only
    ci = _intervals(prs) if prs.height else None
    if ci is not None:
        parts += ["## 95% bootstrap intervals (fused minus primary alone; in-sample re-optimises w on every resample)",
                  "", markdown(ci), ""]
    if not families and not appendix:
        parts.append("No pairs: fewer than two compatible stores found.\n")
    if skipped.height:
        parts += ["## Skipped", "", markdown(skipped), ""]
    return "\n".join(parts)


def task_metrics(baselines: pl.DataFrame) -> dict[str, list[str]]:
    """dataset -> the task metrics to show for it (task datasets only), from the baselines' task_metrics column."""
    if not baselines.height or "task_metrics" not in baselines.columns:
        return {}
    out = {}
    for d, m in baselines.select("dataset", "task_metrics").drop_nulls().unique(maintain_order=True).iter_rows():
        out.setdefault(d, [x for x in m.split(",") if x])
    return out


def _intervals(prs: pl.DataFrame) -> pl.DataFrame | None:
    """'[lo, hi]' cells for the bootstrap columns present (see analysis.bootstrap.table_columns)."""
    stats = [(scope, stat) for scope in ("insample", "heldout", "kfold") for stat in ("dppl", "dbpc", "dacc_lo",
                                                                                      "alpha_nll", "d_nll")
             if f"{scope}_{stat}_ci_lo" in prs.columns]
    if not stats and "bootstrap_note" not in prs.columns:
        return None
    from .bootstrap import unit_label

    def fmt(lo, hi):
        return "" if lo is None or hi is None else f"[{lo:.4g}, {hi:.4g}]"
    cols = {"primary": prs["primary"], "secondary": prs["secondary"], "dataset": prs["dataset"], "split": prs["split"]}
    if "ci_unit" in prs.columns:  # what each interval was resampled over, beside it
        cols["resampled"] = ["" if k is None else unit_label(k, int(n)) for k, n in zip(prs["ci_unit"],
                                                                                       prs["ci_n_units"])]
    for scope, stat in stats:
        cols[f"{stat} ({scope})"] = [fmt(lo, hi) for lo, hi in zip(prs[f"{scope}_{stat}_ci_lo"],
                                                                    prs[f"{scope}_{stat}_ci_hi"])]
    if "bootstrap_note" in prs.columns:
        cols["note"] = [n or "" for n in prs["bootstrap_note"]]
    return pl.DataFrame(cols)


def main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from pipeline import rundir

    rundir.register()  # ${run_id:} in hydra.run.dir: every run its own directory

    from pipeline.cli import exit_on_errors, report_errors

    @exit_on_errors  # a project error: one line on stderr, exit status 1 (HYDRA_FULL_ERROR=1: the traceback)
    @hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parents[1] / "conf"),
                config_name="analyze")
    @report_errors
    def _main(cfg) -> None:
        settings = AnalyzeSettings.from_cfg(cfg, HydraConfig.get().runtime.output_dir)
        frames = run(settings)
        print((settings.out_dir / "table.md").read_text())  # the CLI's one print: the final tables
        for text in appendix_texts(settings.out_dir):  # Tables 3 / 4 layouts, where the run wrote them
            print(text)
        if settings.plots:
            from .plots import plot_run

            pngs = plot_run(frames, settings.out_dir / "plots", skip_splits=settings.valid_splits)
            log.info("%d plots in %s", len(pngs), settings.out_dir / "plots")
        log.info("%d pairs, %d skipped", frames["pairs"].height, frames["skipped"].height)

    _main()


if __name__ == "__main__":
    main()
