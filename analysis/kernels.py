"""Numba kernels of the fusion analysis (DESIGN.md sections 3 and 6).

Only ``@njit(cache=True)`` functions over contiguous arrays live here; validation, chunk loops and frames
are in the Python wrappers (`data.py`, `metrics.py`, `optimum.py`). Every reduction is a float64 sum or an
int64 count over fixed blocks of BLOCK = 4,096 positions, in order, so results do not depend on how a
store is chunked and the per-block sums can be merged later (bootstrap, Dask).

Notation per position s: t the target, a = qA(t), b = qB(t) (exact, from target_logprob),
f_w(j) = w qA(j) + (1 - w) qB(j).

Phase 1 (`prepare_pair`) reduces each position to a, b, its partition code and two open intervals in w:
the certified-right set (L1, U1) and the possibly-right set (L2, U2). Each competitor j != t gives a
strict linear constraint  w c1 + (1 - w) c0 > 0  with
    certified:  c1 = a - hiA(j),  c0 = b - hiB(j)     (t beats j's upper bound)
    possible:   c1 = a - loA(j),  c0 = b - loB(j)     (no lower bound of j reaches t)
whose solution is a half-line w > c0/(c0 - c1) or w < c0/(c0 - c1) (or all, or nothing); their
intersection is one open interval. Phase 2 (`acc_blocks`, `nll_blocks`) evaluates a weight grid.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

BLOCK = 4096  # positions per reduction block (fixed: results must not depend on chunking)
GROUP = 16  # NLL: positions whose fused probabilities are multiplied before one log
SAFE_MIN = 1e-18  # ... when every a, b in the group is at least this (16 factors stay above 1e-288)
EMPTY_L = 2.0  # canonical empty interval (L, U) = (2, -1)
EMPTY_U = -1.0


@njit(cache=True, nogil=True)
def _tighten(c1, c0, lo, hi):
    """Intersect the open interval (lo, hi) with {w : w c1 + (1 - w) c0 > 0}."""
    if c1 > 0.0:
        if c0 <= 0.0:
            x = c0 / (c0 - c1)  # in [0, 1): w must exceed it
            if x > lo:
                lo = x
    elif c0 > 0.0:
        x = c0 / (c0 - c1)  # in (0, 1]: w must stay below it
        if x < hi:
            hi = x
    else:
        lo = EMPTY_L
        hi = EMPTY_U
    return lo, hi


@njit(cache=True, nogil=True)
def _bounds(s, k, bits, f32, is16, lut_lo, lut_hi):
    """(lo, hi) of the probability of list entry k at position s (float16 via lookup, float32 exact)."""
    if is16:
        u = bits[s, k]
        return lut_lo[u], lut_hi[u]
    p = math.exp(np.float64(f32[s, k]))
    return p, p


@njit(cache=True, nogil=True)
def _tail_upper(tail, widen):
    """Upper bound of the tail mass from a float32 log value rounded to nearest."""
    x = np.float64(tail)
    if x == -np.inf:
        return 0.0
    p = math.exp(x + abs(x) * widen) * (1.0 + 4e-16)
    return p if p < 1.0 else 1.0


@njit(cache=True, nogil=True)
def _count_nan(s, k_n, bits, f32, is16):
    """Entries of row s that are NaN (branch-free so that it vectorises)."""
    c = 0
    if is16:
        for k in range(k_n):
            c += (bits[s, k] & 0x7FFF) > 0x7C00
    else:
        for k in range(k_n):
            c += f32[s, k] != f32[s, k]
    return c


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def prepare_pair(targets, targets_b, n_vocab, widen, lut_lo, lut_hi,
                 lpt_a, rank_a, ties_a, ids_a, bits_a, f32_a, is16_a, tail_a, ncls_a,
                 lpt_b, rank_b, ties_b, ids_b, bits_b, f32_b, is16_b, tail_b, ncls_b,
                 a_out, b_out, code_out, l1_out, u1_out, l2_out, u2_out):
    """Phase 1: per position, a, b, code = 2 [A right] + [B right], certified (L1, U1), possible (L2, U2).

    Single-model correctness is strict: right iff target_rank == 0 and target_ties == 0. A class in a
    model's list has the bounds of `_bounds`; a class outside it is in [0, u] with
    u = min(hi of the K-th entry, tail upper bound (- a when the target is outside the list)), or is 0
    when its id is beyond the model's width; every class outside both lists is bounded by (uA, uB).

    Pruning (exact: only dominated lines are skipped): a competitor constrains w only if one of its upper
    bounds reaches the target's probability. Lists are sorted, so those are the prefixes of A's list with
    hiA >= a and of B's list with hiB >= b. Beyond its prefix, an entry of A's list not in B's has the line
    (hiA, uB), which matters only if uB >= b, and then the first such entry dominates the rest (likewise
    for B). Membership is looked up in per-thread maps id -> s * M + index, valid when >= s * M.
    Returns (n_nan, first position whose targets differ or -1, n_bad_ids).
    """
    n = targets.shape[0]
    ka = ids_a.shape[1]
    kb = ids_b.shape[1]
    mult = max(ka, kb) + 1
    n_pieces = max(1, min(64, (n + BLOCK - 1) // BLOCK))
    piece = (n + n_pieces - 1) // n_pieces
    nan_counts = np.zeros(n_pieces, np.int64)
    bad_counts = np.zeros(n_pieces, np.int64)
    mismatch = np.full(n_pieces, -1, np.int64)
    for p in prange(n_pieces):
        map_a = np.full(n_vocab, -1, np.int64)
        map_b = np.full(n_vocab, -1, np.int64)
        for s in range(p * piece, min(n, (p + 1) * piece)):
            t = targets[s]
            base = np.int64(s) * mult
            if targets_b[s] != t and mismatch[p] < 0:
                mismatch[p] = s
            la = np.float64(lpt_a[s])
            lb = np.float64(lpt_b[s])
            a = math.exp(la)
            b = math.exp(lb)
            a_out[s] = a
            b_out[s] = b
            code_out[s] = 2 * (rank_a[s] == 0 and ties_a[s] == 0) + (rank_b[s] == 0 and ties_b[s] == 0)
            n_nan = _count_nan(s, ka, bits_a, f32_a, is16_a) + _count_nan(s, kb, bits_b, f32_b, is16_b)
            bad = n_nan > 0 or la != la or lb != lb or tail_a[s] != tail_a[s] or tail_b[s] != tail_b[s]
            ids_ok = True
            t_in_a = False
            for k in range(ka):
                j = ids_a[s, k]
                if j < 0 or j >= n_vocab:
                    ids_ok = False
                    break
                map_a[j] = base + k
                t_in_a = t_in_a or j == t
            t_in_b = False
            if ids_ok:
                for k in range(kb):
                    j = ids_b[s, k]
                    if j < 0 or j >= n_vocab:
                        ids_ok = False
                        break
                    map_b[j] = base + k
                    t_in_b = t_in_b or j == t
            if bad or not ids_ok:
                nan_counts[p] += bad
                bad_counts[p] += not ids_ok
                l1_out[s] = EMPTY_L
                u1_out[s] = EMPTY_U
                l2_out[s] = EMPTY_L
                u2_out[s] = EMPTY_U
                continue
            lo_k, hi_k = _bounds(s, ka - 1, bits_a, f32_a, is16_a, lut_lo, lut_hi)
            ua = _tail_upper(tail_a[s], widen)
            if not t_in_a:
                ua = max(ua - a, 0.0)
            ua = min(ua, hi_k)
            lo_k, hi_k = _bounds(s, kb - 1, bits_b, f32_b, is16_b, lut_lo, lut_hi)
            ub = _tail_upper(tail_b[s], widen)
            if not t_in_b:
                ub = max(ub - b, 0.0)
            ub = min(ub, hi_k)
            l1 = -1.0
            u1 = 2.0
            l2 = -1.0
            u2 = 2.0
            # A's prefix (hiA >= a), with B's bounds of each id.
            pa = 0
            for k in range(ka):
                lo_a, hi_a = _bounds(s, k, bits_a, f32_a, is16_a, lut_lo, lut_hi)
                if hi_a < a:
                    break
                pa = k + 1
                j = ids_a[s, k]
                if j == t:
                    continue
                m = map_b[j]
                if m >= base:
                    lo_b, hi_b = _bounds(s, m - base, bits_b, f32_b, is16_b, lut_lo, lut_hi)
                else:
                    lo_b = 0.0
                    hi_b = ub if j < ncls_b else 0.0
                l1, u1 = _tighten(a - hi_a, b - hi_b, l1, u1)
                l2, u2 = _tighten(a - lo_a, b - lo_b, l2, u2)
            # Beyond it: the first entry of A's list outside B's list, if uB can reach b.
            if ub >= b:
                for k in range(pa, ka):
                    j = ids_a[s, k]
                    if j == t or j >= ncls_b or map_b[j] >= base:
                        continue
                    lo_a, hi_a = _bounds(s, k, bits_a, f32_a, is16_a, lut_lo, lut_hi)
                    l1, u1 = _tighten(a - hi_a, b - ub, l1, u1)
                    l2, u2 = _tighten(a - lo_a, b, l2, u2)
                    break
            # B's prefix (hiB >= b), skipping ids already done in A's prefix.
            pb = 0
            for k in range(kb):
                lo_b, hi_b = _bounds(s, k, bits_b, f32_b, is16_b, lut_lo, lut_hi)
                if hi_b < b:
                    break
                pb = k + 1
                j = ids_b[s, k]
                if j == t:
                    continue
                m = map_a[j]
                if m >= base:
                    if m - base < pa:
                        continue
                    lo_a, hi_a = _bounds(s, m - base, bits_a, f32_a, is16_a, lut_lo, lut_hi)
                else:
                    lo_a = 0.0
                    hi_a = ua if j < ncls_a else 0.0
                l1, u1 = _tighten(a - hi_a, b - hi_b, l1, u1)
                l2, u2 = _tighten(a - lo_a, b - lo_b, l2, u2)
            if ua >= a:
                for k in range(pb, kb):
                    j = ids_b[s, k]
                    if j == t or j >= ncls_a or map_a[j] >= base:
                        continue
                    lo_b, hi_b = _bounds(s, k, bits_b, f32_b, is16_b, lut_lo, lut_hi)
                    l1, u1 = _tighten(a - ua, b - hi_b, l1, u1)
                    l2, u2 = _tighten(a, b - lo_b, l2, u2)
                    break
            # Classes outside both lists (other than t), if any exist.
            outside = n_vocab > ka + kb + 1
            if not outside:
                n_union = kb
                for k in range(ka):
                    if map_b[ids_a[s, k]] < base:
                        n_union += 1
                n_known = n_union + (0 if (t_in_a or t_in_b or t >= n_vocab) else 1)
                outside = n_vocab > n_known
            if outside:
                l1, u1 = _tighten(a - ua, b - ub, l1, u1)
                l2, u2 = _tighten(a, b, l2, u2)
            if l1 >= u1:
                l1 = EMPTY_L
                u1 = EMPTY_U
            if l2 >= u2:
                l2 = EMPTY_L
                u2 = EMPTY_U
            l1_out[s] = l1
            u1_out[s] = u1
            l2_out[s] = l2
            u2_out[s] = u2
    first = -1
    for p in range(n_pieces):
        if mismatch[p] >= 0:
            first = mismatch[p]
            break
    return nan_counts.sum(), first, bad_counts.sum()


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def nll_blocks(a, b, w, omw, out):
    """out[blk, i] = sum over the block's positions of -log(w_i a + (1 - w_i) b), float64.

    Weight loop innermost; positions are taken GROUP at a time and their fused probabilities multiplied
    before a single log (log does not vectorise here), unless one of them is below SAFE_MIN.
    """
    n = a.shape[0]
    nw = w.shape[0]
    nblk = (n + BLOCK - 1) // BLOCK
    for blk in prange(nblk):
        s0 = blk * BLOCK
        s1 = min(n, s0 + BLOCK)
        acc = np.zeros(nw)
        prod = np.empty(nw)
        for g0 in range(s0, s1, GROUP):
            g1 = min(s1, g0 + GROUP)
            safe = True
            for s in range(g0, g1):
                if a[s] < SAFE_MIN or b[s] < SAFE_MIN:
                    safe = False
            if safe:
                for i in range(nw):
                    prod[i] = 1.0
                for s in range(g0, g1):
                    aa = a[s]
                    bb = b[s]
                    for i in range(nw):
                        prod[i] *= w[i] * aa + omw[i] * bb
                for i in range(nw):
                    acc[i] -= math.log(prod[i])
            else:
                for s in range(g0, g1):
                    aa = a[s]
                    bb = b[s]
                    for i in range(nw):
                        acc[i] -= math.log(w[i] * aa + omw[i] * bb)
        for i in range(nw):
            out[blk, i] = acc[i]


@njit(cache=True, nogil=True)
def _first_above(w, lo, hi, x):
    """First index i in [lo, hi) with w[i] > x (w ascending), else hi."""
    while lo < hi:
        mid = (lo + hi) // 2
        if w[mid] > x:
            hi = mid
        else:
            lo = mid + 1
    return lo


@njit(cache=True, nogil=True)
def _first_at_least(w, lo, hi, x):
    """First index i in [lo, hi) with w[i] >= x (w ascending), else hi."""
    while lo < hi:
        mid = (lo + hi) // 2
        if w[mid] >= x:
            hi = mid
        else:
            lo = mid + 1
    return lo


@njit(cache=True, nogil=True, parallel=True)
def acc_blocks(code, l1, u1, l2, u2, w, i_lo, i_hi, out):
    """out[blk, m, c, i]: positions of partition code c right at weight w_i, m = 0 certified, 1 possible.

    Only weights w[i_lo:i_hi] (ascending, strictly inside (0, 1)) are counted; at w = 0 and w = 1 the
    fusion is the single model and the wrapper uses its exact correctness. Position s is right at w iff
    L < w < U: one difference-array update per interval, found by bisection.
    """
    n = code.shape[0]
    nw = w.shape[0]
    nblk = (n + BLOCK - 1) // BLOCK
    for blk in prange(nblk):
        s0 = blk * BLOCK
        s1 = min(n, s0 + BLOCK)
        diff = np.zeros((2, 4, nw + 1), np.int64)
        for s in range(s0, s1):
            c = code[s]
            i0 = _first_above(w, i_lo, i_hi, l1[s])
            i1 = _first_at_least(w, i0, i_hi, u1[s])
            if i0 < i1:
                diff[0, c, i0] += 1
                diff[0, c, i1] -= 1
            i0 = _first_above(w, i_lo, i_hi, l2[s])
            i1 = _first_at_least(w, i0, i_hi, u2[s])
            if i0 < i1:
                diff[1, c, i0] += 1
                diff[1, c, i1] -= 1
        for m in range(2):
            for c in range(4):
                run = 0
                for i in range(nw):
                    run += diff[m, c, i]
                    out[blk, m, c, i] = run


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def nll_derivatives(a, b, w, v, out):
    """out[blk] = (sum -log x, sum -(a - b)/x, sum ((a - b)/x)^2) with x = w a + v b, v = 1 - w given exactly.

    L(w) = -sum log x is convex: L'(w) = -sum (a - b)/x, L''(w) = sum (a - b)^2/x^2.
    """
    n = a.shape[0]
    nblk = (n + BLOCK - 1) // BLOCK
    for blk in prange(nblk):
        s0 = blk * BLOCK
        s1 = min(n, s0 + BLOCK)
        f = 0.0
        g = 0.0
        h = 0.0
        for s in range(s0, s1):
            d = a[s] - b[s]
            x = w * a[s] + v * b[s]
            r = d / x
            f -= math.log(x)
            g -= r
            h += r * r
        out[blk, 0] = f
        out[blk, 1] = g
        out[blk, 2] = h


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def nll_gradient(a, b, w, v, out):
    """out[blk] = (sum -(a - b)/x, sum ((a - b)/x)^2), x = w a + v b: Newton steps without the logs."""
    n = a.shape[0]
    nblk = (n + BLOCK - 1) // BLOCK
    for blk in prange(nblk):
        s0 = blk * BLOCK
        s1 = min(n, s0 + BLOCK)
        g = 0.0
        h = 0.0
        for s in range(s0, s1):
            r = (a[s] - b[s]) / (w * a[s] + v * b[s])
            g -= r
            h += r * r
        out[blk, 0] = g
        out[blk, 1] = h


@njit(cache=True, nogil=True)
def reduce_blocks(x):
    """Sum a (n_blocks, ...) float64 array over blocks, sequentially in block order."""
    out = np.zeros(x.shape[1:], np.float64)
    flat = out.reshape(-1)
    xs = x.reshape(x.shape[0], -1)
    for blk in range(xs.shape[0]):
        for i in range(xs.shape[1]):
            flat[i] += xs[blk, i]
    return out
