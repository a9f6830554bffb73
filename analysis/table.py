"""The paper's table layout (Table 1 of the AR paper) as markdown.

    | LLM | SLM | <dataset> PPL ↓ | <dataset> BPC ↓ | <dataset> ACC ↑ | ...
    single-model rows (one per model, SLM column empty), then
    "Improvement relative to the best single model (%)": one row per pair, in-sample, then held-out.
ACC improvements use the certified lower bound at the exact ACC optimum. Pairs whose stores differ in
context length, stride, dtype or quantisation carry a dagger and are listed under the table.
"""

from __future__ import annotations

import math

import polars as pl

METRIC_LABEL = {"ppl": "PPL ↓", "bpc": "BPC ↓", "bpb": "BPB ↓", "acc": "ACC ↑ (%)", "nll": "NLL ↓"}
# baseline column and improvement column of each table metric
BASE_COL = {"ppl": "ppl", "bpc": "bpc", "bpb": "bpb", "acc": "acc", "nll": "nll"}
IMPR_COL = {"ppl": "ppl", "bpc": "bpc", "bpb": "bpb", "acc": "acc_lo", "nll": "nll"}


def _fmt(x, pct: bool = False, scale: float = 1.0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x * scale:.2f}%" if pct else f"{x * scale:.2f}"


def paper_table(baselines: pl.DataFrame, pairs: pl.DataFrame, metrics: list[str], family: str = "") -> str:
    """Markdown table for one family. `baselines`: model, n_params, dataset + metric columns;
    `pairs`: primary, secondary, dataset, flags, impr_<metric>, heldout_impr_<metric>."""
    datasets = sorted(baselines["dataset"].unique().to_list()) if baselines.height else []
    cols = [(d, m) for d in datasets for m in metrics]
    header = ["LLM", "SLM"] + [f"{d} {METRIC_LABEL.get(m, m)}" for d, m in cols]
    lines = [f"### {family}" if family else "", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    models = (baselines.group_by("model").agg(pl.col("n_params").max()).sort("n_params")
              if baselines.height else pl.DataFrame({"model": []}))
    for model in models["model"].to_list():
        cells = [model, ""]
        for d, m in cols:
            row = baselines.filter((pl.col("model") == model) & (pl.col("dataset") == d))
            v = row[BASE_COL[m]][0] if row.height else None
            cells.append(_fmt(v, scale=100.0 if m == "acc" else 1.0))
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
            for d, m in cols:
                row = sub.filter(pl.col("dataset") == d)
                col = prefix + IMPR_COL[m]
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
