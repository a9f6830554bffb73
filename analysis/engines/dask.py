"""The pair analysis on Dask: stores larger than memory, or a cluster (DESIGN.md section 9).

One task per chunk group of positions [lo, hi): it reads both stores' chunks for the range through
`pipeline.store` (so every integrity check applies), runs phase 1 (`analysis.data.prepare_range`, the same
function the in-memory `PairData.load` calls) and the same kernels, and returns their sums over the fixed
4,096-position blocks. Chunk groups start at multiples of `kernels.BLOCK`, so a task's blocks are exactly the
in-memory engine's blocks; float sums come back per block and are reduced in block order (`kernels.reduce_blocks`),
integer counts are added: every result equals the local engine's bit for bit.

Heavy passes (phase 1: every array of both stores) and light passes (only ``target_logprob``: the probabilities
a, b that the NLL needs, 8 B per position) are separate task waves:
- sweep: one heavy pass (it also records the per-bin counts the ACC optimum needs).
- NLL optimum: the in-memory solver (`optimum.solve_nll`) with each evaluation of L', E or L one light wave:
  the same safeguarded Newton steps on the same block-reduced sums, so the same optimum. The first wave also
  evaluates the slopes at w = 0 and 1 and the checks (a = b = 0 somewhere, a = b everywhere, a = 0 somewhere).
- ACC optimum: exact without a global sort. The first heavy pass counts, per bin of w (BINS bins, logit-spaced),
  the certified intervals' starts and ends in the bin and its extreme end points; from these counts every bin has
  sure bounds [lo_j, hi_j] of acc_lo on it. A second heavy pass gathers the end points (per partition code,
  certified and possible) only in the bins that can hold the maximum (hi_j >= the best sure lower bound), the bins
  where acc_lo may cross ACC_A (for D_acc), and the bin of w_nll; there acc_lo is exact piece by piece, every
  other bin is one piece whose comparisons with the maximum and with ACC_A are already decided. The pieces go
  through the in-memory `optimum.pieces_optimum`, so the maximising intervals, alpha_acc and D_acc are the same.
  The rows at w_nll and w_acc (acc_lo, acc_hi, T/F/N flips) are counted from the same gathered end points.

Memory: a task holds its chunk group's arrays (the stores' columns plus ~57 B per position of phase-1 arrays);
the driver holds W floats per 4,096-position block of a sweep, the per-bin counts, and the gathered end points of
the selected bins. Numba's threads are limited per task (`numba.set_num_threads`, thread-local), so Dask's worker
threads do not oversubscribe the cores.
"""

from __future__ import annotations

import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from numba import njit

from .. import kernels, kernels_optimum
from ..data import NAMES, PARTITIONS, PairData, has_text, pair_length, prepare_range
from ..errors import DegenerateObjectiveError, SettingsError
from ..metrics import AnalysisError, check_weights, frame_from_sums, single_model_columns
from ..optimum import AccPieces, NllProblem, pieces_optimum, solve_nll
from . import EngineNotSupportedError

log = logging.getLogger(__name__)

BINS = 4096  # bins of w for the ACC optimum's first pass
TREE_FANIN = 16  # integer partial sums are added in a tree of this fan-in (bounded driver memory)
LIGHT_FACTOR = 8  # positions per light task: this many heavy chunk groups (analysis.dask.light_group overrides)
CLUSTERS = ("local", "slurm")


def bin_edges(n_bins: int = BINS) -> np.ndarray:
    """n_bins + 1 increasing edges from 0 to 1, evenly spaced in log beta = logit(w) over [-30, 30]."""
    t = np.linspace(-30.0, 30.0, n_bins - 1)
    inner = np.unique(1.0 / (1.0 + np.exp(-t)))
    return np.concatenate([[0.0], inner[(inner > 0.0) & (inner < 1.0)], [1.0]])


def chunk_groups(n: int, chunk_size: int, group: int | None = None) -> list[tuple[int, int]]:
    """[lo, hi) ranges covering n positions, each starting at a multiple of `kernels.BLOCK` (so a task's blocks are
    the in-memory engine's blocks) and, where the chunking allows, made of whole chunks."""
    blk = kernels.BLOCK
    lcm = math.lcm(blk, chunk_size)
    unit = lcm if lcm <= 16 * max(blk, chunk_size) else blk
    target = group or max(chunk_size, blk)
    step = max(unit, (target // unit) * unit)
    return [(lo, min(n, lo + step)) for lo in range(0, n, step)]


# ---------------------------------------------------------------------------------------------- stores in tasks
@dataclass(frozen=True)
class StoreRef:
    """How a task gets a store: on disk (or at a URL) by path, reopened once per worker process; in memory
    (`analysis.MemoryStore`) the object itself."""

    path: str | None
    allow_partial: bool = False
    k: int | None = None  # a K-truncated view
    obj: object = field(default=None, compare=False)

    @classmethod
    def of(cls, store) -> StoreRef:
        import zarr

        base = getattr(store, "base", None)
        on_disk = isinstance(getattr(store, "group", None), zarr.Group)
        if not on_disk:
            return cls(None, obj=store)
        src = base if base is not None else store
        return cls(str(getattr(src, "url", None) or src.path), not src.complete,
                   store.k if base is not None else None)

    def open(self):
        if self.obj is not None:
            return self.obj
        key = (self.path, self.allow_partial, self.k)
        with _OPEN_LOCK:
            s = _OPEN.get(key)
            if s is None:
                from pipeline.store import open_store

                # the driver opened it with every check; here the per-read checks (chunk files, checksums) apply
                s = open_store(self.path, allow_partial=self.allow_partial, check=False)
                if self.k is not None:
                    s = s.truncated(self.k)
                _OPEN[key] = s
        return s


_OPEN: dict = {}
_OPEN_LOCK = threading.Lock()


def _limit_threads(n: int) -> None:
    import numba

    if n and numba.get_num_threads() != min(n, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


@njit(cache=True, nogil=True)
def target_probs(lpt, out):
    """out[s] = exp(target_logprob[s]) in float64, exactly as phase 1 (`kernels.prepare_pair`) computes a and b."""
    for s in range(lpt.shape[0]):
        out[s] = kernels._exp_err(np.float64(lpt[s]))[0]


# ---------------------------------------------------------------------------------------------- tasks
def _phase1(ra: StoreRef, rb: StoreRef, lo: int, hi: int, text: bool, threads: int) -> PairData:
    _limit_threads(threads)
    data = PairData.empty(hi - lo, text)
    prepare_range(ra.open(), rb.open(), lo, hi, data, 0)
    return data


def _probs(ra: StoreRef, rb: StoreRef, lo: int, hi: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
    _limit_threads(threads)
    out = []
    for ref in (ra, rb):
        lpt = ref.open().read(["target_logprob"], lo, hi)["target_logprob"]
        p = np.empty(hi - lo, np.float64)
        target_probs(np.ascontiguousarray(lpt, dtype=np.float32), p)
        out.append(p)
    return out[0], out[1]


def _nblk(n: int) -> int:
    return (n + kernels.BLOCK - 1) // kernels.BLOCK


def heavy_task(ra, rb, lo, hi, text, threads, ws, i_lo, i_hi, edges):
    """Phase 1 of [lo, hi), then: NLL block sums and right counts at the sorted weights ``ws``, positions per
    partition code, characters and bytes, and the per-bin counts of the certified intervals (ACC optimum)."""
    d = _phase1(ra, rb, lo, hi, text, threads)
    nw = ws.size
    nll = np.empty((_nblk(d.n), nw), np.float64)
    counts = np.zeros((2, 4, nw), np.int64)
    if nw:
        kernels.nll_blocks(d.a, d.b, ws, np.ascontiguousarray(1.0 - ws), nll)
        blocks = np.zeros((_nblk(d.n), 2, 4, nw), np.int64)
        kernels.acc_blocks(d.code, d.l1, d.u1, d.l2, d.u2, ws, i_lo, i_hi, blocks)
        counts = blocks.sum(axis=0)
    return nll, {"counts": counts, "n_code": np.bincount(d.code, minlength=4).astype(np.int64),
                 "chars": np.array([int(d.n_chars.sum()) if text else 0, int(d.n_bytes.sum()) if text else 0]),
                 **_histogram(d.l1, d.u1, edges)}


def _histogram(lo_, hi_, edges):
    """Per bin of w: certified starts (L) and ends (U) of the non-empty intervals, their extreme coordinates
    (starts and ends inside (0, 1): `optimum.interval_pieces`' coordinates), and the counts below 0."""
    nb = edges.size - 1
    ok = lo_ < hi_
    L, U = lo_[ok], hi_[ok]
    below = np.array([np.count_nonzero(L < 0.0), np.count_nonzero(U < 0.0)], np.int64)
    hist = np.zeros((2, nb), np.int64)
    cmin = np.full(nb, np.inf)
    cmax = np.full(nb, -np.inf)
    for r, x in enumerate((L, U)):
        x = x[(x >= 0.0) & (x < 1.0)]
        j = np.searchsorted(edges, x, side="right") - 1
        hist[r] = np.bincount(j, minlength=nb)
        c = x > 0.0
        np.minimum.at(cmin, j[c], x[c])
        np.maximum.at(cmax, j[c], x[c])
    return {"hist": hist, "below": below, "cmin": cmin, "cmax": cmax}


def gather_task(ra, rb, lo, hi, text, threads, e_lo, e_hi):
    """Phase 1 of [lo, hi), then per (bound m: 0 certified, 1 possible; partition code c): the number of starts and
    of ends below each selected bin's lower edge e_lo, and the starts and ends inside [e_lo, e_hi) (unique, with
    counts), for the non-empty intervals."""
    d = _phase1(ra, rb, lo, hi, text, threads)
    out = {}
    for m, (lo_, hi_) in enumerate(((d.l1, d.u1), (d.l2, d.u2))):
        ok = lo_ < hi_
        for c in range(4):
            sel = ok & (d.code == c)
            for r, x in enumerate((np.sort(lo_[sel]), np.sort(hi_[sel]))):
                a = np.searchsorted(x, e_lo, side="left")
                b = np.searchsorted(x, e_hi, side="left")
                inside = np.concatenate([x[i:j] for i, j in zip(a, b)]) if a.size else x[:0]
                vals, cnt = np.unique(inside, return_counts=True)
                out[(m, c, r)] = (a.astype(np.int64), vals, cnt.astype(np.int64))
    return out


def light_task(ra, rb, lo, hi, threads, what, w, v):
    """One light evaluation over [lo, hi) from the target probabilities only: per-block sums of the slope
    ("slope": L', L''), the excess ("excess": E, L'), the NLL ("value"), or the first wave's checks and slopes."""
    a, b = _probs(ra, rb, lo, hi, threads)
    nb = _nblk(a.size)
    if what == "slope":
        out = np.empty((nb, 2))
        kernels.nll_gradient(a, b, w, v, out)
        return out
    if what == "excess":
        out = np.empty((nb, 2))
        kernels_optimum.nll_excess(a, b, w, v, out)
        return out
    if what == "value":
        out = np.empty((nb, w.size))
        kernels.nll_blocks(a, b, w, v, out)
        return out
    both = np.flatnonzero((a == 0.0) & (b == 0.0))
    slopes = []
    for ww, vv in ((1.0, 0.0), (0.0, 1.0)):
        g = np.empty((nb, 2))
        kernels.nll_gradient(a, b, ww, vv, g)
        slopes.append(g)
    e0 = np.empty((nb, 2))
    kernels_optimum.nll_excess(a, b, 0.0, 1.0, e0)
    return {"both_zero": lo + int(both[0]) if both.size else -1, "flat": bool(np.array_equal(a, b)),
            "a_zero": bool(np.any(a == 0.0)), "slope1": slopes[0], "slope0": slopes[1], "excess0": e0}


def _tree_sum(parts: list, combine):
    """Reduce a list of delayed integer results pairwise-free (order does not matter for integers)."""
    import dask

    while len(parts) > 1:
        parts = [dask.delayed(combine)(*parts[i:i + TREE_FANIN]) for i in range(0, len(parts), TREE_FANIN)]
    return parts[0]


def _add_stats(*parts):
    out = {k: (np.sum([p[k] for p in parts], axis=0) if k not in ("cmin", "cmax") else None) for k in parts[0]}
    out["cmin"] = np.minimum.reduce([p["cmin"] for p in parts])
    out["cmax"] = np.maximum.reduce([p["cmax"] for p in parts])
    return out


def _add_gathered(*parts):
    out = {}
    for key in parts[0]:
        below = np.sum([p[key][0] for p in parts], axis=0)
        vals = np.concatenate([p[key][1] for p in parts])
        cnt = np.concatenate([p[key][2] for p in parts])
        u, inv = np.unique(vals, return_inverse=True)
        out[key] = (below, u, np.bincount(inv.ravel(), weights=cnt, minlength=u.size).astype(np.int64))
    return out


# ---------------------------------------------------------------------------------------------- client
def connect(address: str | None = None, cluster: str = "local", n_workers: int | None = None,
            threads_per_worker: int = 1, memory_limit: str | None = "auto", numba_threads: int = 1, **slurm):
    """A `distributed.Client`: to the scheduler at ``address``, else to a new cluster: ``cluster="local"``
    (a `distributed.LocalCluster` of processes on this machine) or ``"slurm"`` (`dask_jobqueue.SLURMCluster`,
    ``slurm`` keyword arguments passed on, e.g. queue, cores, memory, walltime). Workers get
    NUMBA_NUM_THREADS=numba_threads in their environment (Numba's pool is sized once per process)."""
    from distributed import Client

    if address:
        return Client(address)
    if cluster not in CLUSTERS:
        raise SettingsError(f"analysis.dask.cluster={cluster!r}; use one of {list(CLUSTERS)}, or set "
                            "analysis.dask.address=tcp://host:port to use a running scheduler")
    env = {"NUMBA_NUM_THREADS": str(numba_threads), "OMP_NUM_THREADS": "1"}
    if cluster == "local":
        import os

        from distributed import LocalCluster

        os.environ.update({k: os.environ.get(k, v) for k, v in env.items() if k == "OMP_NUM_THREADS"})
        lc = LocalCluster(n_workers=n_workers or 2, threads_per_worker=threads_per_worker,
                          memory_limit=memory_limit or "auto", processes=True, dashboard_address=None,
                          env=env)
        return Client(lc)
    from dask_jobqueue import SLURMCluster

    opts = {"cores": threads_per_worker, "processes": 1, "memory": memory_limit or "4GB", **slurm}
    job_env = [f"export {k}={v}" for k, v in env.items()]
    sc = SLURMCluster(job_script_prologue=job_env, **opts)
    sc.scale(jobs=n_workers or 1)
    return Client(sc)


# ---------------------------------------------------------------------------------------------- the engine
class DaskEngine:
    """A pair's analyses as Dask task graphs (see the module docstring). ``client``: a `distributed.Client`, or
    None for Dask's threaded scheduler in this process (``workers`` threads). ``group``: positions per task (a
    multiple of 4,096; default one chunk). ``light_group``: positions per light task (the NLL solver's waves, which
    read only the target log-probs; default LIGHT_FACTOR chunk groups). ``numba_threads``: Numba threads per task."""

    def __init__(self, primary, secondary, *, client=None, group: int | None = None, workers: int | None = None,
                 numba_threads: int = 1, bins: int = BINS, light_group: int | None = None):
        import dask  # noqa: F401  (a clear ImportError here if the scale extra is missing)

        self.n = pair_length(primary, secondary)
        if self.n == 0:
            raise AnalysisError("the pair has no positions; nothing to analyse")
        self.text = has_text(primary)
        self.refs = (StoreRef.of(primary), StoreRef.of(secondary))
        self.stores = (primary, secondary)
        self.client = client
        self.workers = workers
        self.threads = int(numba_threads)
        self.ranges = chunk_groups(self.n, primary.chunk_size, group)
        # light tasks hold ~24 B per position (target log-probs, a and b): LIGHT_FACTOR heavy groups each, so a
        # light wave (one per Newton step) costs fewer task and read overheads at about a heavy task's memory
        step = self.ranges[0][1] - self.ranges[0][0]
        self.light_ranges = chunk_groups(self.n, primary.chunk_size, light_group or LIGHT_FACTOR * step)
        self.edges = bin_edges(bins)
        self._stats = None
        self._frames: dict = {}
        self.waves = 0  # task waves run (for the benchmark)

    # ------------------------------------------------------------------ running graphs
    def compute(self, *objs):
        import dask

        self.waves += 1
        if self.client is not None:
            return tuple(self.client.compute(list(objs), sync=True))
        return dask.compute(*objs, scheduler="threads", num_workers=self.workers)

    def _refs(self):
        import dask

        return tuple(dask.delayed(r, pure=True) if r.obj is not None else r for r in self.refs)

    def _light(self, what: str, w=0.0, v=1.0):
        import dask

        ra, rb = self._refs()
        return [dask.delayed(light_task, pure=True)(ra, rb, lo, hi, self.threads, what, w, v)
                for lo, hi in self.light_ranges]

    def heavy_graph(self, weights):
        """Delayed (nll blocks per task, summed stats) of a heavy pass at the sorted ``weights``."""
        import dask

        ws = np.ascontiguousarray(weights, dtype=np.float64)
        i_lo = int(np.searchsorted(ws, 0.0, side="right"))
        i_hi = int(np.searchsorted(ws, 1.0, side="left"))
        ra, rb = self._refs()
        parts = [dask.delayed(heavy_task, pure=True, nout=2)(ra, rb, lo, hi, self.text, self.threads, ws, i_lo, i_hi,
                                                              self.edges) for lo, hi in self.ranges]
        return [p[0] for p in parts], _tree_sum([p[1] for p in parts], _add_stats), (ws, i_lo, i_hi)

    def finish_heavy(self, nll_parts, stats, spec):
        ws, i_lo, i_hi = spec
        blocks = np.concatenate(nll_parts, axis=0) if ws.size else np.zeros((0, 0))
        nll = kernels.reduce_blocks(blocks) if ws.size else np.zeros(0)
        if self._stats is None:
            self._stats = {k: v for k, v in stats.items() if k != "counts"}
        counts = single_model_columns(stats["counts"], stats["n_code"], i_lo, i_hi)
        return nll, counts

    # ------------------------------------------------------------------ sweep
    def sweep(self, weights) -> pl.DataFrame:
        """Fused metrics at each weight: `analysis.metrics.sweep_frame`'s frame, from one heavy pass."""
        w = check_weights(weights)
        key = w.tobytes()
        if key in self._frames:
            return self._frames[key]
        order = np.argsort(w, kind="stable")
        nll_parts, stats, spec = self.heavy_graph(w[order])
        nll_parts, stats = self.compute(nll_parts, stats)
        nll_s, counts_s = self.finish_heavy(nll_parts, stats, spec)
        frame = self._frame(w, order, nll_s, counts_s)
        self._frames[key] = frame
        return frame

    def _frame(self, w, order, nll_sorted, counts_sorted) -> pl.DataFrame:
        nll_sum = np.empty(w.size)
        nll_sum[order] = nll_sorted
        counts = np.empty((2, 4, w.size), np.int64)
        counts[:, :, order] = counts_sorted
        st = self._stats
        chars = st["chars"][0:1] if self.text else None
        nbytes = st["chars"][1:2] if self.text else None
        return frame_from_sums(w, nll_sum, counts, st["n_code"], chars, nbytes)

    def stats(self) -> dict:
        """Positions per partition code, characters and the ACC bins (one heavy pass unless a sweep ran)."""
        if self._stats is None:
            nll_parts, stats, spec = self.heavy_graph(np.zeros(0))
            nll_parts, stats = self.compute(nll_parts, stats)
            self.finish_heavy(nll_parts, stats, spec)
        return self._stats

    def partition_counts(self) -> dict[str, int]:
        n_code = self.stats()["n_code"]
        return {name: int(n_code[c]) for name, c in PARTITIONS.items()}

    # ------------------------------------------------------------------ NLL optimum
    def _reduce(self, parts) -> np.ndarray:
        return kernels.reduce_blocks(np.concatenate(parts, axis=0))

    def nll_optimum(self, with_domain: bool = True):
        """`optimum.solve_nll` with each evaluation one light task wave (the in-memory steps, the same sums)."""
        (first,) = self.compute(self._light("checks"))
        both = [f["both_zero"] for f in first if f["both_zero"] >= 0]
        if both:
            raise DegenerateObjectiveError(
                f"position {both[0]} has probability 0 under both models, so the fused NLL is infinite for every "
                "weight; check the stores' logit widths (n_classes) and targets")
        memo = {("slope", 1.0, 0.0): self._reduce([f["slope1"] for f in first]),
                ("slope", 0.0, 1.0): self._reduce([f["slope0"] for f in first]),
                ("excess", 0.0, 1.0): self._reduce([f["excess0"] for f in first])}

        def wave(what, w, v):
            key = (what, w, v)
            if key not in memo:
                (parts,) = self.compute(self._light(what, w, v))
                memo[key] = self._reduce(parts)
            return memo[key]

        problem = NllProblem(
            slope=lambda w, v: tuple(float(x) for x in wave("slope", w, v)),
            excess=lambda w, v: tuple(float(x) for x in wave("excess", w, v)),
            value=lambda w: float(self._value(np.array([w]))[0]), flat=all(f["flat"] for f in first), a_zero=any(f["a_zero"] for f in first))
        return solve_nll(problem, with_domain)

    def _value(self, ws: np.ndarray) -> np.ndarray:
        """NLL sums at the weights ``ws`` (a light wave)."""
        ws = np.ascontiguousarray(ws, dtype=np.float64)
        (parts,) = self.compute(self._light("value", ws, np.ascontiguousarray(1.0 - ws)))
        return self._reduce(parts)

    # ------------------------------------------------------------------ ACC optimum
    def _selection(self, extra_w=()) -> tuple[np.ndarray, dict]:
        st = self.stats()
        hL, hU = st["hist"]
        cumL = st["below"][0] + np.concatenate([[0], np.cumsum(hL)[:-1]])
        cumU = st["below"][1] + np.concatenate([[0], np.cumsum(hU)[:-1]])
        hi_j = cumL + hL - cumU
        lo_j = cumL - cumU - hU
        n_code = st["n_code"]
        at0, at1 = int(n_code[1] + n_code[3]), int(n_code[2] + n_code[3])
        best_lo = max(at0, at1, int(lo_j.max()))
        sel = (hi_j >= best_lo) | ((lo_j < at1) & (at1 <= hi_j))
        for w in extra_w:
            if 0.0 < w < 1.0:
                sel[np.searchsorted(self.edges, w, side="right") - 1] = True
        return np.flatnonzero(sel), {"lo": lo_j, "hi": hi_j, "at0": at0, "at1": at1}

    def _gather(self, bins: np.ndarray) -> dict:
        import dask

        e_lo, e_hi = self.edges[bins], self.edges[bins + 1]
        ra, rb = self._refs()
        parts = [dask.delayed(gather_task, pure=True)(ra, rb, lo, hi, self.text, self.threads, e_lo, e_hi)
                 for lo, hi in self.ranges]
        (got,) = self.compute(_tree_sum(parts, _add_gathered))
        return got

    def optima(self):
        """(NllOptimum, AccOptimum, the sweep frame at [w_nll, w_acc, 1, 0]): what `analysis.Pair.optimum` needs."""
        nll = self.nll_optimum()
        bins, bounds = self._selection((nll.w,))
        got = self._gather(bins)
        exact = _Exact(self.edges, bins, got)
        acc = pieces_optimum(self._pieces(bins, bounds, exact))
        w = np.array([nll.w, acc.w, 1.0, 0.0])
        order = np.argsort(w, kind="stable")
        ws = w[order]
        counts = np.zeros((2, 4, 4), np.int64)
        for i, x in enumerate(ws):
            if 0.0 < x < 1.0:
                counts[:, :, i] = exact.counts_at(x)
        i_lo = int(np.searchsorted(ws, 0.0, side="right"))
        i_hi = int(np.searchsorted(ws, 1.0, side="left"))
        counts = single_model_columns(counts, self._stats["n_code"], i_lo, i_hi)
        frame = self._frame(w, order, self._value(ws), counts)
        log.info("dask optima: %d light + heavy waves, %d of %d bins gathered", self.waves, bins.size,
                 self.edges.size - 1)
        return nll, acc, frame

    def _pieces(self, bins, bounds, exact) -> AccPieces:
        """acc_lo's pieces along w: exact in the gathered bins, one piece per other bin (see module docstring)."""
        st = self._stats
        edges = self.edges
        nb = edges.size - 1
        cmax, cmin = st["cmax"], st["cmin"]
        prev = np.maximum.accumulate(np.concatenate([[-np.inf], cmax[:-1]]))  # largest coordinate below e_j
        prev = np.where(np.isfinite(prev), prev, 0.0)
        nxt = np.minimum.accumulate(np.concatenate([cmin[1:], [np.inf]])[::-1])[::-1]  # smallest above the bin
        nxt = np.where(np.isfinite(nxt), nxt, 1.0)
        at1 = bounds["at1"]
        left, right, point, count = [0.0], [0.0], [True], [bounds["at0"]]

        def add(lft, rgt, pt, cnt):
            if not pt and not point[-1] and left[-1] == lft and right[-1] == rgt:
                return  # the same gap, already added from the bin below
            left.append(lft)
            right.append(rgt)
            point.append(pt)
            count.append(cnt)

        chosen = set(bins.tolist())
        for j in range(nb):
            if j in chosen:
                xs = exact.coords(j)
                if xs.size == 0 or xs[0] > edges[j]:
                    add(prev[j], xs[0] if xs.size else nxt[j], False, exact.cert_gap(edges[j]))
                for i, x in enumerate(xs):
                    add(x, x, True, exact.cert_point(x))
                    add(x, xs[i + 1] if i + 1 < xs.size else nxt[j], False, exact.cert_gap(x))
            else:
                ok = bounds["lo"][j] >= at1
                c = int(bounds["lo"][j] if ok else bounds["hi"][j])
                if cmin[j] == edges[j]:
                    add(edges[j], edges[j], True, c)
                else:
                    left.append(prev[j])
                    right.append(cmin[j] if np.isfinite(cmin[j]) else nxt[j])
                    point.append(False)
                    count.append(c)
        add(1.0, 1.0, True, at1)
        return AccPieces(np.array(left), np.array(right), np.array(point), np.array(count, np.int64))

    # ------------------------------------------------------------------ partitions
    def partitions(self):
        """T/F/N counts and the exchange thresholds of every T and F position (one heavy pass)."""
        import dask

        from ..partitions import Partitions

        ra, rb = self._refs()
        parts = [dask.delayed(_exchange_task, pure=True)(ra, rb, lo, hi, self.text, self.threads)
                 for lo, hi in self.ranges]
        frames = self.compute(*parts)
        return Partitions(self.partition_counts(), pl.concat(frames))


class _Shifted:
    """A store seen from position ``off`` on (what `partitions.exchange_thresholds` reads for one chunk group)."""

    def __init__(self, store, off: int):
        self.store, self.off = store, off
        self.n_classes = store.n_classes

    def read(self, names, start=0, stop=None):
        return self.store.read(names, start + self.off, None if stop is None else stop + self.off)


def _exchange_task(ra, rb, lo, hi, text, threads):
    from ..partitions import exchange_thresholds

    d = _phase1(ra, rb, lo, hi, text, threads)
    f = exchange_thresholds(_Shifted(ra.open(), lo), _Shifted(rb.open(), lo), d)
    return f.with_columns(pl.col("position") + lo)


class _Exact:
    """The gathered end points of the selected bins: exact counts of intervals holding any w in those bins."""

    def __init__(self, edges, bins, got):
        self.edges, self.bins = edges, bins
        self.got = got
        # certified, all codes together: the coordinates of acc_lo's pieces
        self.cert = [self._merge([got[(0, c, r)] for c in range(4)]) for r in range(2)]

    @staticmethod
    def _merge(parts):
        below = np.sum([p[0] for p in parts], axis=0)
        vals = np.concatenate([np.repeat(p[1], p[2]) for p in parts])
        vals.sort()
        return below, vals

    def _slot(self, x) -> int:
        j = int(np.searchsorted(self.edges, x, side="right") - 1)
        i = int(np.searchsorted(self.bins, j))
        if i >= self.bins.size or self.bins[i] != j:
            raise AssertionError(f"w = {x!r} lies in bin {j}, which was not gathered")
        return i

    def coords(self, j) -> np.ndarray:
        """Piece coordinates in bin j: starts and ends inside (0, 1) of the non-empty certified intervals."""
        e0, e1 = self.edges[j], self.edges[j + 1]
        out = []
        for _, vals in self.cert:
            x = vals[np.searchsorted(vals, e0, "left"):np.searchsorted(vals, e1, "left")]
            out.append(x[x > 0.0])
        return np.unique(np.concatenate(out))

    def _le(self, below, vals, i, x, strict):
        """#values < x (strict) or <= x, for x in selected bin number i."""
        e0 = self.edges[self.bins[i]]
        base = np.searchsorted(vals, e0, "left")
        return int(below[i]) + int(np.searchsorted(vals, x, "left" if strict else "right") - base)

    def cert_point(self, x) -> int:  # intervals with L < x < U
        i = self._slot(x)
        (bl, lv), (bu, uv) = self.cert
        return self._le(bl, lv, i, x, True) - self._le(bu, uv, i, x, False)

    def cert_gap(self, x) -> int:  # just right of x: L <= x < U
        i = self._slot(x)
        (bl, lv), (bu, uv) = self.cert
        return self._le(bl, lv, i, x, False) - self._le(bu, uv, i, x, False)

    def counts_at(self, x) -> np.ndarray:
        """(2, 4) positions right at weight x (0 < x < 1): L < x < U per bound and partition code."""
        i = self._slot(x)
        out = np.zeros((2, 4), np.int64)
        for m in range(2):
            for c in range(4):
                bl, lv, lc = self.got[(m, c, 0)]
                bu, uv, uc = self.got[(m, c, 1)]
                out[m, c] = self._count(bl, lv, lc, i, x, True) - self._count(bu, uv, uc, i, x, False)
        return out

    def _count(self, below, vals, cnt, i, x, strict):
        e0 = self.edges[self.bins[i]]
        a = np.searchsorted(vals, e0, "left")
        b = np.searchsorted(vals, x, "left" if strict else "right")
        return int(below[i]) + int(cnt[a:b].sum())


def optima_many(engines: list, max_parallel: int = 8) -> list:
    """Run several pairs' optima at once (their task waves interleave on the same client); a pair's exception is
    returned in its place."""
    def one(e):
        try:
            return e.optima()
        except Exception as exc:  # noqa: BLE001 (reported per pair by the caller)
            return exc

    with ThreadPoolExecutor(max_workers=max(1, min(max_parallel, len(engines)))) as ex:
        return list(ex.map(one, engines))


def prefetch(pairs, weights=None) -> None:
    """Every pair's sweep at ``weights`` (None: no sweep, only the per-bin counts the ACC optimum needs) with its
    ACC bins as ONE task graph, then all their optima at once; the results are cached in each pair (a pair that
    fails is left to fail again, and be reported, when used)."""
    import dask

    engines = [p._engine for p in pairs if getattr(p, "_engine", None) is not None]
    if not engines:
        return
    w = check_weights(weights) if weights is not None else np.zeros(0)
    order = np.argsort(w, kind="stable")
    graphs = [e.heavy_graph(w[order]) for e in engines]
    try:
        client = engines[0].client
        objs = [(g[0], g[1]) for g in graphs]
        got = client.compute(objs, sync=True) if client is not None else dask.compute(*objs, scheduler="threads")
        for e, g, (nll_parts, stats) in zip(engines, graphs, got):
            e.waves += 1
            nll_s, counts_s = e.finish_heavy(nll_parts, stats, g[2])
            if w.size:
                e._frames[w.tobytes()] = e._frame(w, order, nll_s, counts_s)
    except Exception as exc:  # noqa: BLE001 (each pair recomputes alone and reports its own error)
        log.warning("one graph for %d pairs failed (%s); the pairs are analysed one by one", len(engines), exc)
        return
    results = optima_many(engines)
    for p, r in zip([p for p in pairs if getattr(p, "_engine", None) is not None], results):
        if not isinstance(r, Exception):
            p._optima = r


def not_supported(what: str) -> EngineNotSupportedError:
    return EngineNotSupportedError(
        f"{what} needs every position's arrays in memory, which the dask engine does not hold; use engine='local' "
        "(Pair(a, b)) for it, or on the CLIs analysis.engine=local")


__all__ = ["DaskEngine", "StoreRef", "bin_edges", "chunk_groups", "connect", "prefetch", "optima_many",
           "not_supported", "NAMES"]
