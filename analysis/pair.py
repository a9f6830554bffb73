"""`Pair`: the one object to explore the fusion of two cached models (DESIGN.md section 3).

    import analysis
    pair = analysis.Pair("stores/wikitext2/test/gpt2-xl/....zarr", "stores/wikitext2/test/gpt2/....zarr")
    pair.sweep(numpy.linspace(0, 1, 101))     # polars frame: nll, ppl, bpc, bpb, acc_lo/hi, T/F/N flips
    pair.optimum()                            # exact alpha_nll, alpha_acc, improvement domains
    pair.partitions()                         # T/F/N counts, exchange thresholds per position
    pair.heldout(valid_pair)                  # weight chosen on another split, applied here

The primary A is the larger model (by total parameter count) unless ``order="given"``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.store import align
from pipeline.store import open_store as _open_store

from .data import PairData
from .errors import HeldoutMismatchError, WeightError
from .metrics import betas_to_weights, sweep_frame
from .optimum import AccOptimum, NllOptimum, acc_optimum, nll_optimum
from .partitions import Partitions, partitions

log = logging.getLogger(__name__)

LOWER_IS_BETTER = ("nll", "ppl", "bpc", "bpb")
HIGHER_IS_BETTER = ("acc_lo", "acc_hi")


def heldout_flip(mine: tuple, theirs: tuple) -> bool:
    """Whether the validation pair has the two models the other way round (its w becomes 1 - w here)."""
    if theirs == mine:
        return False
    if theirs == mine[::-1]:
        return True
    raise HeldoutMismatchError(f"the held-out pair is of models {theirs} but this pair is of {mine}; choose the "
                               "weight on a validation split of the same two models")


def open_store(path, allow_partial: bool = False):
    """Open a store (see `pipeline.store.open_store`)."""
    return _open_store(path, allow_partial=allow_partial)


def _as_store(x):
    return open_store(x) if isinstance(x, (str, Path)) else x


def _name(store) -> str:
    return str(store.model.get("name", store.path))


def _params(store, which: str = "n_params") -> float:
    v = store.model.get(which)
    return float(v) if v is not None else math.nan


def relative_improvement(fused: dict, a: dict, b: dict) -> dict:
    """Paper-style relative improvement (%) against the best single model, per metric.

    Lower-is-better metrics: (best - fused) / best * 100; ACC: (fused - best) / best * 100. A metric that the
    stores do not define (BPC / BPB without text: None) stays None.
    """
    out = {}
    for m in LOWER_IS_BETTER:
        if fused[m] is None or a[m] is None or b[m] is None:
            out[m] = None
            continue
        best = min(a[m], b[m])
        out[m] = (best - fused[m]) / best * 100.0 if best and math.isfinite(best) else math.nan
    for m in HIGHER_IS_BETTER:
        best = max(a[m], b[m])
        out[m] = (fused[m] - best) / best * 100.0 if best else math.nan
    return out


@dataclass(frozen=True)
class Optimum:
    """Exact optima of a pair. w in [0, 1], beta = alpha = w / (1 - w) (inf: A alone)."""

    w_nll: float
    alpha_nll: float
    w_d_nll: float  # fused NLL <= A's exactly on [w_d_nll, 1]
    d_nll: float  # the same in beta: [d_nll, inf)
    w_acc: float  # canonical maximiser of acc_lo (geometric midpoint in beta of the top interval)
    alpha_acc: float
    acc_intervals: tuple  # every maximising interval of acc_lo (optimum.WInterval)
    w_d_acc: float
    d_acc: float  # lower end in beta of the part of {acc_lo >= ACC_A} holding beta = inf
    d_acc_disconnected: bool  # {acc_lo >= ACC_A} has other parts below it
    at_nll: dict  # fused metrics (a sweep row) at w_nll
    at_acc: dict  # ... at w_acc
    primary: dict  # A alone (w = 1)
    secondary: dict  # B alone (w = 0)
    improvement: dict  # relative improvement (%): nll/ppl/bpc/bpb at w_nll, acc_lo/acc_hi at w_acc
    nll_detail: NllOptimum = field(repr=False, default=None)
    acc_detail: AccOptimum = field(repr=False, default=None)

    @property
    def d_nll_domain(self) -> tuple[float, float]:
        return (self.d_nll, math.inf)


@dataclass(frozen=True)
class Heldout:
    """The weights chosen on another split's pair, and what they give on this one."""

    w_nll: float
    alpha_nll: float
    w_acc: float
    alpha_acc: float
    at_nll: dict
    at_acc: dict
    improvement: dict  # relative improvement (%) of the held-out weights on this pair
    in_sample: Optimum


def _row(frame: pl.DataFrame, i: int) -> dict:
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in frame.row(i, named=True).items()}


def order_stores(a, b, order: str = "auto"):
    """(primary, secondary): the larger model (total parameters) first for ``order="auto"``, as given for "given"."""
    if order not in ("auto", "given"):
        raise ValueError(f"order must be 'auto' (larger model primary) or 'given'; got {order!r}")
    if order == "auto":
        pa, pb = _params(a), _params(b)
        if pb > pa:
            log.info("swapping: %s (%g params) is larger than %s (%g); it becomes the primary",
                     _name(b), pb, _name(a), pa)
            return b, a
        if math.isnan(pa) or math.isnan(pb):
            log.warning("parameter counts missing; keeping %s as the primary", _name(a))
    return a, b


class TwoStores:
    """What every pair of stores (`Pair`, `analysis.TaskPair`) says about its two models."""

    primary: object
    secondary: object

    @property
    def names(self) -> tuple[str, str]:
        return _name(self.primary), _name(self.secondary)

    def param_ratio(self, which: str = "n_params_nonembed") -> float:
        """k = |params A| / |params B| (non-embedding counts by default; 'n_params' for totals)."""
        return _params(self.primary, which) / _params(self.secondary, which)


class Pair(TwoStores):
    """Two stores of one token stream: primary A (usually larger) and secondary B.

    ``engine="local"`` (default) holds the per-position arrays in memory; ``engine="dask"`` runs on Dask one task per
    chunk group (stores larger than memory, or a cluster: ``client`` a `distributed.Client`, None for the threaded
    scheduler; ``engine_options`` go to `analysis.engines.dask.DaskEngine`) with the same results, for sweep, at,
    optimum, heldout and partitions; what needs every position in memory (``data``, the bootstrap, the theorem
    checks) raises `analysis.engines.EngineNotSupportedError` there.
    """

    def __init__(self, primary, secondary, *, order: str = "auto", engine: str = "local", client=None,
                 **engine_options):
        from .engines import check_engine

        check_engine(engine)
        a, b = order_stores(_as_store(primary), _as_store(secondary), order)
        self.alignment = align(a, b)
        self.alignment.raise_if_incompatible()
        self.primary, self.secondary = a, b
        self.flags = list(self.alignment.flagged)
        self._data: PairData | None = None
        self._optimum: Optimum | None = None
        self.engine = engine
        self._engine = None
        self._optima = None  # (NllOptimum, AccOptimum, frame) computed ahead by `analysis.engines.dask.prefetch`
        if engine == "dask":
            from .engines.dask import DaskEngine

            self._engine = DaskEngine(a, b, client=client, **engine_options)

    def __repr__(self) -> str:
        flags = f", flagged: {self.alignment.flags}" if self.flags else ""
        return f"Pair(A={_name(self.primary)!r}, B={_name(self.secondary)!r}, N={self.primary.n}{flags})"

    @property
    def data(self) -> PairData:
        """Per-position arrays (phase 1), computed once."""
        if self._engine is not None:
            from .engines.dask import not_supported

            raise not_supported("Pair.data (and what reads it: bootstrap, theorem checks, RBP of the fusion)")
        if self._data is None:
            self._data = PairData.load(self.primary, self.secondary)
        return self._data

    def _frame(self, weights) -> pl.DataFrame:
        return self._engine.sweep(weights) if self._engine is not None else sweep_frame(self.data, weights)

    def sweep(self, weights=None, *, betas=None) -> pl.DataFrame:
        """Fused metrics at each weight (or each beta); see `analysis.metrics`."""
        if (weights is None) == (betas is None):
            raise WeightError("give exactly one of weights=... (w in [0, 1]) or betas=... (beta in [0, inf])")
        w = betas_to_weights(betas) if betas is not None else weights
        return self._frame(w)

    def at(self, w: float) -> dict:
        """One sweep row as a dict."""
        return _row(self._frame([w]), 0)

    def optimum(self) -> Optimum:
        if self._optimum is None:
            if self._engine is not None:
                nll, acc, frame = self._optima or self._engine.optima()
            else:
                nll = nll_optimum(self.data)
                acc = acc_optimum(self.data)
                frame = sweep_frame(self.data, [nll.w, acc.w, 1.0, 0.0])
            at_nll, at_acc, pa, pb = (_row(frame, i) for i in range(4))
            fused = {**{m: at_nll[m] for m in LOWER_IS_BETTER}, **{m: at_acc[m] for m in HIGHER_IS_BETTER}}
            self._optimum = Optimum(
                w_nll=nll.w, alpha_nll=nll.alpha, w_d_nll=nll.w_domain, d_nll=nll.d,
                w_acc=acc.w, alpha_acc=acc.alpha, acc_intervals=acc.intervals, w_d_acc=acc.w_domain, d_acc=acc.d,
                d_acc_disconnected=acc.disconnected, at_nll=at_nll, at_acc=at_acc, primary=pa, secondary=pb,
                improvement=relative_improvement(fused, pa, pb), nll_detail=nll, acc_detail=acc)
        return self._optimum

    def partitions(self) -> Partitions:
        if self._engine is not None:
            return self._engine.partitions()
        return partitions(self.primary, self.secondary, self.data)

    def heldout(self, valid_pair: Pair) -> Heldout:
        """Choose the weights on ``valid_pair`` (same two models, another split) and apply them here."""
        if not isinstance(valid_pair, Pair):
            raise HeldoutMismatchError(f"heldout needs a Pair of validation stores; got {type(valid_pair).__name__}")
        flip = heldout_flip(self.names, valid_pair.names)
        v = valid_pair.optimum()
        w_nll, w_acc = (1.0 - v.w_nll, 1.0 - v.w_acc) if flip else (v.w_nll, v.w_acc)
        frame = self._frame([w_nll, w_acc])
        at_nll, at_acc = _row(frame, 0), _row(frame, 1)
        ins = self.optimum()
        fused = {**{m: at_nll[m] for m in LOWER_IS_BETTER}, **{m: at_acc[m] for m in HIGHER_IS_BETTER}}
        beta = lambda w: math.inf if w >= 1.0 else w / (1.0 - w)  # noqa: E731
        return Heldout(w_nll, beta(w_nll), w_acc, beta(w_acc), at_nll, at_acc,
                       relative_improvement(fused, ins.primary, ins.secondary), ins)


def stream_pairs(members, order: str = "auto", cls=None):
    """Every pair of different models among stores of one token stream.

    Yields (a, b, pair, error): ``pair`` is the `Pair` (or ``cls(a, b, order=order)``, e.g. `analysis.TaskPair`;
    larger model primary unless ``order="given"``), or None with the `IncompatiblePairError` that forbids it (say,
    a different vocabulary behind an equal stream hash) or the `StoreError` of a store found damaged on reading.
    """
    cls = cls or Pair
    import itertools

    from pipeline.store import StoreError

    for a, b in itertools.combinations(members, 2):
        if _name(a) == _name(b):
            continue
        try:
            pair = cls(a, b, order=order)
        except StoreError as e:  # IncompatiblePairError, or a damaged chunk read while aligning
            yield a, b, None, e
            continue
        yield a, b, pair, None


def weights_grid(n: int = 101) -> np.ndarray:
    return np.linspace(0.0, 1.0, n)
