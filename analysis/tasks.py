"""`TaskPair`: Accept-Reject fusion of two cached models on a task store (LAMBADA's last word, multiple choice).

    import analysis
    tp = analysis.TaskPair("stores/arc_easy/test/gpt2-xl/....zarr", "stores/arc_easy/test/gpt2/....zarr")
    tp.sweep(numpy.linspace(0, 1, 101))   # polars: acc, acc_norm, acc_bytes (or word/token PPL, certified ACC)
    tp.optimum()                          # per metric: best w, beta, value, maximising interval, improvement
    tp.heldout(valid_tp)                  # the weights chosen on another split, applied here

Task stores are described in `pipeline.store.tasks`: positions ordered by (item, option, token); a and b are the
two models' exact target probabilities exp(target_logprob) (float32 in the store, float64 here), and every sum
is float64. The primary A is the larger model unless ``order="given"``; f_w = w qA + (1 - w) qB, beta = w/(1 - w).

Multiple choice (exact: scores are functions of a and b only):
    s_o(w)   = sum_{p in option o} log(w a_p + (1 - w) b_p)
    ACC(w)   = fraction of items whose label's s_o(w) is strictly larger than every other option's (a tie for
               the maximum is wrong);  ACC_norm: the same on s_o(w) / max(option_n_chars_o, 1);
               ACC_bytes: on s_o(w) / max(option_n_bytes_o, 1).
    optimum  = "grid-refined, certified": each item's correctness changes only where s_label - s_o crosses 0
               for some competitor o. Starting from a grid of cells, a cell is dropped once concavity bounds
               (each s_o is concave in w: above its chord, below its tangents) certify the sign of the difference
               on all of it, else it is bisected, down to a few ulps where a change point is recorded; the
               item is then evaluated between consecutive change points, and ACC(w) on every piece between all
               items' change points comes from one sort-and-sweep of the items' right-intervals (shared with
               `analysis.optimum`). The maximiser is found over all of [0, 1], not only on the grid.
Last word (LAMBADA; one option per item, its positions the tokens of the final word):
    word PPL(w)  = exp(-(1/n_items) sum_items sum_{p in item} log(w a_p + (1 - w) b_p))
    token PPL(w) = exp(-(1/N) sum_p log(w a_p + (1 - w) b_p))
    ACC(w)       = certified per DESIGN section 3: an item is certified right iff all its positions are
               certified right at w (strict top-1 under teacher forcing), certified wrong iff one is certified
               wrong; its certified set of w is the intersection of its positions' conservative intervals
               (`analysis.data.PairData`), its possible set the intersection of the optimistic ones. Reported as
               acc_lo (= acc) and acc_hi with the undetermined count; its exact maximiser comes from sorting the
               items' interval ends (`analysis.optimum.acc_optimum` on item-level intervals).
    The word-PPL optimum: -sum_items log prod_{p in item} (w a_p + (1 - w) b_p) = -sum_p log(w a_p + (1 - w) b_p)
    is the token NLL itself (convex in w), so word and token PPL share one exact minimiser, `nll_optimum` on the
    positions; only the normaliser (items or positions) differs.
At w = 1 / w = 0 the fusion is A / B alone and every metric is the single model's, computed exactly as
`pipeline.store.tasks.task_metrics` computes it (from target_logprob, target_rank, target_ties).
Relative improvement (paper style, against the better single model): (fused - best) / best * 100 for
accuracies, (best - fused) / best * 100 for PPLs.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

import numpy as np
import polars as pl

from pipeline.store import SchemaError, align
from pipeline.store import tasks as store_tasks
from pipeline.store.schema import TASK_TABLES

from . import kernels
from .curves import log_beta_grid
from .data import PairData
from .errors import HeldoutMismatchError, NotATaskStoreError, TaskLayoutError, TaskMismatchError, WeightError
from .metrics import betas_to_weights, check_weights, nll_sums, right_counts, weight_to_beta
from .optimum import (
    AccOptimum,
    NllOptimum,
    WInterval,
    acc_optimum,
    interval_pieces,
    nll_optimum,
    pieces_optimum,
)
from .pair import TwoStores, _as_store, heldout_flip, order_stores

log = logging.getLogger(__name__)

KINDS = store_tasks.KINDS
# metric -> (norm index of kernels.mc_counts, the option table it divides by)
MC_NORMS = {"acc": (0, None), "acc_norm": (1, "option_n_chars"), "acc_bytes": (2, "option_n_bytes")}
LOWER_IS_BETTER = ("word_ppl", "token_ppl")
# The weights the multiple-choice optimum starts from (cells are refined as needed; the result does not depend
# on this grid except through rounding): a linear grid plus betas log-spaced from 1e-6 to 1e6.
OPT_GRID = np.union1d(np.linspace(0.0, 1.0, 33), log_beta_grid(25, 1e-6, 1e6))
MAX_VISITS = 200_000  # cells per (item, competitor) in the optimum's root search before giving up (flagged)


def is_task_store(store) -> bool:
    """Does the store carry a task (the ``task`` attribute of a LAMBADA / multiple-choice store)?"""
    return isinstance(store.attrs.get("task"), dict)


def _task_attr(store) -> dict:
    task = store.attrs.get("task")
    if not isinstance(task, dict):
        raise NotATaskStoreError(
            f"{store.path} is not a task store: it has no 'task' attribute (found {task!r}); task stores come from "
            "task extraction (LAMBADA, multiple choice). For language-model stores use analysis.Pair")
    if task.get("kind") not in KINDS:
        raise NotATaskStoreError(f"{store.path}: task kind {task.get('kind')!r} is not one of {KINDS}")
    missing = [n for n in ("item_id", "option_id") if not store.has(n)]
    missing += [t for t in ("item_label", "item_n_options") if t not in store.tables]
    if missing:
        raise NotATaskStoreError(f"{store.path} has a 'task' attribute but lacks {missing}; re-extract it")
    return task


@dataclass(frozen=True)
class TaskLayout:
    """Items, options and positions of a task store (rows = options in (item, option) order)."""

    kind: str
    name: str
    metrics: tuple  # the task's metrics to show in tables (attr task.metrics, those this module computes)
    offsets: np.ndarray  # (n_rows + 1,) int64: option row r holds positions offsets[r] .. offsets[r + 1] - 1
    item_first: np.ndarray  # (n_items + 1,) int64: item i holds rows item_first[i] .. item_first[i + 1] - 1
    label: np.ndarray  # (n_items,) int64
    div: np.ndarray  # (3, n_rows) float64 divisors of the option scores: 1, max(chars, 1), max(bytes, 1)
    tables: dict = field(repr=False)  # the raw task tables

    @property
    def n_items(self) -> int:
        return int(self.label.shape[0])

    @property
    def n_rows(self) -> int:
        return int(self.offsets.shape[0] - 1)

    @property
    def max_options(self) -> int:
        return int(np.diff(self.item_first).max()) if self.n_items else 0

    def available(self) -> tuple[str, ...]:
        """The metrics this store supports (ACC_norm / ACC_bytes need their option tables)."""
        if self.kind == "last_word":
            return store_tasks.METRICS["last_word"]
        return tuple(m for m, (_, t) in MC_NORMS.items() if t is None or t in self.tables)


def load_layout(store) -> TaskLayout:
    """Read and check the task layout of a store; raises NotATaskStoreError / TaskLayoutError."""
    task = _task_attr(store)
    tables = {t: store.table(t) for t in store_tasks_tables(store)}
    arr = store.read(["item_id", "option_id"])
    try:
        store_tasks.check_tables(tables)
        offsets = store_tasks.option_offsets(arr["item_id"], arr["option_id"], tables["item_n_options"])
    except SchemaError as e:
        raise TaskLayoutError(f"{store.path}: {e}") from e
    kind = task["kind"]
    n_opt = np.asarray(tables["item_n_options"], np.int64)
    if kind == "last_word" and (n_opt != 1).any():
        raise TaskLayoutError(f"{store.path}: a last_word task has one option per item; item "
                              f"{int(np.flatnonzero(n_opt != 1)[0])} has {int(n_opt[n_opt != 1][0])}")
    if offsets[-1] != store.n:
        raise TaskLayoutError(f"{store.path}: the options cover {int(offsets[-1])} of {store.n} positions")
    n_rows = len(offsets) - 1
    div = np.ones((kernels.NORMS, n_rows))
    for k, t in ((1, "option_n_chars"), (2, "option_n_bytes")):
        if t in tables:
            div[k] = np.maximum(np.asarray(tables[t], np.float64), 1.0)
    layout = TaskLayout(kind, str(task.get("name", store.dataset.get("name"))), (), offsets.astype(np.int64),
                        np.concatenate([[0], np.cumsum(n_opt)]).astype(np.int64),
                        np.asarray(tables["item_label"], np.int64), div, tables)
    wanted = list(task.get("metrics") or layout.available())
    unknown = [m for m in wanted if m not in layout.available()]
    if unknown:
        log.warning("%s: task metrics %s are not computed for a %s task with tables %s; they are left out",
                    store.path, unknown, kind, sorted(tables))
    return replace(layout, metrics=tuple(m for m in wanted if m in layout.available()))


def store_tasks_tables(store) -> list[str]:
    return [t for t in TASK_TABLES if t in store.tables]


# ---------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class TaskMetricOptimum:
    """The best weight for one task metric. w in [0, 1], alpha = w / (1 - w) (inf: A alone)."""

    metric: str
    w: float
    alpha: float
    value: float  # the fused metric at w (evaluated there)
    primary: float  # A alone (w = 1)
    secondary: float  # B alone (w = 0)
    improvement: float  # paper-style relative improvement (%) against the better single model
    w_lo: float  # the maximising interval holding w (accuracies), or w itself (PPL: an exact point)
    w_hi: float
    intervals: tuple = ()  # every maximising interval (optimum.WInterval), increasing w
    w_domain: float = math.nan  # lower end in w of {metric no worse than A alone} holding w = 1
    d: float = math.nan  # the same in beta
    method: str = ""  # how it was found
    detail: object = field(repr=False, default=None)  # AccOptimum / NllOptimum

    @property
    def beta(self) -> float:
        return self.alpha


@dataclass(frozen=True)
class TaskOptimum:
    kind: str
    task: str
    metrics: dict  # metric -> TaskMetricOptimum
    primary: dict  # A alone: a sweep row at w = 1
    secondary: dict  # B alone: at w = 0

    @property
    def improvement(self) -> dict:
        return {m: o.improvement for m, o in self.metrics.items()}

    def row(self) -> dict:
        """Flat columns for the sweep CLI's pairs table: w_/alpha_/fused_/impr_<metric>, plus the LM-style
        w_nll, alpha_nll, d_nll (last word: the word/token PPL optimum) and w_acc, alpha_acc, d_acc."""
        out = {}
        for m, o in self.metrics.items():
            out.update({f"w_{m}": o.w, f"alpha_{m}": o.alpha, f"fused_{m}": o.value, f"impr_{m}": o.improvement})
        if "word_ppl" in self.metrics:
            o = self.metrics["word_ppl"]
            out.update(w_nll=o.w, alpha_nll=o.alpha, d_nll=o.d)
        if "acc" in self.metrics:
            o = self.metrics["acc"]
            out.update(w_acc=o.w, alpha_acc=o.alpha, d_acc=o.d, n_acc_intervals=len(o.intervals))
        return out


@dataclass(frozen=True)
class TaskHeldout:
    """The weights chosen on another split's task pair, and what they give on this one."""

    weights: dict  # metric -> w chosen on the other split
    values: dict  # metric -> fused value here at that w
    improvement: dict  # metric -> relative improvement (%) here, against this split's better single model
    in_sample: TaskOptimum

    def row(self) -> dict:
        out = {}
        for m, w in self.weights.items():
            out.update({f"heldout_w_{m}": w, f"heldout_alpha_{m}": _beta(w), f"heldout_fused_{m}": self.values[m],
                        f"heldout_impr_{m}": self.improvement[m]})
        if "word_ppl" in self.weights:
            out.update(heldout_w_nll=self.weights["word_ppl"], heldout_alpha_nll=_beta(self.weights["word_ppl"]))
        if "acc" in self.weights:
            out.update(heldout_w_acc=self.weights["acc"], heldout_alpha_acc=_beta(self.weights["acc"]))
        return out


def _beta(w: float) -> float:
    return math.inf if w >= 1.0 else w / (1.0 - w)


def relative_improvement(metric: str, fused: float, a: float, b: float) -> float:
    """Paper style, against the better single model: PPLs (best - fused) / best * 100, accuracies
    (fused - best) / best * 100."""
    if metric in LOWER_IS_BETTER:
        best = min(a, b)
        return (best - fused) / best * 100.0 if best and math.isfinite(best) else math.nan
    best = max(a, b)
    return (fused - best) / best * 100.0 if best else math.nan


def _row(frame: pl.DataFrame, i: int) -> dict:
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in frame.row(i, named=True).items()}


# ---------------------------------------------------------------------------------------------- the pair
class TaskPair(TwoStores):
    """Two task stores of one token stream (equal stream hashes: same items, options, labels and tables)."""

    def __init__(self, primary, secondary, *, order: str = "auto"):
        a, b = _as_store(primary), _as_store(secondary)
        _task_attr(a), _task_attr(b)  # refuse non-task stores before anything else
        a, b = order_stores(a, b, order)
        ta, tb = _task_attr(a), _task_attr(b)
        self.alignment = align(a, b)
        self.alignment.raise_if_incompatible()
        for key in ("kind", "name"):
            if ta.get(key) != tb.get(key):
                raise TaskMismatchError(
                    f"the stores score one token stream but differ in task.{key}: {ta.get(key)!r} in {a.path} vs "
                    f"{tb.get(key)!r} in {b.path}; re-extract one of them", field=f"task.{key}",
                    value_a=ta.get(key), value_b=tb.get(key))
        self.primary, self.secondary = a, b
        self.task = ta
        self.kind = str(ta["kind"])
        self.flags = list(self.alignment.flagged)
        self._layout: TaskLayout | None = None
        self._data: PairData | None = None
        self._items: PairData | None = None
        self._logprobs: tuple | None = None
        self._single: dict = {}
        self._optimum: TaskOptimum | None = None

    def __repr__(self) -> str:
        flags = f", flagged: {self.alignment.flags}" if self.flags else ""
        return (f"TaskPair({self.kind} {self.task.get('name')!r}, A={self.names[0]!r}, B={self.names[1]!r}, "
                f"items={self.layout.n_items}, N={self.primary.n}{flags})")

    # ------------------------------------------------------------------ data
    @property
    def layout(self) -> TaskLayout:
        if self._layout is None:
            layout = load_layout(self.primary)
            ids_a = self.primary.read(["item_id", "option_id"])
            ids_b = self.secondary.read(["item_id", "option_id"])
            for n in ("item_id", "option_id"):
                diff = np.flatnonzero(ids_a[n] != ids_b[n])
                if diff.size:
                    s = int(diff[0])
                    raise TaskMismatchError(f"{n} differs at position {s}: {ids_a[n][s]} in {self.primary.path} vs "
                                            f"{ids_b[n][s]} in {self.secondary.path}", field=n,
                                            value_a=int(ids_a[n][s]), value_b=int(ids_b[n][s]))
            for t in store_tasks_tables(self.primary):
                if t not in self.secondary.tables or not np.array_equal(self.primary.table(t),
                                                                        self.secondary.table(t)):
                    raise TaskMismatchError(f"task table {t} differs between {self.primary.path} and "
                                            f"{self.secondary.path}", field=t)
            self._layout = layout
        return self._layout

    @property
    def data(self) -> PairData:
        """Per-position arrays (a, b, certified intervals; `analysis.data.PairData`), computed once."""
        if self._data is None:
            _ = self.layout
            self._data = PairData.load(self.primary, self.secondary)
        return self._data

    @property
    def item_data(self) -> PairData:
        """Last word: item-level intervals, the intersection of the item's positions' intervals (certified:
        (max L1, min U1); possible: (max L2, min U2)); code = 2 [A right on every position] + [B likewise]."""
        if self.kind != "last_word":
            raise TaskLayoutError("item_data is the last-word (LAMBADA) item reduction; this is a multiple-choice pair")
        if self._items is None:
            d, start = self.data, self.layout.offsets[:-1]
            l1, u1 = np.maximum.reduceat(d.l1, start), np.minimum.reduceat(d.u1, start)
            l2, u2 = np.maximum.reduceat(d.l2, start), np.minimum.reduceat(d.u2, start)
            for lo, hi in ((l1, u1), (l2, u2)):
                empty = lo >= hi
                lo[empty], hi[empty] = kernels.EMPTY_L, kernels.EMPTY_U
            all_a = np.minimum.reduceat((d.code >> 1) & 1, start)
            all_b = np.minimum.reduceat(d.code & 1, start)
            la, lb = self.logprobs
            self._items = PairData(np.exp(store_tasks.segment_sums(la, self.layout.offsets)),
                                   np.exp(store_tasks.segment_sums(lb, self.layout.offsets)),
                                   (2 * all_a + all_b).astype(np.int8), l1, u1, l2, u2,
                                   np.add.reduceat(d.n_chars, start), np.add.reduceat(d.n_bytes, start))
        return self._items

    @property
    def logprobs(self) -> tuple[np.ndarray, np.ndarray]:
        """(log a, log b): the stores' float32 target_logprob as float64."""
        if self._logprobs is None:
            self._logprobs = tuple(s.read(["target_logprob"])["target_logprob"].astype(np.float64)
                                   for s in (self.primary, self.secondary))
        return self._logprobs

    def single(self, which: str) -> dict:
        """Single-model metrics of A ('A') or B ('B'), as `pipeline.store.tasks.task_metrics` defines them, with
        the per-item correctness behind each accuracy (``right_<metric>``: bool per item)."""
        if which not in self._single:
            store = {"A": self.primary, "B": self.secondary}[which]
            lay = self.layout
            lp = self.logprobs[0 if which == "A" else 1]
            arrays = {"target_logprob": lp}
            if self.kind == "last_word":
                arrays.update(store.read(["target_rank", "target_ties"]))
            metrics, right = store_tasks.single_model(self.kind, arrays, lay.tables, offsets=lay.offsets)
            out = {**metrics, **{f"right_{m}": r for m, r in right.items()}}
            if self.kind == "last_word":
                word = store_tasks.segment_sums(lp, lay.offsets)
                out.update(word_nll=float(-word.mean()), nll_sum=float(-lp.sum()))
            self._single[which] = out
        return self._single[which]

    # ------------------------------------------------------------------ sweeps
    def sweep(self, weights=None, *, betas=None) -> pl.DataFrame:
        """Fused task metrics at each weight (or each beta), in the order given.

        Multiple choice: w, beta, acc, acc_norm, acc_bytes (those the tables allow), n_right[_norm/_bytes],
        n_items. Last word: w, beta, word_ppl, token_ppl, word_nll, acc (= acc_lo, certified), acc_lo, acc_hi,
        n_right_lo, n_right_hi, n_undetermined, nll_sum, n_items.
        """
        if (weights is None) == (betas is None):
            raise WeightError("give exactly one of weights=... (w in [0, 1]) or betas=... (beta in [0, inf])")
        w = check_weights(betas_to_weights(betas) if betas is not None else weights)
        return self._mc_sweep(w) if self.kind == "multiple_choice" else self._lw_sweep(w)

    def at(self, w: float) -> dict:
        """One sweep row as a dict."""
        return _row(self.sweep([w]), 0)

    def option_scores(self, weights) -> np.ndarray:
        """(n_options_total, W) fused option scores s_o(w) (rows in (item, option) order; the interior formula at
        every weight, also at w = 0 / 1)."""
        w = check_weights(weights)
        d, lay = self.data, self.layout
        out = np.empty((lay.n_rows, w.size))
        kernels.option_scores(d.a, d.b, lay.offsets, w, 1.0 - w, out)
        return out

    def mc_right_counts(self, w: np.ndarray) -> np.ndarray:
        """(3, W) items right at each weight (rows: ACC, ACC_norm, ACC_bytes); the kernel at every weight, then the
        exact single models at w = 1 and w = 0."""
        d, lay = self.data, self.layout
        n_pieces = max(1, min(64, lay.n_items))
        out = np.zeros((n_pieces, kernels.NORMS, w.size), np.int64)
        kernels.mc_counts(d.a, d.b, lay.offsets, lay.item_first, lay.label, lay.div, w, 1.0 - w,
                          lay.max_options, out)
        counts = out.sum(axis=0)
        for which, at in (("A", w == 1.0), ("B", w == 0.0)):
            if at.any():
                s = self.single(which)
                for m, (k, _) in MC_NORMS.items():
                    if f"right_{m}" in s:
                        counts[k, at] = int(s[f"right_{m}"].sum())
        return counts

    def _mc_sweep(self, w: np.ndarray) -> pl.DataFrame:
        lay = self.layout
        counts = self.mc_right_counts(w)
        cols = {"w": w, "beta": weight_to_beta(w)}
        for m, (k, _) in MC_NORMS.items():
            if m in lay.available():
                cols[m] = counts[k] / lay.n_items
        for m, (k, _) in MC_NORMS.items():
            if m in lay.available():
                cols["n_right" + m[3:]] = counts[k]
        cols["n_items"] = np.full(w.size, lay.n_items, np.int64)
        return pl.DataFrame(cols)

    def _lw_sweep(self, w: np.ndarray) -> pl.DataFrame:
        lay = self.layout
        order = np.argsort(w, kind="stable")
        nll_sum = np.empty(w.size)
        nll_sum[order] = nll_sums(self.data, w[order])
        counts = np.empty((2, 4, w.size), np.int64)
        counts[:, :, order] = right_counts(self.item_data, w[order])
        lo, hi = counts[0].sum(axis=0), counts[1].sum(axis=0)
        n, n_items = self.data.n, lay.n_items
        with np.errstate(over="ignore"):
            word_nll = nll_sum / n_items
            word_ppl, token_ppl = np.exp(word_nll), np.exp(nll_sum / n)
        for which, at in (("A", w == 1.0), ("B", w == 0.0)):  # the single models exactly as task_metrics
            if at.any():
                s = self.single(which)
                word_nll[at], word_ppl[at], token_ppl[at] = s["word_nll"], s["word_ppl"], s["token_ppl"]
                nll_sum[at] = s["nll_sum"]
        return pl.DataFrame({
            "w": w, "beta": weight_to_beta(w), "word_ppl": word_ppl, "token_ppl": token_ppl, "word_nll": word_nll,
            "acc": lo / n_items, "acc_lo": lo / n_items, "acc_hi": hi / n_items, "n_right_lo": lo, "n_right_hi": hi,
            "n_undetermined": hi - lo, "nll_sum": nll_sum, "n_items": np.full(w.size, n_items, np.int64)})

    # ------------------------------------------------------------------ optima
    def mc_right_intervals(self, metric: str = "acc", grid=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Multiple choice: (item, lo, hi) of the open intervals of w in (0, 1) on which each item is right under
        ``metric`` (acc, acc_norm, acc_bytes); see `kernels.mc_right_intervals`."""
        if self.kind != "multiple_choice":
            raise TaskLayoutError("mc_right_intervals is for multiple-choice pairs; last-word ACC is certified "
                                  "from per-position intervals (item_data)")
        lay, d = self.layout, self.data
        if metric not in lay.available():
            raise TaskLayoutError(f"metric {metric!r} is not available for this task; available: {lay.available()}")
        k = MC_NORMS[metric][0]
        grid = OPT_GRID if grid is None else np.union1d(check_weights(grid), [0.0, 1.0])
        dv = np.ascontiguousarray(lay.div[k])
        items = np.arange(lay.n_items, dtype=np.int64)
        cap = 4
        lo = np.zeros((items.size, cap))
        hi = np.zeros((items.size, cap))
        n = np.zeros(items.size, np.int64)
        visits = np.zeros(items.size, np.int64)
        flag = np.zeros(items.size, np.int8)
        kernels.mc_right_intervals(d.a, d.b, lay.offsets, lay.item_first, lay.label, dv, grid, items, MAX_VISITS,
                                   lo, hi, n, visits, flag)
        over = np.flatnonzero(n > cap)
        if over.size:  # the few items with more right-intervals than the first pass kept: again, with room
            cap2 = int(n[over].max())
            lo2, hi2 = np.zeros((over.size, cap2)), np.zeros((over.size, cap2))
            n2, v2, f2 = np.zeros(over.size, np.int64), np.zeros(over.size, np.int64), np.zeros(over.size, np.int8)
            kernels.mc_right_intervals(d.a, d.b, lay.offsets, lay.item_first, lay.label, dv, grid,
                                       items[over], MAX_VISITS, lo2, hi2, n2, v2, f2)
            lo_f, hi_f = np.zeros((items.size, cap2)), np.zeros((items.size, cap2))
            lo_f[:, :cap], hi_f[:, :cap] = lo, hi
            lo_f[over], hi_f[over], n[over], flag[over] = lo2, hi2, n2, f2
            lo, hi = lo_f, hi_f
        if flag.any():
            log.warning("%s: the change-point search ran out of its budget on %d items (%s); their right-intervals "
                        "may miss change points", self, int(flag.sum()), metric)
        keep = np.arange(lo.shape[1])[None, :] < n[:, None]
        item = np.broadcast_to(items[:, None], lo.shape)[keep]
        return item, lo[keep], hi[keep]

    def optimum(self) -> TaskOptimum:
        """Per metric the best weight; see the module docstring for how each is found."""
        if self._optimum is None:
            self._optimum = self._mc_optimum() if self.kind == "multiple_choice" else self._lw_optimum()
        return self._optimum

    def _metric(self, metric, w, value, pa, pb, w_lo, w_hi, intervals=(), w_domain=math.nan, d=math.nan,
                method="", detail=None) -> TaskMetricOptimum:
        return TaskMetricOptimum(metric, w, _beta(w), value, pa, pb, relative_improvement(metric, value, pa, pb),
                                 w_lo, w_hi, tuple(intervals), w_domain, d, method, detail)

    def _mc_optimum(self) -> TaskOptimum:
        lay = self.layout
        ends = self.sweep([1.0, 0.0])
        pa, pb = _row(ends, 0), _row(ends, 1)
        out, details = {}, {}
        for m in lay.available():
            _, lo, hi = self.mc_right_intervals(m)
            at1 = int(self.single("A")[f"right_{m}"].sum())
            at0 = int(self.single("B")[f"right_{m}"].sum())
            details[m] = pieces_optimum(interval_pieces(lo, hi, at0, at1))
        frame = self.sweep([details[m].w for m in details])
        for i, (m, opt) in enumerate(details.items()):
            value = frame[m][i]
            if round(value * lay.n_items) != opt.n_right_lo:
                log.warning("%s: %s at the optimum's weight %r is %r but the change-point sweep gave %d items right "
                            "(a change point within rounding of the weight)", self, m, opt.w, value, opt.n_right_lo)
            iv = _holding(opt.intervals, opt.w)
            out[m] = self._metric(m, opt.w, value, pa[m], pb[m], iv.w_lo, iv.w_hi, opt.intervals, opt.w_domain, opt.d,
                                  "grid-refined: certified change points (concavity bounds + bisection), exact pieces",
                                  opt)
        return TaskOptimum(self.kind, str(self.task.get("name")), out, pa, pb)

    def _lw_optimum(self) -> TaskOptimum:
        nll: NllOptimum = nll_optimum(self.data)
        acc: AccOptimum = acc_optimum(self.item_data)
        frame = self.sweep([nll.w, acc.w, 1.0, 0.0])
        at_nll, at_acc, pa, pb = (_row(frame, i) for i in range(4))
        out = {}
        for m in ("word_ppl", "token_ppl"):
            out[m] = self._metric(m, nll.w, at_nll[m], pa[m], pb[m], nll.w, nll.w, (), nll.w_domain, nll.d,
                                  "exact: safeguarded Newton on the convex NLL (shared by word and token PPL)", nll)
        iv = _holding(acc.intervals, acc.w)
        out["acc"] = self._metric("acc", acc.w, at_acc["acc_lo"], pa["acc"], pb["acc"], iv.w_lo, iv.w_hi,
                                  acc.intervals, acc.w_domain, acc.d,
                                  "exact: sort-and-sweep of the items' certified intervals (acc_lo)", acc)
        return TaskOptimum(self.kind, str(self.task.get("name")), out, pa, pb)

    def heldout(self, valid_pair: TaskPair) -> TaskHeldout:
        """Choose each metric's weight on ``valid_pair`` (same two models and task, another split); apply it here."""
        if not isinstance(valid_pair, TaskPair):
            raise HeldoutMismatchError(f"heldout needs a TaskPair of validation stores; got {type(valid_pair).__name__}")
        flip = heldout_flip(self.names, valid_pair.names)
        if valid_pair.kind != self.kind:
            raise HeldoutMismatchError(f"the held-out pair is a {valid_pair.kind} task, this one {self.kind}")
        v, ins = valid_pair.optimum(), self.optimum()
        weights = {m: (1.0 - o.w if flip else o.w) for m, o in v.metrics.items() if m in ins.metrics}
        frame = self.sweep(list(weights.values()))
        values = {m: frame[m][i] for i, m in enumerate(weights)}
        impr = {m: relative_improvement(m, values[m], ins.primary[m], ins.secondary[m]) for m in weights}
        return TaskHeldout(weights, values, impr, ins)


def _holding(intervals: tuple, w: float) -> WInterval:
    """The interval (of a maximising run) that holds w."""
    for iv in intervals:
        if iv.w_lo <= w <= iv.w_hi:
            return iv
    return intervals[-1]


def task_stream_pairs(members, order: str = "auto"):
    """`analysis.pair.stream_pairs` for task stores: yields (a, b, TaskPair or None, error)."""
    from .pair import stream_pairs

    yield from stream_pairs(members, order, cls=TaskPair)


__all__ = ["TaskPair", "TaskLayout", "TaskOptimum", "TaskMetricOptimum", "TaskHeldout", "is_task_store",
           "load_layout", "task_stream_pairs", "relative_improvement"]
