"""Fusion of three or more aligned stores (issue 7.5): f_pi(j) = sum_i pi_i q_i(j), pi on the simplex.

* Geometric-progression weights (the paper's corollary A.3.4): models ranked by size (i = 1 the largest,
  by the chosen parameter count), pi_i proportional to r^(i - 1), swept over r (r = 0: the largest alone,
  r = 1: uniform).
* Likelihood-optimal weights: maximise the concave F(pi) = (1/N) sum_s log(pi . p_s), p_si = q_i(t_s), by EM
  (pi_i <- pi_i g_i with g_i = (1/N) sum_s p_si / (pi . p_s), which keeps pi on the simplex and increases F).
  Certificate: for every pi with pi . p_s > 0, by Jensen,
      F(pi*) - F(pi) = mean log(pi* . p / pi . p) <= log sum_i pi*_i g_i <= log max_i g_i =: gap,
  so stopping at gap <= tol proves that the fused NLL is within tol (nats per position) of the global optimum.
* Certified ACC at any weights: position s is certified right when f(t) exceeds the upper bound of every
  other class (listed entries by their storage bounds, unlisted classes of model i by [0, u_i] or 0 beyond
  its width, classes outside every list by sum_i pi_i u_i), possibly right when no lower bound reaches f(t);
  with a single non-zero weight, that model's exact correctness.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import polars as pl
from numba import njit, prange

from pipeline.store import align

from .errors import AnalysisError, TargetMismatchError, WeightError
from .lut import list_bounds, outside_bound
from .metrics import LN2

log = logging.getLogger(__name__)


class MultiFusionError(AnalysisError, ValueError):
    """Bad input to multi-model fusion (fewer than two stores, weights not on the simplex, no convergence)."""


@dataclass
class MultiData:
    """Per-position target probabilities p (N, M) of M aligned stores, largest model first."""

    stores: list
    names: list
    params: np.ndarray
    p: np.ndarray
    right: np.ndarray  # (N, M) bool: each model's exact strict correctness
    n_chars: np.ndarray | None  # None: stores without text (classification, masked): no BPC / BPB
    n_bytes: np.ndarray | None
    param_count: str

    @property
    def n(self) -> int:
        return int(self.p.shape[0])

    @classmethod
    def load(cls, stores, param_count: str = "n_params_nonembed") -> MultiData:
        if len(stores) < 2:
            raise MultiFusionError(f"multi-model fusion needs at least 2 stores; got {len(stores)}")
        params = np.array([float(s.model.get(param_count) or math.nan) for s in stores])
        order = np.argsort(-np.nan_to_num(params, nan=-1.0), kind="stable")
        stores = [stores[i] for i in order]
        for s in stores[1:]:
            al = align(stores[0], s)
            al.raise_if_incompatible()
        n = stores[0].n
        names = [str(s.model.get("name", s.path)) for s in stores]
        p = np.empty((n, len(stores)))
        right = np.empty((n, len(stores)), bool)
        t0 = None
        for i, s in enumerate(stores):
            r = s.read(["targets", "target_logprob", "target_rank", "target_ties"])
            if t0 is None:
                t0 = r["targets"]
            elif not np.array_equal(t0, r["targets"]):
                pos = int(np.flatnonzero(t0 != r["targets"])[0])
                raise TargetMismatchError(f"targets differ at position {pos} between {names[0]} and {names[i]}; "
                                          "fuse only stores of one token stream", field="targets",
                                          value_a=int(t0[pos]), value_b=int(r["targets"][pos]))
            p[:, i] = np.exp(r["target_logprob"].astype(np.float64))
            right[:, i] = (r["target_rank"] == 0) & (r["target_ties"] == 0)
        if all(stores[0].has(name) for name in ("n_chars", "n_bytes")):
            side = stores[0].read(["n_chars", "n_bytes"])
            n_chars, n_bytes = side["n_chars"].astype(np.int64), side["n_bytes"].astype(np.int64)
        else:
            n_chars = n_bytes = None
        return cls(stores, names, params[order], p, right, n_chars, n_bytes, param_count)


def check_simplex(weights, m: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (m,) or not np.all(w >= 0) or not abs(w.sum() - 1.0) < 1e-9:
        raise WeightError(f"weights {w.tolist()} are not a point of the {m}-model simplex (non-negative, sum 1); "
                          "normalise them first")
    return w


def geometric_weights(m: int, r: float) -> np.ndarray:
    """pi_i = r^(i-1) / sum_j r^(j-1), i = 1..m (i = 1 the largest model); r = 0 puts all weight on it."""
    if not r >= 0:
        raise WeightError(f"common ratio r={r!r} must be >= 0")
    w = np.array([r ** i if i else 1.0 for i in range(m)])
    return w / w.sum()


# ---------------------------------------------------------------------------------------------- likelihood optimum
@dataclass(frozen=True)
class SimplexOptimum:
    weights: np.ndarray
    nll: float  # mean fused NLL at weights
    gap: float  # certified bound on nll - (global minimum of the mean fused NLL), nats per position
    n_iter: int


def _grad(p: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, float]:
    x = p @ w
    return (p / x[:, None]).mean(axis=0), float(-np.mean(np.log(x)))


def em_weights(p: np.ndarray, tol: float = 1e-10, max_iter: int = 100_000, w0=None) -> SimplexOptimum:
    """Likelihood-optimal simplex weights by EM with SQUAREM extrapolation, stopped by the duality-gap
    certificate log max_i g_i <= tol (module docstring). Raises MultiFusionError if not certified in max_iter."""
    n, m = p.shape
    if np.any(p.max(axis=1) <= 0):
        s = int(np.flatnonzero(p.max(axis=1) <= 0)[0])
        raise MultiFusionError(f"position {s} has probability 0 under every model: the fused NLL is infinite")
    w = np.full(m, 1.0 / m) if w0 is None else np.asarray(w0, float)
    g, f = _grad(p, w)
    for it in range(1, max_iter + 1):
        gap = math.log(g.max())
        if gap <= tol:
            return SimplexOptimum(w, f, max(gap, 0.0), it - 1)
        w1 = w * g
        g1, _ = _grad(p, w1)
        w2 = w1 * g1
        # SQUAREM step (Varadhan & Roland 2008), kept only when it stays on the simplex and does not lose.
        r, v = w1 - w, w2 - 2 * w1 + w
        nv = float(np.sqrt(np.sum(v * v)))
        cand = w2
        if nv > 0:
            a = -float(np.sqrt(np.sum(r * r))) / nv
            x = w - 2 * a * r + a * a * v
            if np.all(x >= 0) and x.sum() > 0:
                x = x / x.sum()
                if np.all(p @ x > 0):
                    gx, fx = _grad(p, x)
                    g2, f2 = _grad(p, w2)
                    cand = x if fx <= f2 else w2
        w = cand / cand.sum()
        g, f = _grad(p, w)
    raise MultiFusionError(f"EM did not certify a gap <= {tol} in {max_iter} iterations (gap {math.log(g.max()):.3g}); "
                           "raise max_iter or tol")


# ---------------------------------------------------------------------------------------------- certified ACC
@njit(cache=True, nogil=True, parallel=True)
def multi_right(t, pt, wts, n_vocab, ids, lo, hi, u, ncls, right_lo, right_hi):
    """Certified / possible fused correctness per position for M models (see the module docstring).

    ids, lo, hi: (M, n, K) lists (pad ids with -1); u: (M, n) outside bounds; pt: (M, n) target probabilities.
    """
    m, n, k = ids.shape
    n_pieces = max(1, min(64, n // 1024 + 1))
    piece = (n + n_pieces - 1) // n_pieces
    for p in prange(n_pieces):
        where = np.full(n_vocab, -1, np.int64)
        slot_id = np.empty(m * k, np.int64)
        slot_lo = np.empty(m * k)
        slot_hi = np.empty(m * k)
        slot_mask = np.empty(m * k, np.int64)
        for s in range(p * piece, min(n, (p + 1) * piece)):
            tt = t[s]
            ft = 0.0
            out_hi = 0.0
            for i in range(m):
                ft += wts[i] * pt[i, s]
                out_hi += wts[i] * u[i, s]
            n_slots = 0
            t_listed = False
            for i in range(m):
                for kk in range(k):
                    j = ids[i, s, kk]
                    if j < 0:
                        continue
                    if j == tt:
                        t_listed = True
                        continue
                    sl = where[j]
                    if sl < 0:
                        sl = n_slots
                        where[j] = sl
                        slot_id[sl] = j
                        slot_lo[sl] = 0.0
                        slot_hi[sl] = 0.0
                        slot_mask[sl] = 0
                        n_slots += 1
                    slot_lo[sl] += wts[i] * lo[i, s, kk]
                    slot_hi[sl] += wts[i] * hi[i, s, kk]
                    slot_mask[sl] |= 1 << i
            max_hi = -1.0
            max_lo = -1.0
            for sl in range(n_slots):
                j = slot_id[sl]
                h = slot_hi[sl]
                for i in range(m):
                    if (slot_mask[sl] >> i) & 1 == 0 and j < ncls[i]:
                        h += wts[i] * u[i, s]
                if h > max_hi:
                    max_hi = h
                if slot_lo[sl] > max_lo:
                    max_lo = slot_lo[sl]
                where[j] = -1
            n_known = n_slots + (0 if (t_listed or tt >= n_vocab) else 1)
            if n_vocab > n_known:
                if out_hi > max_hi:
                    max_hi = out_hi
                if 0.0 > max_lo:
                    max_lo = 0.0
            right_lo[s] = ft > max_hi
            right_hi[s] = ft > max_lo


def certified_right(md: MultiData, weights, chunk: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """(right_lo, right_hi) per position of the fusion at simplex weights."""
    w = check_simplex(weights, len(md.stores))
    nz = np.flatnonzero(w > 0)
    if nz.size == 1:
        return md.right[:, nz[0]].copy(), md.right[:, nz[0]].copy()
    names = ["targets", "target_logprob", "topk_ids", "topk_logprobs", "tail_logmass"]
    n_vocab = max(s.n_classes for s in md.stores)
    kmax = max(s.k for s in md.stores)
    ncls = np.array([s.n_classes for s in md.stores], np.int64)
    lo_out = np.empty(md.n, bool)
    hi_out = np.empty(md.n, bool)
    m = len(md.stores)
    for c0 in range(0, md.n, chunk):
        c1 = min(md.n, c0 + chunk)
        nn = c1 - c0
        ids = np.full((m, nn, kmax), -1, np.int64)
        lo = np.zeros((m, nn, kmax))
        hi = np.zeros((m, nn, kmax))
        u = np.empty((m, nn))
        pt = np.ascontiguousarray(md.p[c0:c1].T)
        t = None
        for i, s in enumerate(md.stores):
            r = s.read(names, c0, c1)
            t = r["targets"].astype(np.int64)
            kk = r["topk_ids"].shape[1]
            ids[i, :, :kk] = r["topk_ids"]
            lo[i, :, :kk], hi[i, :, :kk] = list_bounds(r["topk_logprobs"])
            u[i] = outside_bound(r["topk_ids"], r["topk_logprobs"], r["tail_logmass"], r["targets"], pt[i])
        multi_right(t, pt, w, n_vocab, ids, lo, hi, u, ncls, lo_out[c0:c1], hi_out[c0:c1])
    return lo_out, hi_out


def fused_metrics(md: MultiData, weights, with_acc: bool = True) -> dict:
    """nll, ppl, bpc, bpb (exact) and acc_lo, acc_hi, n_undetermined (certified) at simplex weights."""
    w = check_simplex(weights, len(md.stores))
    with np.errstate(divide="ignore"):
        nll_sum = float(np.sum(-np.log(md.p @ w)))
    out = {"nll": nll_sum / md.n, "ppl": math.exp(nll_sum / md.n) if nll_sum / md.n < 700 else math.inf,
           "bpc": None if md.n_chars is None else nll_sum / LN2 / md.n_chars.sum(),
           "bpb": None if md.n_bytes is None else nll_sum / LN2 / md.n_bytes.sum()}
    if with_acc:
        lo, hi = certified_right(md, w)
        out.update(acc_lo=float(lo.mean()), acc_hi=float(hi.mean()), n_undetermined=int(hi.sum() - lo.sum()))
    return out


def _row(label, md, w, extra) -> dict:
    return {"method": label, **extra, **{f"w_{name}": float(x) for name, x in zip(md.names, w)},
            **fused_metrics(md, w)}


def geometric_sweep(md: MultiData, rs=None) -> pl.DataFrame:
    """Fused metrics at geometric-progression weights for each common ratio r (default 0 and a log grid to 1)."""
    rs = np.concatenate([[0.0], np.geomspace(1e-3, 1.0, 31)]) if rs is None else np.asarray(rs, float)
    m = len(md.stores)
    return pl.DataFrame([_row("geometric", md, geometric_weights(m, r), {"r": float(r)}) for r in rs])


def multi_summary(md: MultiData, rs=None, tol: float = 1e-10) -> pl.DataFrame:
    """Each model alone, the best geometric ratio (by NLL and by acc_lo), and the likelihood-optimal weights
    with their certified gap, as one frame (method, r, gap, w_<model>..., nll, ppl, bpc, bpb, acc_lo, acc_hi)."""
    m = len(md.stores)
    rows = [_row(f"alone: {name}", md, np.eye(m)[i], {"r": math.nan, "gap": 0.0}) for i, name in enumerate(md.names)]
    sweep = geometric_sweep(md, rs)
    for col, best in (("nll", sweep["nll"].arg_min()), ("acc_lo", sweep["acc_lo"].arg_max())):
        r = float(sweep["r"][best])
        rows.append(_row(f"geometric, best {col}", md, geometric_weights(m, r), {"r": r, "gap": math.nan}))
    opt = em_weights(md.p, tol=tol)
    rows.append(_row("likelihood-optimal (EM)", md, opt.weights, {"r": math.nan, "gap": opt.gap}))
    log.info("EM: %d iterations, certified gap %.3g nats/position", opt.n_iter, opt.gap)
    return pl.DataFrame(rows)


def plot_geometric_sweep(sweep: pl.DataFrame, optimum_nll: float | None = None, ax=None):
    """Fused NLL and certified ACC against the common ratio r of geometric weights; the likelihood-optimal
    NLL as a horizontal line when given. Only draws; returns the axes."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    r = sweep["r"].to_numpy()
    ax.plot(r, sweep["nll"].to_numpy(), "o-", label="NLL (geometric weights)")
    if optimum_nll is not None:
        ax.axhline(optimum_nll, color="k", ls="--", label="likelihood-optimal weights")
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_xlabel("common ratio r")
    ax.set_ylabel("NLL")
    twin = ax.twinx()
    twin.plot(r, sweep["acc_lo"].to_numpy(), "s:", color="tab:red", label="ACC certified")
    twin.set_ylabel("ACC (certified)")
    ax.legend(fontsize="small")
    return ax
