"""Task stores: LAMBADA's last word and multiple choice (CBT, ARC), torch-free.

A task store is an ordinary store whose positions are grouped by option: every position carries
`item_id` (0..n_items-1) and `option_id` (0..n_options-1 of its item), positions are ordered by
(item, option, token), and every option has at least one position. The option of a position is the row
`first_option[item_id] + option_id` of the option tables, with `first_option = cumsum(item_n_options)`
shifted by one. The store's `task` attribute says which kind it is:

* ``last_word`` (LAMBADA): one option per item, its positions the tokens of " " + the final word.
  Metrics: word PPL = exp(-mean over items of the word's summed log-prob) (lm-evaluation-harness's
  `perplexity`, the paper's LTD column), token PPL = exp(-mean over positions), ACC = the fraction of items
  whose every token is the strict top-1.
* ``multiple_choice``: ACC = strict argmax of the summed log-prob is the label (a tie for the maximum is
  wrong); ACC_norm = the same on the sum divided by the option's length in characters
  (lm-evaluation-harness's `acc_norm`); ACC_bytes: divided by its UTF-8 bytes.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import SchemaError

KINDS = ("last_word", "multiple_choice")
METRICS = {"last_word": ("word_ppl", "token_ppl", "acc"), "multiple_choice": ("acc", "acc_norm", "acc_bytes")}


def option_offsets(item_id: np.ndarray, option_id: np.ndarray, item_n_options: np.ndarray) -> np.ndarray:
    """(n_options_total + 1,) first position of every option row; checks the task layout."""
    n_opt = np.asarray(item_n_options, np.int64)
    if n_opt.ndim != 1 or (n_opt < 1).any():
        raise SchemaError("item_n_options must be a 1-D array of counts >= 1")
    first = np.concatenate([[0], np.cumsum(n_opt)])
    item = np.asarray(item_id, np.int64)
    opt = np.asarray(option_id, np.int64)
    if len(item) != len(opt):
        raise SchemaError(f"item_id has {len(item)} positions, option_id {len(opt)}")
    if len(item) and (item.min() < 0 or item.max() >= len(n_opt) or opt.min() < 0):
        raise SchemaError(f"item_id outside [0, {len(n_opt)}) or a negative option_id")
    if len(item) and (opt >= n_opt[item]).any():
        bad = int(np.flatnonzero(opt >= n_opt[item])[0])
        raise SchemaError(f"position {bad}: option_id {opt[bad]} >= item {item[bad]}'s {n_opt[item[bad]]} options")
    row = first[item] + opt
    if len(row) and (np.diff(row) < 0).any():
        raise SchemaError("task positions are not ordered by (item, option)")
    offsets = np.searchsorted(row, np.arange(first[-1] + 1), side="left")
    empty = np.flatnonzero(offsets[1:] == offsets[:-1])
    if len(empty):
        r = int(empty[0])
        i = int(np.searchsorted(first, r, side="right") - 1)
        raise SchemaError(f"option {r - first[i]} of item {i} has no scored position ({len(empty)} empty options)")
    return offsets


def segment_sums(x: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """float64 sums of x over [offsets[r], offsets[r + 1]) (every segment non-empty)."""
    return np.add.reduceat(np.asarray(x, np.float64), offsets[:-1]) if len(offsets) > 1 else np.zeros(0)


def strict_correct(scores: np.ndarray, item_n_options: np.ndarray, item_label: np.ndarray) -> np.ndarray:
    """(n_items,) bool: the label's score is strictly larger than every other option's."""
    n_opt = np.asarray(item_n_options, np.int64)
    first = np.concatenate([[0], np.cumsum(n_opt)])
    label = np.asarray(item_label, np.int64)
    own = scores[first[:-1] + label]
    others = scores.copy()
    others[first[:-1] + label] = -np.inf
    best_other = np.maximum.reduceat(others, first[:-1])
    return own > best_other


def check_tables(tables: dict) -> None:
    n_opt = np.asarray(tables["item_n_options"])
    label = np.asarray(tables["item_label"])
    if label.shape != n_opt.shape:
        raise SchemaError(f"item_label has {label.shape} entries, item_n_options {n_opt.shape}")
    bad = np.flatnonzero((label < 0) | (label >= n_opt))
    if len(bad):
        i = int(bad[0])
        raise SchemaError(f"item {i}: label {label[i]} is not among its {n_opt[i]} options")
    for name in ("option_n_chars", "option_n_bytes"):
        if name in tables and len(tables[name]) != int(n_opt.sum()):
            raise SchemaError(f"{name} has {len(tables[name])} rows for {int(n_opt.sum())} options")


def task_metrics(kind: str, arrays: dict, tables: dict) -> dict:
    """Single-model task metrics from the position arrays (target_logprob, target_rank, target_ties, item_id,
    option_id) and the task tables."""
    return single_model(kind, arrays, tables)[0]


def single_model(kind: str, arrays: dict, tables: dict, offsets: np.ndarray | None = None) -> tuple[dict, dict]:
    """(metrics, per item whether it is right under each accuracy metric: {metric: bool (n_items,)}).

    ``offsets``: the option offsets when already known (else computed from item_id / option_id)."""
    if kind not in KINDS:
        raise SchemaError(f"task kind {kind!r}: expected one of {KINDS}")
    check_tables(tables)
    off = option_offsets(arrays["item_id"], arrays["option_id"], tables["item_n_options"]) if offsets is None \
        else offsets
    lp = np.asarray(arrays["target_logprob"], np.float64)
    n_items = len(tables["item_n_options"])
    if kind == "last_word":
        if (np.asarray(tables["item_n_options"]) != 1).any():
            raise SchemaError("a last_word task has exactly one option per item")
        word = segment_sums(lp, off)
        top1 = (np.asarray(arrays["target_rank"]) == 0) & (np.asarray(arrays["target_ties"]) == 0)
        right = {"acc": np.minimum.reduceat(top1.astype(np.int8), off[:-1]).astype(bool)}
        metrics = {"n_items": n_items, "n_positions": len(lp), "word_ppl": math.exp(-word.mean()),
                   "token_ppl": math.exp(-lp.mean()), "acc": float(right["acc"].mean())}
        return metrics, right
    scores = segment_sums(lp, off)
    right = {"acc": strict_correct(scores, tables["item_n_options"], tables["item_label"])}
    for metric, table in (("acc_norm", "option_n_chars"), ("acc_bytes", "option_n_bytes")):
        if table in tables:
            norm = scores / np.maximum(np.asarray(tables[table], np.float64), 1.0)
            right[metric] = strict_correct(norm, tables["item_n_options"], tables["item_label"])
    metrics = {"n_items": n_items, "n_positions": len(lp), **{m: float(r.mean()) for m, r in right.items()}}
    return metrics, right
