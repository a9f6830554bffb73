"""The paper's table layout (Table 1 of the AR paper; task columns as in GPT-2's Table 3) as markdown.

    | LLM | SLM | <dataset> PPL ↓ | <dataset> BPC ↓ | <dataset> ACC ↑ | <task> PPL ↓ (word) | <task> ACC_norm ↑ | ...
    single-model rows (one per model, SLM column empty), then
    "Improvement relative to the best single model (%)": one row per pair, in-sample, then held-out.
Each dataset shows only the metrics that apply to it: the configured metrics for language-modelling stores,
the task's own metrics for task stores (LAMBADA: word PPL, token PPL, ACC; CBT: ACC; ARC: ACC, ACC_norm).
ACC improvements use the certified lower bound at the exact ACC optimum (tasks: their ACC at their optimum).
Pairs whose stores differ in context length, stride, dtype or quantisation carry a dagger and are listed under
the table.
"""

from __future__ import annotations

import math

import polars as pl

METRIC_LABEL = {"ppl": "PPL ↓", "bpc": "BPC ↓", "bpb": "BPB ↓", "acc": "ACC ↑ (%)", "nll": "NLL ↓"}
# baseline column and improvement column of each table metric
BASE_COL = {"ppl": "ppl", "bpc": "bpc", "bpb": "bpb", "acc": "acc", "nll": "nll"}
IMPR_COL = {"ppl": "ppl", "bpc": "bpc", "bpb": "bpb", "acc": "acc_lo", "nll": "nll"}
# task metrics: the baseline and improvement columns are named by the metric itself
TASK_LABEL = {"word_ppl": "PPL ↓ (word)", "token_ppl": "PPL ↓ (token)", "acc": "ACC ↑ (%)",
              "acc_norm": "ACC_norm ↑ (%)", "acc_bytes": "ACC_bytes ↑ (%)"}
PERCENT = ("acc", "acc_norm", "acc_bytes")


def _fmt(x, pct: bool = False, scale: float = 1.0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x * scale:.2f}%" if pct else f"{x * scale:.2f}"


def paper_table(baselines: pl.DataFrame, pairs: pl.DataFrame, metrics: list[str], family: str = "",
                task_metrics: dict | None = None) -> str:
    """Markdown table for one family. `baselines`: model, n_params, dataset + metric columns;
    `pairs`: primary, secondary, dataset, flags, impr_<metric>, heldout_impr_<metric>. ``metrics`` are the
    columns of language-modelling datasets; ``task_metrics`` maps each task dataset to its own metrics."""
    task_metrics = task_metrics or {}
    datasets = sorted(baselines["dataset"].unique().to_list()) if baselines.height else []
    cols = [(d, m, d in task_metrics) for d in datasets for m in task_metrics.get(d, metrics)]
    header = ["LLM", "SLM"] + [f"{d} {(TASK_LABEL if task else METRIC_LABEL).get(m, m)}" for d, m, task in cols]
    lines = [f"### {family}" if family else "", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    models = (baselines.group_by("model").agg(pl.col("n_params").max()).sort("n_params")
              if baselines.height else pl.DataFrame({"model": []}))
    for model in models["model"].to_list():
        cells = [model, ""]
        for d, m, task in cols:
            row = baselines.filter((pl.col("model") == model) & (pl.col("dataset") == d))
            col = m if task else BASE_COL[m]
            v = row[col][0] if row.height and col in row.columns else None
            cells.append(_fmt(v, scale=100.0 if m in PERCENT else 1.0))
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    for kind, prefix in (("in-sample", "impr_"), ("held-out", "heldout_impr_")):
        lines.append(f"| *Improvement relative to the best single model (%), {kind}* |" + " |" * (len(header) - 1))
        if not pairs.height:
            continue
        order = pairs.select("primary", "secondary", "k_sort").unique().sort(["k_sort", "primary", "secondary"])
        for prim, sec, _ in order.iter_rows():
            sub = pairs.filter((pl.col("primary") == prim) & (pl.col("secondary") == sec))
            flagged = [f for f in sub["flags"].to_list() if f]
            dagger = " †" if flagged else ""
            if flagged and kind == "in-sample":
                notes.append(f"† {prim} + {sec}: stores differ in {'; '.join(sorted(set(flagged)))}")
            cells = [prim + dagger, sec]
            for d, m, task in cols:
                row = sub.filter(pl.col("dataset") == d)
                col = prefix + (m if task else IMPR_COL[m])
                v = row[col][0] if row.height and col in row.columns else None
                cells.append(_fmt(v, pct=True))
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.extend(notes)
    return "\n".join(lines).strip() + "\n"


def markdown(df: pl.DataFrame) -> str:
    """A plain markdown table of a frame (floats to 4 significant digits; inf and nan spelled out)."""
    def cell(v):
        if isinstance(v, float):
            return "inf" if v == math.inf else ("nan" if v != v else f"{v:.4g}")
        return "" if v is None else str(v)
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.iter_rows()]
    return "\n".join(lines)
