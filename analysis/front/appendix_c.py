"""Tables 3 and 4 of the AR paper's appendix C: image classifiers and masked protein models, as markdown.

Built from the sweep CLI's baselines and pairs frames (`analysis.sweep`), rows of store kind "classification"
(Table 3: ResNets on CIFAR-10/100, Tiny ImageNet) or "masked" (Table 4: ESM-2 on UniRef50). Each table has two
parts:

1. The paper's layout: one column per dataset (per metric for masked models), then
       "Single model baseline performance": one row per model, smallest first;
       "AR fusion: improvement relative to the best single model (%)": one row per pair (LM = the primary, the
       larger model; SM = the secondary), ordered by the size of LM then SM, in-sample, then held-out (weights
       chosen on a validation split of the same two models) where one exists.
   Classification: Top-1 accuracy (%) and its relative improvement; masked: PPL and its relative reduction, and
   accuracy on the masked residues and its relative improvement. Improvements are the paper's
   (best single - fused) / best single x 100 for PPL and (fused - best single) / best single x 100 for ACC.
2. Per dataset, one row per pair with what the paper's cells are made of: each model alone, the fused value at
   the exact optimal ratio alpha (alpha_acc for ACC, alpha_nll for PPL), alpha itself, the improvement in-sample
   and held-out, and the 95% bootstrap interval of the gain over LM alone with the units it resampled (examples
   or sequences).

ACC is the certified accuracy (`analysis.metrics`): exact for one model; for the fusion the certified lower
bound at the ACC optimum, shown as an interval [certified, possible] where the stores' rounding leaves positions
undetermined (never with K = n_classes and float32 lists, the usual classifier store). There is no BPC or BPB:
these stores have no text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import polars as pl

APPENDIX_KINDS = ("classification", "masked")
VALID_SPLITS = ("validation", "valid", "val", "dev")


@dataclass(frozen=True)
class Metric:
    base: str  # baselines column (a fraction for ACC)
    impr: str  # pairs column of the in-sample improvement (%), "heldout_" + it for held-out
    head: str  # column label after the dataset's name, in a table with several metrics
    section: str  # what the baseline rows show
    name: str  # short name in the per-dataset tables
    impr_name: str  # ... of its improvement
    fused: tuple  # pairs columns of the fused value: (certified, possible) or (exact,)
    alpha: str  # pairs column of the optimal ratio it is evaluated at
    percent: bool  # a fraction shown as a percentage
    gain: str  # bootstrap statistic of the gain over LM alone (analysis.bootstrap)


TOP1 = Metric("acc", "impr_acc_lo", "Top-1 ↑ (%)", "Top-1 Acc. (%)", "Top-1", "Top-1 imp.",
              ("fused_acc_lo", "fused_acc_hi"), "alpha_acc", True, "dacc_lo")
PPL = Metric("ppl", "impr_ppl", "PPL ↓", "PPL", "PPL", "PPL red.", ("fused_ppl",), "alpha_nll", False, "dppl")
ACC = Metric("acc", "impr_acc_lo", "ACC ↑ (%)", "ACC on masked residues (%)", "ACC", "ACC imp.",
             ("fused_acc_lo", "fused_acc_hi"), "alpha_acc", True, "dacc_lo")


@dataclass(frozen=True)
class Layout:
    kind: str
    title: str
    metrics: tuple
    improvement: str  # what the improvement rows are called
    unit: str  # what a position is


CLASSIFICATION = Layout("classification", "Image classification (the layout of Table 3): Top-1 accuracy of single "
                        "models and relative improvement of each AR-fused pair", (TOP1,),
                        "Top-1 improvement relative to the best single model (%)", "examples")
MASKED = Layout("masked", "Masked language models (the layout of Table 4): PPL and accuracy on the masked residues "
                "of single models and relative improvement of each AR-fused pair", (PPL, ACC),
                "PPL reduction / ACC improvement relative to the best single model (%)", "masked residues")
LAYOUTS = {"classification": CLASSIFICATION, "masked": MASKED}


# ---------------------------------------------------------------------------------------------- cells
def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _num(x, percent: bool = False) -> str:
    return "–" if _missing(x) else f"{x * (100.0 if percent else 1.0):.2f}"


def _impr(x) -> str:
    return "–" if _missing(x) else f"{x:.2f}%"


def _alpha(x) -> str:
    if _missing(x):
        return "–"
    return "inf" if x == math.inf else f"{x:.4g}"


def _fused(values: tuple, percent: bool) -> str:
    if len(values) == 2 and not any(_missing(v) for v in values) and values[0] != values[1]:
        return f"[{_num(values[0], percent)}, {_num(values[1], percent)}]"
    return _num(values[0], percent)


def _get(row: dict | None, col: str):
    return None if row is None else row.get(col)


def _invert(alpha):
    """alpha of the pair the other way round: beta -> 1 / beta (inf <-> 0)."""
    if _missing(alpha):
        return alpha
    return 0.0 if alpha == math.inf else (math.inf if alpha == 0.0 else 1.0 / alpha)


# ---------------------------------------------------------------------------------------------- columns
@dataclass(frozen=True)
class Column:
    dataset: str
    split: str
    family: str
    label: str


def _columns(baselines: pl.DataFrame, valid_splits) -> list[Column]:
    """One column per (dataset, split, label set) shown: the splits other than validation ones, or the
    validation split when a dataset has nothing else; labelled by the dataset, plus split / label set where a
    dataset has more than one."""
    keys = baselines.select("dataset", "split", "family").unique().sort(["dataset", "split", "family"]).rows()
    shown = []
    for ds in sorted({k[0] for k in keys}):
        mine = [k for k in keys if k[0] == ds]
        test = [k for k in mine if k[1] not in valid_splits]
        shown += test or mine
    out = []
    for ds, split, fam in shown:
        same = [k for k in shown if k[0] == ds]
        extra = []
        if len({k[1] for k in same}) > 1:
            extra.append(split)
        if len({k[2] for k in same}) > 1:
            extra.append(f"labels {fam}")
        out.append(Column(ds, split, fam, f"{ds} ({', '.join(extra)})" if extra else ds))
    return out


def _sizes(baselines: pl.DataFrame) -> dict[str, float]:
    """model -> parameter count for ordering (the largest recorded; unknown counts sort last)."""
    out = {}
    for model, n in baselines.select("model", "n_params").iter_rows():
        n = math.inf if n is None else float(n)
        out[model] = max(out.get(model, -math.inf), n)
    return out


def _canonical(prim: str, sec: str, sizes: dict) -> tuple[str, str]:
    """(LM, SM): the larger model first (as the sweep orders a pair), by name on equal sizes."""
    a, b = (sizes.get(prim, math.inf), prim), (sizes.get(sec, math.inf), sec)
    return (prim, sec) if a >= b else (sec, prim)


def _pair_rows(pairs: pl.DataFrame, sizes: dict) -> dict:
    """(LM, SM) -> {(dataset, split, family): (row, flipped)}: every pair row under its canonical orientation."""
    out: dict = {}
    for row in pairs.iter_rows(named=True):
        lm, sm = _canonical(row["primary"], row["secondary"], sizes)
        out.setdefault((lm, sm), {})[(row["dataset"], row["split"], row["family"])] = (row, lm != row["primary"])
    return out


# ---------------------------------------------------------------------------------------------- tables
def _line(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _section(text: str, width: int) -> str:
    return f"| *{text}* |" + " |" * (width - 1)


def appendix_table(layout: Layout, baselines: pl.DataFrame, pairs: pl.DataFrame,
                   valid_splits=VALID_SPLITS) -> str:
    """The markdown of one kind's table (see the module docstring); ``baselines`` and ``pairs`` are the sweep's
    frames restricted to that kind (other rows are ignored)."""
    baselines = _of_kind(baselines, layout.kind)
    pairs = _of_kind(pairs, layout.kind)
    lines = [f"## {layout.title}", ""]
    if not baselines.height:
        return "\n".join(lines + [f"No {layout.kind} stores were paired.", ""])
    cols = _columns(baselines, tuple(valid_splits))
    ms = layout.metrics
    header = ["LM", "SM"] + [c.label if len(ms) == 1 else f"{c.label} {m.head}" for c in cols for m in ms]
    lines += [_line(header), "|" + "---|" * len(header)]
    shown = {(c.dataset, c.split, c.family) for c in cols}
    base = {(r["model"], r["dataset"], r["split"], r["family"]): r for r in baselines.iter_rows(named=True)}
    sizes = _sizes(baselines)
    models = {m for (m, *key) in base if tuple(key) in shown}
    section = ", ".join(m.section for m in ms)
    lines.append(_section(f"Single model baseline performance ({section})", len(header)))
    for model in sorted(models, key=lambda m: (sizes[m], m)):
        cells = [model, ""]
        for c in cols:
            row = base.get((model, c.dataset, c.split, c.family))
            cells += [_num(_get(row, m.base), m.percent) for m in ms]
        lines.append(_line(cells))
    by_pair = {p: rows for p, rows in (_pair_rows(pairs, sizes) if pairs.height else {}).items()
               if shown & set(rows)}  # pairs of the shown columns (not those of validation splits only)
    order = sorted(by_pair, key=lambda p: (sizes.get(p[0], math.inf), sizes.get(p[1], math.inf), p))
    notes = []
    has_heldout = any(f"heldout_{m.impr}" in pairs.columns and pairs[f"heldout_{m.impr}"].is_not_null().any()
                      for m in ms) if pairs.height else False
    scopes = [("in-sample", "")] + ([("held-out (weights chosen on the validation split)", "heldout_")]
                                    if has_heldout else [])
    for scope, prefix in scopes:
        lines.append(_section(f"AR fusion: {layout.improvement}, {scope}", len(header)))
        for lm, sm in order:
            rows = by_pair[(lm, sm)]
            flags = sorted({f for row, _ in rows.values() for f in (row.get("flags") or "").split(",") if f})
            if flags and not prefix:
                notes.append(f"† {lm} + {sm}: stores differ in {', '.join(flags)}")
            cells = [lm + (" †" if flags else ""), sm]
            for c in cols:
                row = rows.get((c.dataset, c.split, c.family), (None, False))[0]
                cells += [_impr(_get(row, prefix + m.impr)) for m in ms]
            lines.append(_line(cells))
    if not has_heldout:
        notes.append("No validation split of these pairs: in-sample weights only (the bootstrap intervals below "
                     "re-choose the weight on every resample).")
    if not order:
        notes.append("No pairs: fewer than two models of one label set / masking per dataset.")
    lines += [""] + notes + ([""] if notes else [])
    for c in cols:
        lines += _detail(layout, c, base, by_pair, order)
    return "\n".join(lines).rstrip() + "\n"


def _detail(layout: Layout, c: Column, base: dict, by_pair: dict, order: list) -> list[str]:
    """Per dataset: each pair's single models, fused value at alpha, alpha, improvements and bootstrap interval."""
    present = [(lm, sm, *by_pair[(lm, sm)][(c.dataset, c.split, c.family)]) for lm, sm in order
               if (c.dataset, c.split, c.family) in by_pair[(lm, sm)]]
    if not present:
        return []
    n = next((r.get("n_positions") for (m, d, s, f), r in base.items() if (d, s, f) == (c.dataset, c.split,
                                                                                         c.family)), None)
    count = "" if n is None else f", {n:,} {layout.unit}"
    head = ["LM", "SM"]
    for m in layout.metrics:
        unit = " (%)" if m.percent else ""
        head += [f"LM {m.name}{unit}", f"SM {m.name}{unit}", f"fused {m.name}{unit}", m.alpha,
                 f"{m.impr_name} (%)", f"held-out {m.alpha}", f"held-out {m.impr_name} (%)"]
    gains = [m.gain for m in layout.metrics]
    head += [f"{g} 95% CI{' (pp)' if g.startswith('dacc') else ''}" for g in gains] + ["resampled"]
    lines = [f"### {c.label}: {c.split} split, label set / vocabulary {c.family}{count}", "",
             _line(head), "|" + "---|" * len(head)]
    notes = []
    for lm, sm, row, flipped in present:
        cells = [lm, sm]
        for m in layout.metrics:
            a = _get(base.get((lm, c.dataset, c.split, c.family)), m.base)
            b = _get(base.get((sm, c.dataset, c.split, c.family)), m.base)
            alpha, h_alpha = row.get(m.alpha), row.get(f"heldout_{m.alpha}")
            if flipped:
                alpha, h_alpha = _invert(alpha), _invert(h_alpha)
            cells += [_num(a, m.percent), _num(b, m.percent), _fused(tuple(row.get(f) for f in m.fused), m.percent),
                      _alpha(alpha), _impr(row.get(m.impr)), _alpha(h_alpha), _impr(row.get(f"heldout_{m.impr}"))]
        scope = "heldout" if row.get(f"heldout_{gains[0]}_ci_lo") is not None else "insample"
        for g in gains:
            lo, hi = row.get(f"{scope}_{g}_ci_lo"), row.get(f"{scope}_{g}_ci_hi")
            scale = 100.0 if g.startswith("dacc") else 1.0
            cells.append("–" if _missing(lo) or _missing(hi) else f"[{lo * scale:.3g}, {hi * scale:.3g}]"
                         + (" (held-out)" if scope == "heldout" else ""))
        unit = row.get("ci_unit")
        if unit is None:
            cells.append("not bootstrapped")
            if row.get("bootstrap_note"):
                notes.append(f"{lm} + {sm}: {row['bootstrap_note']}")
        else:
            from analysis.bootstrap import unit_label

            cells.append(unit_label(unit, int(row["ci_n_units"])))
        lines.append(_line(cells))
    if any(row.get("ci_unit") is not None for *_, row, _ in present):
        notes.append("95% CI: paired bootstrap of the gain over LM alone; in-sample (w re-chosen on every "
                     "resample) unless marked held-out (at the weight chosen on the validation split).")
    if any(flipped for *_, flipped in present):
        notes.append("Rows stored with the smaller model as primary are shown LM first (alpha inverted).")
    return lines + [""] + notes + ([""] if notes else [])


def _of_kind(frame: pl.DataFrame, kind: str) -> pl.DataFrame:
    if not frame.height or "kind" not in frame.columns:
        return frame.clear() if frame.height else frame
    return frame.filter(pl.col("kind") == kind)


def classification_table(baselines: pl.DataFrame, pairs: pl.DataFrame, valid_splits=VALID_SPLITS) -> str:
    """Table 3's layout over the classification rows of the sweep's frames."""
    return appendix_table(CLASSIFICATION, baselines, pairs, valid_splits)


def masked_table(baselines: pl.DataFrame, pairs: pl.DataFrame, valid_splits=VALID_SPLITS) -> str:
    """Table 4's layout over the masked-model rows of the sweep's frames."""
    return appendix_table(MASKED, baselines, pairs, valid_splits)


def write_appendix_tables(frames: dict, out_dir: Path, valid_splits=VALID_SPLITS) -> dict[str, str]:
    """Write table_classification.md / table_masked.md into ``out_dir`` for the kinds the baselines hold;
    returns {file name: markdown} (empty when there are none)."""
    base, prs = frames["baselines"], frames["pairs"]
    if not base.height or "kind" not in base.columns:
        return {}
    out = {}
    for kind, layout in LAYOUTS.items():
        if base.filter(pl.col("kind") == kind).height:
            name = f"table_{kind}.md"
            out[name] = appendix_table(layout, base, prs, valid_splits)
            (Path(out_dir) / name).write_text(out[name])
    return out


def appendix_texts(out_dir: Path) -> list[str]:
    """The tables `write_appendix_tables` wrote into ``out_dir`` (classification, then masked), for printing."""
    paths = [Path(out_dir) / f"table_{kind}.md" for kind in LAYOUTS]
    return [p.read_text() for p in paths if p.is_file()]
