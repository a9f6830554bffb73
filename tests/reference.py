"""Brute-force NumPy reference of every analysis quantity (DESIGN.md section 3), for tests and the benchmark.

Two layers:

* truth: from the full float64 distributions of a synthetic pair (`truth_*`): the fused model's strict
  correctness at each weight, exactly what the certified bounds must contain;
* certified: from the stored top-K arrays only (`certified_*`), the same definitions the Numba kernels
  implement, written the obvious way: every candidate class, every weight, no intervals, no pruning.

Also: a synthetic pair maker over small vocabularies, the NLL optimum by bisection, the ACC optimum by
evaluating every critical weight, and exchange thresholds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

# The editable install was made before analysis/__init__.py existed, so it maps `analysis` as a namespace
# package; put the repository first so the real package is imported (harmless once reinstalled).
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from pipeline.store.synthetic import arrays_from_logprobs, random_distributions, synthetic_attrs  # noqa: E402, F401

TAIL_WIDEN = 2.0 ** -23


# ---------------------------------------------------------------------------------------------- data
def make_pair(seed: int, n: int = 200, vocab: int = 12, k: int = 4, logprob_dtype: str = "float16",
              tie_grid: float | None = None, k_b: int | None = None, vocab_b: int | None = None,
              sharpness: float = 2.0):
    """(arrays_a, arrays_b, lp_a, lp_b, targets): a random pair; B may be narrower (vocab_b < vocab).

    Ids >= vocab_b get probability 0 under B (log-prob -inf), as for models of one tokenizer family with
    different logit widths.
    """
    rng = np.random.default_rng(seed)
    targets, (lp_a, lp_b) = random_distributions(n, vocab, rng, sharpness=sharpness, tie_grid=tie_grid)
    if vocab_b is not None and vocab_b < vocab:
        lp_b = lp_b[:, :vocab_b].copy()
        lp_b -= np.log(np.exp(lp_b).sum(axis=1, keepdims=True))
        lp_b = np.concatenate([lp_b, np.full((n, vocab - vocab_b), -np.inf)], axis=1)
    rng2 = np.random.default_rng(seed + 1)
    n_chars = rng2.integers(1, 6, n)
    arr_a = arrays_from_logprobs(lp_a, targets, k, logprob_dtype, n_chars=n_chars, n_bytes=n_chars + 1)
    arr_b = arrays_from_logprobs(lp_b, targets, k_b or k, logprob_dtype,
                                 n_chars=n_chars, n_bytes=n_chars + 1)
    return arr_a, arr_b, lp_a, lp_b, targets


def memory_pair(seed: int, *, chunk_size: int = 65536, **kw):
    """Like make_pair but wrapped as analysis MemoryStores (A: 1B params, B: 100M)."""
    from analysis.data import MemoryStore

    arr_a, arr_b, lp_a, lp_b, targets = make_pair(seed, **kw)
    vocab = lp_a.shape[1]
    vocab_b = kw.get("vocab_b") or vocab
    sa = MemoryStore(arr_a, n_classes=vocab, chunk_size=chunk_size,
                     attrs=synthetic_attrs("A", n_params=1_000_000_000))
    sb = MemoryStore(arr_b, n_classes=vocab_b, chunk_size=chunk_size,
                     attrs=synthetic_attrs("B", n_params=100_000_000))
    return sa, sb, lp_a, lp_b, targets


# ---------------------------------------------------------------------------------------------- truth
def truth_right(lp_a, lp_b, targets, weights, arr_a=None, arr_b=None) -> np.ndarray:
    """(N, W) bool: is the fused model strictly right at each weight (from full distributions)?

    The truth a store stands for is the model's float32 distribution (DESIGN.md: float32 values are
    exact), so log-probs are rounded to float32 first; at w = 1 / w = 0 the fusion is the single model,
    right iff its logits put the target strictly first (the store's rank and ties, when given).
    """
    n = len(targets)
    rows = np.arange(n)
    lp_a, lp_b = (x.astype(np.float32).astype(np.float64) for x in (lp_a, lp_b))
    pa, pb = np.exp(lp_a), np.exp(lp_b)
    out = np.zeros((n, len(weights)), bool)
    for i, w in enumerate(weights):
        if w == 1.0 and arr_a is not None:
            out[:, i] = single_right(arr_a)
            continue
        if w == 0.0 and arr_b is not None:
            out[:, i] = single_right(arr_b)
            continue
        if w == 1.0:
            sc = lp_a
        elif w == 0.0:
            sc = lp_b
        else:
            sc = w * pa + (1.0 - w) * pb
        st = sc[rows, targets]
        other = sc.copy()
        other[rows, targets] = -np.inf
        out[:, i] = st > other.max(axis=1)
    return out


def single_right(arr) -> np.ndarray:
    return (arr["target_rank"] == 0) & (arr["target_ties"] == 0)


def partition_codes(arr_a, arr_b) -> np.ndarray:
    """2 [A right] + [B right]: 0 Nww, 1 T, 2 F, 3 Nrr."""
    return 2 * single_right(arr_a).astype(np.int64) + single_right(arr_b).astype(np.int64)


def nll_sums(arr_a, arr_b, weights) -> np.ndarray:
    a = np.exp(arr_a["target_logprob"].astype(np.float64))
    b = np.exp(arr_b["target_logprob"].astype(np.float64))
    with np.errstate(divide="ignore"):
        return np.array([np.sum(-np.log(w * a + (1.0 - w) * b)) for w in weights])


# ---------------------------------------------------------------------------------------------- bounds
REL = 2.0 ** -50  # outward step for a float64 exp (a few ulps)
TINY = 2.0 ** -1070  # ... and for a possibly subnormal result


def float16_ends(lp16: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The closed interval of reals that round to each float16 value, from the bit patterns: the midpoints
    to the neighbouring magnitudes (m - 1 and m + 1; the one past the largest finite, 65504, is 65536, i.e.
    the overflow boundary 65520), mirrored for negative values; +-0 covers [-2^-25, 2^-25]; -inf (-inf, -65520]."""
    u = np.ascontiguousarray(lp16, dtype=np.float16).view(np.uint16).astype(np.int64)
    mag = u & 0x7FFF
    neg = (u & 0x8000) != 0

    def value(m):
        m = np.asarray(m)
        e, f = m >> 10, m & 0x3FF
        return np.where(e == 0, f * 2.0 ** -24, (1024 + f) * 2.0 ** (e.astype(np.float64) - 25))

    lo_mag = np.where(mag == 0, 0.0, 0.5 * (value(np.maximum(mag - 1, 0)) + value(mag)))
    hi_mag = np.where(mag == 0x7BFF, 65520.0, 0.5 * (value(mag) + value(np.minimum(mag + 1, 0x7BFF))))
    lo = np.where(neg, -hi_mag, np.where(mag == 0, -hi_mag, lo_mag))
    hi = np.where(neg, np.where(mag == 0, hi_mag, -lo_mag), hi_mag)
    inf = mag == 0x7C00
    lo = np.where(inf, np.where(neg, -np.inf, 65520.0), lo)
    hi = np.where(inf, np.where(neg, -65520.0, np.inf), hi)
    nan = mag > 0x7C00
    return np.where(nan, np.nan, lo), np.where(nan, np.nan, hi)


def prob_bounds(lp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) probability of each stored log-prob: float16 the exp of its rounding interval's ends (stepped
    outward by REL and TINY; -inf: [0, 2^-1074]), float32 exact (exp; its rounding is the caller's)."""
    if lp.dtype == np.float16:
        lo_end, hi_end = float16_ends(lp)
        with np.errstate(invalid="ignore", over="ignore"):
            lo = np.clip(np.exp(lo_end) * (1.0 - REL) - TINY, 0.0, 1.0)
            hi = np.minimum(np.exp(hi_end) * (1.0 + REL) + TINY, 1.0)
        hi = np.where(np.isneginf(lp.astype(np.float64)), 2.0 ** -1074, hi)
        return lo, hi
    p = np.exp(lp.astype(np.float64))
    return p, p


def tail_upper(tail: np.ndarray) -> np.ndarray:
    x = tail.astype(np.float64)
    with np.errstate(invalid="ignore"):
        p = np.exp(x + np.abs(x) * TAIL_WIDEN) * (1.0 + REL) + TINY
    return np.where(np.isneginf(x), 0.0, p)


def outside_bound(arr, p_target) -> np.ndarray:
    """u: upper bound of any class outside the model's list (other than the target)."""
    lp_k = arr["topk_logprobs"][:, -1]
    _, hi = prob_bounds(lp_k)
    if lp_k.dtype != np.float16:  # exp's rounding of the K-th value, and of the target's probability
        hi = hi * (1.0 + REL) + TINY
    t_in = (arr["topk_ids"] == arr["targets"][:, None]).any(axis=1)
    tail = tail_upper(arr["tail_logmass"])
    e_t = np.where(p_target > 0, p_target * REL + TINY, 0.0)
    tail = np.where(t_in, tail, np.maximum(np.nextafter(tail - p_target + e_t, np.inf), 0.0))
    return np.minimum(hi, tail)


def candidates(arr_a, arr_b, n_classes_a: int, n_classes_b: int):
    """Per position every competitor j != t with (loA, hiA, loB, hiB), as (N, C) arrays plus a validity mask.

    Candidates: A's list, B's list entries not in A's list, and one 'any class outside both lists' if one
    exists. Brute force membership by comparing all pairs of ids.
    """
    t = arr_a["targets"]
    a = np.exp(arr_a["target_logprob"].astype(np.float64))
    b = np.exp(arr_b["target_logprob"].astype(np.float64))
    ids_a, ids_b = arr_a["topk_ids"], arr_b["topk_ids"]
    lo_a, hi_a = prob_bounds(arr_a["topk_logprobs"])
    lo_b, hi_b = prob_bounds(arr_b["topk_logprobs"])
    ua, ub = outside_bound(arr_a, a), outside_bound(arr_b, b)
    eq = ids_a[:, :, None] == ids_b[:, None, :]  # (N, KA, KB)
    in_b = eq.any(axis=2)
    kb_of = eq.argmax(axis=2)
    take = lambda x, idx: np.take_along_axis(x, idx, axis=1)  # noqa: E731
    # A's list
    c_lo_a, c_hi_a = lo_a, hi_a
    c_lo_b = np.where(in_b, take(lo_b, kb_of), 0.0)
    c_hi_b = np.where(in_b, take(hi_b, kb_of), np.where(ids_a < n_classes_b, ub[:, None], 0.0))
    valid_a = ids_a != t[:, None]
    # B's list, not in A's
    in_a = eq.any(axis=1)
    d_lo_b, d_hi_b = lo_b, hi_b
    d_lo_a = np.zeros_like(lo_b)
    d_hi_a = np.where(ids_b < n_classes_a, ua[:, None], 0.0)
    valid_b = (ids_b != t[:, None]) & ~in_a
    # outside both
    n_vocab = max(n_classes_a, n_classes_b)
    union = ids_a.shape[1] + valid_b.sum(axis=1) + ((ids_b == t[:, None]) & ~in_a).sum(axis=1)
    t_listed = (ids_a == t[:, None]).any(axis=1) | (ids_b == t[:, None]).any(axis=1)
    n_known = union + np.where(t_listed | (t >= n_vocab), 0, 1)
    valid_o = (n_vocab > n_known)[:, None]
    lo_A = np.concatenate([c_lo_a, d_lo_a, np.zeros((len(t), 1))], axis=1)
    hi_A = np.concatenate([c_hi_a, d_hi_a, ua[:, None]], axis=1)
    lo_B = np.concatenate([c_lo_b, d_lo_b, np.zeros((len(t), 1))], axis=1)
    hi_B = np.concatenate([c_hi_b, d_hi_b, ub[:, None]], axis=1)
    valid = np.concatenate([valid_a, valid_b, valid_o], axis=1)
    return a, b, lo_A, hi_A, lo_B, hi_B, valid


def certified_right(arr_a, arr_b, n_classes_a, n_classes_b, weights):
    """(right_lo, right_hi): (N, W) bool certified right / possibly right at each weight, brute force."""
    a, b, lo_A, hi_A, lo_B, hi_B, valid = candidates(arr_a, arr_b, n_classes_a, n_classes_b)
    ra, rb = single_right(arr_a), single_right(arr_b)
    n = len(a)
    lo = np.zeros((n, len(weights)), bool)
    hi = np.zeros((n, len(weights)), bool)
    for i, w in enumerate(weights):
        if w == 1.0:
            lo[:, i] = hi[:, i] = ra
            continue
        if w == 0.0:
            lo[:, i] = hi[:, i] = rb
            continue
        ft = w * a + (1.0 - w) * b
        up = np.where(valid, w * hi_A + (1.0 - w) * hi_B, -np.inf).max(axis=1)
        down = np.where(valid, w * lo_A + (1.0 - w) * lo_B, -np.inf).max(axis=1)
        lo[:, i] = ft > up
        hi[:, i] = ft > down
    return lo, hi


def critical_weights(arr_a, arr_b, n_classes_a, n_classes_b) -> np.ndarray:
    """Every weight in (0, 1) where some candidate bound line crosses the target's line."""
    a, b, lo_A, hi_A, lo_B, hi_B, valid = candidates(arr_a, arr_b, n_classes_a, n_classes_b)
    out = []
    for xa, xb in ((hi_A, hi_B), (lo_A, lo_B)):
        c1 = a[:, None] - xa
        c0 = b[:, None] - xb
        with np.errstate(divide="ignore", invalid="ignore"):
            x = c0 / (c0 - c1)
        out.append(x[valid & np.isfinite(x) & (x > 0) & (x < 1)])
    return np.unique(np.concatenate(out))


def acc_lo_max(arr_a, arr_b, n_classes_a, n_classes_b) -> int:
    """max over w in [0, 1] of the certified-right count: evaluate 0, 1, every critical weight and the
    midpoints between consecutive ones (a step function is constant between them)."""
    crit = critical_weights(arr_a, arr_b, n_classes_a, n_classes_b)
    pts = np.concatenate([[0.0, 1.0], crit, (np.concatenate([[0.0], crit]) + np.concatenate([crit, [1.0]])) / 2])
    lo, _ = certified_right(arr_a, arr_b, n_classes_a, n_classes_b, pts)
    return int(lo.sum(axis=0).max())


# ---------------------------------------------------------------------------------------------- optima
def nll_optimum(arr_a, arr_b, iters: int = 200) -> float:
    """w* minimising sum -log(w a + (1 - w) b), by bisection on the derivative."""
    a = np.exp(arr_a["target_logprob"].astype(np.float64))
    b = np.exp(arr_b["target_logprob"].astype(np.float64))
    g = lambda w: -np.sum((a - b) / (w * a + (1.0 - w) * b))  # noqa: E731
    with np.errstate(divide="ignore", invalid="ignore"):
        if not g(1.0) > 0:
            return 1.0
        if not g(0.0) < 0:
            return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if g(mid) > 0:
            hi = mid
        else:
            lo = mid
    return 0.5 * (lo + hi)


# ---------------------------------------------------------------------------------------------- thresholds
def exchange_thresholds(arr_a, arr_b, lp_a, lp_b):
    """Exact ET_T on T and ET_F on F (tau = (1 - w) / w); NaN elsewhere.

    The truth is what the store stands for: a, b from the float32 target_logprob, other classes from the
    full distributions, rounded to float32 when the store's lists are float32 (taken as exact there).
    """
    if arr_a["topk_logprobs"].dtype == np.float32:
        lp_a, lp_b = (x.astype(np.float32).astype(np.float64) for x in (lp_a, lp_b))
    pa, pb = np.exp(lp_a), np.exp(lp_b)
    t = arr_a["targets"]
    rows = np.arange(len(t))
    code = partition_codes(arr_a, arr_b)
    qa = np.exp(arr_a["target_logprob"].astype(np.float64))
    qb = np.exp(arr_b["target_logprob"].astype(np.float64))
    # a class tied with the target (equal log-prob in the full distribution) has the target's stored value, not
    # its float64 one: otherwise a tie looks like a 1e-9 gap and ET_F = 0.36 / 1e-9 instead of +inf
    pa = np.where(lp_a == lp_a[rows, t][:, None], qa[:, None], pa)
    pb = np.where(lp_b == lp_b[rows, t][:, None], qb[:, None], pb)
    xa = lp_a.copy()
    xa[rows, t] = -np.inf
    i = xa.argmax(axis=1)
    xb = lp_b.copy()
    xb[rows, t] = -np.inf
    j = xb.argmax(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        den_t = qb - pb[rows, i]
        et_t = np.where(den_t > 0, (pa[rows, i] - qa) / den_t, np.inf)
        et_t = np.where((arr_a["target_rank"] == 0) & (arr_a["target_ties"] > 0), 0.0, et_t)
        den_f = pb[rows, j] - qb
        et_f = np.where(den_f > 0, (qa - pa[rows, j]) / den_f, np.inf)
    return np.where(code == 1, et_t, np.where(code == 2, et_f, np.nan))

NAMES_ALL = ("targets", "target_logprob", "target_rank", "target_ties", "topk_ids", "topk_logprobs",
             "tail_logmass", "entropy", "n_chars", "n_bytes", "doc_id")


# ---------------------------------------------------------------------------------------------- tasks
def task_option_scores(a, b, offsets, weights) -> np.ndarray:
    """(n_rows, W): every option's fused score sum_p log(w a_p + (1 - w) b_p), one option at a time."""
    w = np.asarray(weights, np.float64)[None, :]
    out = np.empty((len(offsets) - 1, w.shape[1]))
    with np.errstate(divide="ignore"):
        for r in range(len(offsets) - 1):
            sl = slice(offsets[r], offsets[r + 1])
            out[r] = np.sum(np.log(w * a[sl, None] + (1.0 - w) * b[sl, None]), axis=0)
    return out


def task_margins(scores, item_first, label, div=None) -> np.ndarray:
    """(n_items, W): the label's (divided) score minus the best other option's (-inf when there is none); the
    item is right iff its margin is > 0 (a tie is wrong)."""
    div = np.ones(scores.shape[0]) if div is None else div
    s = scores / div[:, None]
    out = np.empty((len(item_first) - 1, scores.shape[1]))
    for i in range(len(item_first) - 1):
        rows = np.arange(item_first[i], item_first[i + 1])
        own = s[item_first[i] + label[i]]
        others = s[rows[rows != item_first[i] + label[i]]]
        best = others.max(axis=0) if len(others) else np.full(s.shape[1], -np.inf)
        with np.errstate(invalid="ignore"):
            out[i] = np.where(own == best, 0.0, own - best)  # -inf vs -inf is a tie
    return out


def task_count_bracket(margins, tol: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """Items right per weight, bracketed against rounding: (margin > tol, margin > -tol) counts. A kernel that
    computes the same scores to ~1e-15 must land in [lo, hi]; lo == hi when no item is within tol of a tie."""
    return (margins > tol).sum(axis=0), (margins > -tol).sum(axis=0)


def task_lw_certified(arr_a, arr_b, n_classes_a, n_classes_b, offsets, weights):
    """Last word, brute force: (items certified right, items possibly right) per weight = items whose every
    position is certified (possibly) right, from `certified_right`."""
    lo, hi = certified_right(arr_a, arr_b, n_classes_a, n_classes_b, weights)
    items_lo = np.array([lo[offsets[r]:offsets[r + 1]].all(axis=0) for r in range(len(offsets) - 1)])
    items_hi = np.array([hi[offsets[r]:offsets[r + 1]].all(axis=0) for r in range(len(offsets) - 1)])
    return items_lo.sum(axis=0), items_hi.sum(axis=0)


def task_lw_ppl(arr_a, arr_b, offsets, weights) -> tuple[np.ndarray, np.ndarray]:
    """Last word: (word PPL, token PPL) per weight, from per-item sums of log(w a + (1 - w) b)."""
    a = np.exp(arr_a["target_logprob"].astype(np.float64))
    b = np.exp(arr_b["target_logprob"].astype(np.float64))
    word = task_option_scores(a, b, offsets, weights)
    return np.exp(-word.mean(axis=0)), np.exp(-word.sum(axis=0) / len(a))


def memory_task_pair(seed: int, kind: str = "multiple_choice", n_items: int = 20, k: int = 4,
                     logprob_dtype: str = "float16", **task_kw):
    """A random task (`pipeline.store.synthetic.random_task`) as two analysis MemoryStores (A: 1B params, B: 100M);
    returns (store_a, store_b, task dict)."""
    from analysis.data import MemoryStore
    from pipeline.store.synthetic import random_task, task_attr

    t = random_task(kind, n_items, np.random.default_rng(seed), **task_kw)
    stores = []
    for lp, name, params in zip(t["logprobs"], ("A", "B"), (1_000_000_000, 100_000_000)):
        arr = arrays_from_logprobs(lp, t["targets"], k, logprob_dtype, doc_id=t["item_id"], n_chars=t["n_chars"],
                                   n_bytes=t["n_bytes"])
        arr.update(item_id=t["item_id"], option_id=t["option_id"])
        attrs = {**synthetic_attrs(name, n_params=params), "task": task_attr(kind, "synthetic_task", n_items)}
        stores.append(MemoryStore(arr, n_classes=lp.shape[1], attrs=attrs, tables=t["tables"]))
    return stores[0], stores[1], t
