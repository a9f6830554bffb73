"""Brute-force NumPy references of the law-testing statistics (issue 7): bootstrap, AR-law fit, RBP,
multi-model fusion, theorem checks, vocabulary use, similarity fusion.

Every function here is the obvious, slow definition: explicit resampled positions, full loops, no
per-unit sums, no kernels.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import reference as ref  # noqa: F401  (puts the repository first on sys.path)


# ---------------------------------------------------------------------------------------------- bootstrap
def resample_positions(unit: np.ndarray, counts_row: np.ndarray) -> np.ndarray:
    """Positions of one resample: unit u's positions (in order) repeated counts_row[u] times."""
    out = []
    for u, c in enumerate(counts_row):
        pos = np.flatnonzero(unit == u)
        out.extend([pos] * int(c))
    return np.concatenate(out) if out else np.empty(0, np.int64)


def nll_optimum_bisect(a: np.ndarray, b: np.ndarray, iters: int = 300) -> float:
    """alpha_nll = w*/(1 - w*) by bisection on L'(u) in u = log beta (inf when L'(1) <= 0, 0 when L'(0) >= 0)."""
    if np.sum(b / a - 1.0) <= 0:
        return math.inf
    with np.errstate(divide="ignore"):
        if np.sum(1.0 - a / b) >= 0:
            return 0.0
    lo, hi = -700.0, 700.0
    for _ in range(iters):
        u = 0.5 * (lo + hi)
        w, v = 1 / (1 + math.exp(-u)), 1 / (1 + math.exp(u))
        g = -np.sum((a - b) / (w * a + v * b))
        if g > 0:
            hi = u
        else:
            lo = u
    return math.exp(0.5 * (lo + hi))


def nll_domain_bisect(a: np.ndarray, b: np.ndarray, alpha: float, iters: int = 300) -> float:
    """D_nll: the beta left of alpha where L = L(1) (0 if L(0) <= L(1), inf if alpha = inf)."""
    if alpha == math.inf:
        return math.inf
    l1 = np.sum(-np.log(a))
    with np.errstate(divide="ignore"):
        if np.sum(-np.log(b)) <= l1:
            return 0.0
    lo, hi = -700.0, math.log(alpha)
    for _ in range(iters):
        u = 0.5 * (lo + hi)
        w, v = 1 / (1 + math.exp(-u)), 1 / (1 + math.exp(u))
        if np.sum(-np.log(w * a + v * b)) > l1:
            lo = u
        else:
            hi = u
    return math.exp(0.5 * (lo + hi))


def percentile_ci(x: np.ndarray, level: float) -> tuple[float, float]:
    """Sorted-sample quantiles: the ceil(q R)-th smallest value (inverted CDF)."""
    x = np.sort(np.asarray(x, dtype=np.float64)[~np.isnan(x)])
    r = x.size
    out = []
    for q in ((1 - level) / 2, (1 + level) / 2):
        k = max(1, int(math.ceil(q * r - 1e-12)))
        out.append(float(x[k - 1]))
    return tuple(out)


# ---------------------------------------------------------------------------------------------- AR-law fit
def power_fit(x, y) -> dict:
    """Least squares of log y on log x via numpy.polyfit (finite positive y only), with se and R^2."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(y) & (y > 0)
    lx, ly = np.log(x[ok]), np.log(y[ok])
    (p, icpt), res, *_ = np.polyfit(lx, ly, 1, full=True)
    pred = icpt + p * lx
    ssr = float(np.sum((ly - pred) ** 2))
    sst = float(np.sum((ly - ly.mean()) ** 2))
    n = len(lx)
    se = math.sqrt(ssr / (n - 2) / np.sum((lx - lx.mean()) ** 2)) if n >= 3 else math.nan
    return {"p": float(p), "c": math.exp(icpt), "r2": 1 - ssr / sst if np.ptp(ly) > 0 and sst > 0 else math.nan, "p_se": se,
            "n_points": n}


# ---------------------------------------------------------------------------------------------- RBP
def true_fused_counts(lp_a, lp_b, targets, w) -> np.ndarray:
    """#{j != t : f_w(j) >= f_w(t)} from the full distributions."""
    f = w * np.exp(lp_a) + (1 - w) * np.exp(lp_b)
    rows = np.arange(len(targets))
    ft = f[rows, targets]
    return (f >= ft[:, None]).sum(axis=1) - 1


def fused_count_bounds(arr_a, arr_b, ncls_a, ncls_b, w):
    """(c_lo, c_hi, cap) from the stored arrays by brute force over `reference.candidates`."""
    a, b, lo_A, hi_A, lo_B, hi_B, valid = ref.candidates(arr_a, arr_b, ncls_a, ncls_b)
    ft = w * a + (1 - w) * b
    lo = w * lo_A + (1 - w) * lo_B
    hi = w * hi_A + (1 - w) * hi_B
    listed = valid[:, :-1]
    c_lo = (listed & (lo[:, :-1] >= ft[:, None])).sum(axis=1)
    c_hi = (listed & (hi[:, :-1] >= ft[:, None])).sum(axis=1)
    n_vocab = max(ncls_a, ncls_b)
    t = arr_a["targets"]
    n_out = np.zeros(len(t), np.int64)
    for s in range(len(t)):
        known = set(arr_a["topk_ids"][s].tolist()) | set(arr_b["topk_ids"][s].tolist()) | {int(t[s])}
        n_out[s] = max(0, n_vocab - len(known))
    c_hi = c_hi + np.where(hi[:, -1] >= ft, n_out, 0)
    cap = (arr_a["target_rank"].astype(np.int64) + arr_a["target_ties"] + arr_b["target_rank"] + arr_b["target_ties"])
    return c_lo, c_hi, cap


# ---------------------------------------------------------------------------------------------- multi-model
def memory_family(seed: int, n: int = 300, vocab: int = 12, k: int = 4, n_models: int = 3,
                  logprob_dtype: str = "float16", params=None):
    """n_models MemoryStores of one random token stream (largest first), plus the full log-probs."""
    from analysis.data import MemoryStore

    rng = np.random.default_rng(seed)
    noise = tuple(0.5 + 0.5 * i for i in range(n_models))
    targets, lps = ref.random_distributions(n, vocab, rng, n_models=n_models, noise=noise)
    n_chars = np.random.default_rng(seed + 1).integers(1, 6, n)
    params = params or [10 ** (9 - i) for i in range(n_models)]
    stores = [MemoryStore(ref.arrays_from_logprobs(lp, targets, k, logprob_dtype, n_chars=n_chars, n_bytes=n_chars),
                          n_classes=vocab, attrs=ref.synthetic_attrs(f"m{i}", n_params=params[i]))
              for i, lp in enumerate(lps)]
    return stores, lps, targets


def simplex_grid(m: int, step: float) -> np.ndarray:
    """Every point of the m-simplex on a grid of the given step."""
    q = int(round(1 / step))
    pts = [c for c in itertools.product(range(q + 1), repeat=m - 1) if sum(c) <= q]
    return np.array([[*c, q - sum(c)] for c in pts], dtype=np.float64) / q


def multi_right(arrays: list, ncls: list, weights) -> tuple[np.ndarray, np.ndarray]:
    """Certified / possible fused correctness by brute force: per position, every class of the vocabulary
    gets [lo, hi] from each model (listed: storage bounds; unlisted: [0, u] or 0 beyond the width)."""
    w = np.asarray(weights, float)
    n = len(arrays[0]["targets"])
    n_vocab = max(ncls)
    cert = np.zeros(n, bool)
    poss = np.zeros(n, bool)
    nz = np.flatnonzero(w > 0)
    if nz.size == 1:
        r = ref.single_right(arrays[nz[0]])
        return r.copy(), r.copy()
    for s in range(n):
        t = int(arrays[0]["targets"][s])
        ft = sum(w[i] * math.exp(float(arr["target_logprob"][s])) for i, arr in enumerate(arrays))
        lo = np.zeros(n_vocab)
        hi = np.zeros(n_vocab)
        listed_any = np.zeros(n_vocab, bool)
        for i, arr in enumerate(arrays):
            p_t = math.exp(float(arr["target_logprob"][s]))
            u = ref.outside_bound({k: v[s:s + 1] for k, v in arr.items()}, np.array([p_t]))[0]
            l_, h_ = ref.prob_bounds(arr["topk_logprobs"][s])
            li = np.zeros(n_vocab)
            hi_i = np.where(np.arange(n_vocab) < ncls[i], u, 0.0)
            for kk, j in enumerate(arr["topk_ids"][s]):
                li[j], hi_i[j] = l_[kk], h_[kk]
                listed_any[j] = True
            lo += w[i] * li
            hi += w[i] * hi_i
        others = np.arange(n_vocab) != t
        cert[s] = ft > hi[others].max() if others.any() else True
        lo_known = np.where(listed_any, lo, 0.0)
        poss[s] = ft > lo_known[others].max() if others.any() else True
    return cert, poss


# ---------------------------------------------------------------------------------------------- theorems
def mainstay(arr_a, arr_b, h: int) -> dict:
    """n, m, N_L, N_S for class h by loops."""
    n = m = nl = ns = 0
    ra, rb = ref.single_right(arr_a), ref.single_right(arr_b)
    for s in range(len(arr_a["targets"])):
        if arr_a["topk_ids"][s, 0] == h:
            n += 1
            nl += bool(ra[s])
        if arr_b["topk_ids"][s, 0] == h:
            m += 1
            ns += bool(rb[s])
    return {"n": n, "m": m, "N_L": nl, "N_S": ns}


def _q_bounds(arr, s, j, ncls):
    """(lo, hi) of a model's probability of class j at position s from its stored list."""
    lo, hi = ref.prob_bounds(arr["topk_logprobs"][s])
    ids = arr["topk_ids"][s].tolist()
    if j in ids:
        return lo[ids.index(j)], hi[ids.index(j)]
    p_t = math.exp(float(arr["target_logprob"][s]))
    u = ref.outside_bound({k: v[s:s + 1] for k, v in arr.items()}, np.array([p_t]))[0]
    return 0.0, (u if j < ncls else 0.0)


def stratified_members(arr_a, arr_b, ncls_b: int) -> tuple[set, set]:
    """(certified, possible) members of A.2.4's set A, checking every a in T against every f in F."""
    code = ref.partition_codes(arr_a, arr_b)
    t = arr_a["targets"]
    a = np.exp(arr_a["target_logprob"].astype(np.float64))
    b = np.exp(arr_b["target_logprob"].astype(np.float64))

    def top_other(arr, s):
        ids = arr["topk_ids"][s].tolist()
        return ids[1] if ids[0] == t[s] and len(ids) > 1 else ids[0]

    fs = []
    for f in np.flatnonzero(code == 2):
        j2 = top_other(arr_a, f)
        qa2 = _q_bounds(arr_a, f, j2, 10 ** 9)
        jb = top_other(arr_b, f)
        qbj = _q_bounds(arr_b, f, jb, ncls_b)
        fs.append(((a[f] - qa2[1], a[f] - qa2[0]), (qbj[0] - b[f], qbj[1] - b[f])))
    cert, poss = set(), set()
    for s in np.flatnonzero(code == 1):
        i = top_other(arr_a, s)
        qa = _q_bounds(arr_a, s, i, 10 ** 9)
        qb = _q_bounds(arr_b, s, i, ncls_b)
        if all(qa[1] - a[s] < mA[0] and b[s] - qb[0] > mB[1] for mA, mB in fs):
            cert.add(int(s))
        if all(qa[0] - a[s] < mA[1] and b[s] - qb[1] > mB[0] for mA, mB in fs):
            poss.add(int(s))
    return cert, poss


def unimodal_dip(values) -> int:
    """max over i of min(max of values before-or-at i, max at-or-after i) - values[i], by loops."""
    v = list(values)
    return max(min(max(v[:i + 1]), max(v[i:])) - v[i] for i in range(len(v)))


# ---------------------------------------------------------------------------------------------- vocabulary
def vocab_share(arr) -> float:
    """|set(top-1) & set(targets)| / |set(targets)| with Python sets."""
    targets = set(arr["targets"].tolist())
    return len(set(arr["topk_ids"][:, 0].tolist()) & targets) / len(targets)


# ---------------------------------------------------------------------------------------------- similarity
def similarity_truth(lp_a, lp_b, targets, emb, p):
    """(nll, right) of the similarity variant from the full distributions and the full similarity matrix."""
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    s_full = np.clip(e @ e.T, 0.0, 1.0)
    nll = np.empty(len(targets))
    right = np.empty(len(targets), bool)
    for s in range(len(targets)):
        ib = int(np.argmax(lp_b[s]))
        sim = s_full[:, ib] ** p if p > 0 else np.ones(len(e))
        g = np.exp(lp_a[s]) * sim
        t = targets[s]
        nll[s] = -math.log(g[t] / g.sum()) if g[t] > 0 else math.inf
        others = np.delete(g, t)
        right[s] = g[t] > others.max()
    return nll, right


def similarity_bounds(arr_a, arr_b, emb, ncls_a, p):
    """(nll_lo, nll_hi, right_lo, right_hi) by loops over each position's list (module docstring of
    analysis.similarity)."""
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    n = len(arr_a["targets"])
    out = [np.empty(n), np.empty(n), np.empty(n, bool), np.empty(n, bool)]
    for s in range(n):
        t = int(arr_a["targets"][s])
        ib = int(arr_b["topk_ids"][s, 0])
        sim = lambda j: max(0.0, min(1.0, float(e[j] @ e[ib])))  # noqa: E731, B023
        pw = lambda x: (x ** p if x > 0 else 0.0) if p > 0 else 1.0  # noqa: E731
        a = math.exp(float(arr_a["target_logprob"][s]))
        gt = a * pw(sim(t))
        lo, hi = ref.prob_bounds(arr_a["topk_logprobs"][s])
        ids = arr_a["topk_ids"][s].tolist()
        z_lo = z_hi = gt
        c_hi = c_lo = -1.0
        for kk, j in enumerate(ids):
            if j == t:
                continue
            z_lo += lo[kk] * pw(sim(j))
            z_hi += hi[kk] * pw(sim(j))
            c_hi = max(c_hi, hi[kk] * pw(sim(j)))
            c_lo = max(c_lo, lo[kk] * pw(sim(j)))
        tail = ref.tail_upper(arr_a["tail_logmass"][s:s + 1])[0]
        mass = tail if t in ids else max(tail - a, 0.0)
        z_hi += mass
        n_unl = ncls_a - len(ids) - (0 if t in ids else 1)
        u = ref.outside_bound({k: v[s:s + 1] for k, v in arr_a.items()}, np.array([a]))[0]
        with np.errstate(divide="ignore"):
            out[0][s] = -np.log(gt) + math.log(z_lo) if gt > 0 else math.inf
            out[1][s] = -np.log(gt) + math.log(z_hi) if gt > 0 else math.inf
        out[2][s] = gt > max(c_hi, u if n_unl > 0 else -1.0)
        out[3][s] = gt > max(c_lo, 0.0 if n_unl > 0 else -1.0)
    return out
