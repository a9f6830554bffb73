"""The similarity-based AR variant (the paper's appendix B.3; issue 7.7), with top-K bounds.

With E the token embedding matrix (V, d) (one model's input embeddings; the primary's by default), S the
cosine similarity of its rows clipped at 0, and i_B = B's top-1 class at position s:
    g_p(j) = qA(j) * S[j, i_B]^p,      q_p(j) = g_p(j) / Z_p,   Z_p = sum_j g_p(j)
(p = 0 is A alone; as p grows, weight moves to classes similar to B's choice). From a top-K cache:
  * the target's g_p(t) = a * S[t, i_B]^p is exact;
  * a listed class j has g in [loA(j), hiA(j)] * S_j^p (storage bounds);
  * the unlisted classes other than t carry the tail mass m' = tail (- a when t is unlisted), each with S^p <= 1,
    so Z_p lies in [sum_listed lo S^p + [t unlisted] a S_t^p,  sum_listed hi S^p + [t unlisted] a S_t^p + m'];
  * NLL = -log g_p(t) + log Z_p is bounded accordingly ([nll_lo, nll_hi]);
  * ACC: certified right when g_p(t) beats every listed upper bound and the unlisted bound uA (1 when some
    unlisted class exists); possibly right when no listed lower bound reaches it. Strict, as everywhere.
Cost: one dot product per listed class and position (N K d flops), computed once; the p sweep is cheap.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from .errors import AnalysisError
from .lut import list_bounds, outside_bound, tail_upper

NAMES = ["targets", "target_logprob", "topk_ids", "topk_logprobs", "tail_logmass"]


class SimilarityError(AnalysisError, ValueError):
    """No or a malformed embedding matrix for the similarity variant."""


def load_embedding(store, name: str = "embedding") -> np.ndarray:
    """The store's optional token embedding table (V, d) (written at extraction by ``StoreWriter.write_table``)."""
    if name in getattr(store, "tables", ()):
        return np.asarray(store.table(name))
    arrays = getattr(store, "arrays", {})  # MemoryStore
    if name in arrays:
        return np.asarray(arrays[name])
    raise SimilarityError(f"{getattr(store, 'path', store)} holds no {name!r} table; re-extract with the token "
                          "embedding matrix stored, or pass embedding=... (V, d) explicitly")


def _unit_rows(e: np.ndarray) -> np.ndarray:
    e = np.asarray(e, dtype=np.float64)
    norm = np.linalg.norm(e, axis=1, keepdims=True)
    return np.divide(e, norm, out=np.zeros_like(e), where=norm > 0)


def similarity_terms(store_a, store_b, embedding: np.ndarray, chunk: int = 8192) -> dict[str, np.ndarray]:
    """Per position: a, S_t = S[t, i_B], the listed lo/hi of qA and S over A's list, the target's listing,
    the unlisted mass m' and the unlisted bound u (all float64; lists (N, K)). Computed once for any p."""
    v, n = embedding.shape[0], store_a.n
    if v < max(store_a.n_classes, store_b.n_classes) and v < store_a.n_classes:
        raise SimilarityError(f"embedding has {v} rows but the primary's width is {store_a.n_classes}; pass the "
                              "embedding matrix of this tokenizer")
    e = _unit_rows(embedding)
    k = store_a.k
    out = {"a": np.empty(n), "s_t": np.empty(n), "lo": np.empty((n, k)), "hi": np.empty((n, k)),
           "s": np.empty((n, k)), "is_t": np.empty((n, k), bool), "t_listed": np.empty(n, bool),
           "mass": np.empty(n), "u": np.empty(n), "n_unlisted": np.empty(n, np.int64)}
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        ra = store_a.read(NAMES, lo, hi)
        ib = store_b.read(["topk_ids"], lo, hi)["topk_ids"][:, 0].astype(np.int64)
        t = ra["targets"].astype(np.int64)
        a = np.exp(ra["target_logprob"].astype(np.float64))
        ids = ra["topk_ids"].astype(np.int64)
        l_, h_ = list_bounds(ra["topk_logprobs"])
        eb = e[ib]  # (m, d)
        s_list = np.clip(np.einsum("mkd,md->mk", e[ids], eb), 0.0, 1.0)
        s_t = np.clip(np.einsum("md,md->m", e[t], eb), 0.0, 1.0)
        is_t = ids == t[:, None]
        t_listed = is_t.any(axis=1)
        tail = tail_upper(ra["tail_logmass"])
        sl = slice(lo, hi)
        out["a"][sl], out["s_t"][sl], out["lo"][sl], out["hi"][sl], out["s"][sl] = a, s_t, l_, h_, s_list
        out["is_t"][sl], out["t_listed"][sl] = is_t, t_listed
        out["mass"][sl] = np.where(t_listed, tail, np.maximum(tail - a, 0.0))
        out["u"][sl] = outside_bound(ra["topk_ids"], ra["topk_logprobs"], ra["tail_logmass"], ra["targets"], a)
        out["n_unlisted"][sl] = store_a.n_classes - ids.shape[1] - (~t_listed)
    return out


def similarity_at(terms: dict, p: float) -> dict[str, np.ndarray]:
    """Per position at exponent p: nll_lo, nll_hi, right_lo (certified), right_hi (possible)."""
    if not p >= 0:
        raise SimilarityError(f"exponent p={p!r} must be >= 0")
    with np.errstate(divide="ignore"):
        sp = np.where(terms["s"] > 0, terms["s"] ** p, 0.0 if p > 0 else 1.0)
        st = terms["s_t"] ** p if p > 0 else np.ones_like(terms["s_t"])
    other = ~terms["is_t"]
    gt = terms["a"] * st
    z_lo = np.sum(np.where(other, terms["lo"] * sp, 0.0), axis=1) + gt
    z_hi = np.sum(np.where(other, terms["hi"] * sp, 0.0), axis=1) + gt + terms["mass"]
    with np.errstate(divide="ignore", invalid="ignore"):  # g_p(t) = 0 (S_t = 0): the target is impossible
        nll_lo = np.where(gt > 0, -np.log(gt) + np.log(z_lo), np.inf)
        nll_hi = np.where(gt > 0, -np.log(gt) + np.log(z_hi), np.inf)
    cmax_hi = np.max(np.where(other, terms["hi"] * sp, -1.0), axis=1)
    cmax_lo = np.max(np.where(other, terms["lo"] * sp, -1.0), axis=1)
    unl = np.where(terms["n_unlisted"] > 0, terms["u"], -1.0)
    unl_lo = np.where(terms["n_unlisted"] > 0, 0.0, -1.0)  # an unlisted class may have probability 0
    return {"nll_lo": nll_lo, "nll_hi": nll_hi, "right_lo": gt > np.maximum(cmax_hi, unl),
            "right_hi": gt > np.maximum(cmax_lo, unl_lo)}


def similarity_sweep(pair, embedding: np.ndarray | None = None, ps=None, terms: dict | None = None) -> pl.DataFrame:
    """Bounded NLL / PPL and certified ACC of the similarity variant for each exponent p (default 0..8)."""
    if terms is None:
        if embedding is None:
            embedding = load_embedding(pair.primary)
        terms = similarity_terms(pair.primary, pair.secondary, np.asarray(embedding))
    ps = np.concatenate([[0.0], np.geomspace(0.01, 8.0, 40)]) if ps is None else np.asarray(ps, float)
    rows = []
    n = terms["a"].size
    for p in ps:
        r = similarity_at(terms, float(p))
        nl, nh = float(np.mean(r["nll_lo"])), float(np.mean(r["nll_hi"]))
        rows.append({"p": float(p), "nll_lo": nl, "nll_hi": nh,
                     "ppl_lo": math.exp(nl) if nl < 700 else math.inf, "ppl_hi": math.exp(nh) if nh < 700 else math.inf,
                     "acc_lo": float(r["right_lo"].mean()), "acc_hi": float(r["right_hi"].mean()),
                     "n_undetermined": int(r["right_hi"].sum() - r["right_lo"].sum()), "n": n})
    return pl.DataFrame(rows)


def similarity_optimum(sweep: pl.DataFrame) -> dict:
    """p minimising the certified NLL upper bound, and p maximising certified ACC (first on ties), with A alone
    (p = 0, if swept) for comparison."""
    i_n = int(sweep["nll_hi"].arg_min())
    i_a = int(sweep["acc_lo"].arg_max())
    base = sweep.filter(pl.col("p") == 0.0)
    return {"p_nll": sweep["p"][i_n], "nll_hi": sweep["nll_hi"][i_n], "p_acc": sweep["p"][i_a],
            "acc_lo": sweep["acc_lo"][i_a], "acc_A": base["acc_lo"][0] if base.height else math.nan,
            "nll_A_hi": base["nll_hi"][0] if base.height else math.nan}


def plot_similarity_sweep(sweep: pl.DataFrame, ax=None):
    """Certified ACC bounds and the NLL upper bound against the exponent p. Only draws; returns the axes."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    p = sweep["p"].to_numpy()
    ax.fill_between(p, sweep["acc_lo"].to_numpy(), sweep["acc_hi"].to_numpy(), alpha=0.3, label="ACC [lo, hi]")
    ax.plot(p, sweep["acc_lo"].to_numpy(), "-", label="ACC certified")
    ax.set_xlabel("similarity exponent p")
    ax.set_ylabel("ACC")
    twin = ax.twinx()
    twin.plot(p, sweep["nll_hi"].to_numpy(), "k--", label="NLL upper bound")
    twin.set_ylabel("NLL (upper bound)")
    ax.legend(fontsize="small")
    return ax
