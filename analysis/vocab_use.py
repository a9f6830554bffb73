"""Vocabulary use by model size (the paper's appendix B.1; issue 7.6).

For each store of one token stream: the share of the dataset's distinct target tokens that the model ever
predicts as top-1 (topk_ids[:, 0]; with exact ties at the top, the stored first id),
    share = |{top-1 predictions} ∩ {targets}| / |{targets}|,
beside the number of distinct top-1 predictions (also those never a target) and the parameter counts.
"""

from __future__ import annotations

import numpy as np
import polars as pl


def _distinct(store, name: str, column: int | None = None, chunk: int = 1 << 18) -> np.ndarray:
    seen = np.zeros(store.n_classes, bool)
    for lo in range(0, store.n, chunk):
        x = store.read([name], lo, min(store.n, lo + chunk))[name]
        x = x[:, column] if column is not None else x
        x = x[(x >= 0) & (x < store.n_classes)]
        seen[x] = True
    return seen


def vocab_use(stores) -> pl.DataFrame:
    """One row per store: model, n_params, n_params_nonembed, n_target_types, n_predicted_types,
    n_predicted_target_types, share (sorted by n_params)."""
    rows = []
    for s in stores:
        targets = _distinct(s, "targets")
        pred = _distinct(s, "topk_ids", 0)
        width = min(len(targets), len(pred))
        hit = int(np.count_nonzero(targets[:width] & pred[:width]))
        n_t = int(targets.sum())
        rows.append({"model": str(s.model.get("name", s.path)), "n_params": s.model.get("n_params"),
                     "n_params_nonembed": s.model.get("n_params_nonembed"), "n_target_types": n_t,
                     "n_predicted_types": int(pred.sum()), "n_predicted_target_types": hit,
                     "share": hit / n_t if n_t else float("nan")})
    return pl.DataFrame(rows).sort("n_params", nulls_last=True)


def plot_vocab_use(frame: pl.DataFrame, ax=None, param_col: str = "n_params_nonembed"):
    """Share of the dataset's token types predicted as top-1 against model size. Only draws."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    ax.plot(frame[param_col].to_numpy(), frame["share"].to_numpy(), "o-")
    for m, x, y in frame.select("model", param_col, "share").iter_rows():
        ax.annotate(m, (x, y), fontsize="small")
    ax.set_xscale("log")
    ax.set_xlabel(f"parameters ({param_col})")
    ax.set_ylabel("share of target types ever predicted top-1")
    return ax
