"""Numba kernels of the fusion analysis (DESIGN.md sections 3 and 6).

Only ``@njit(cache=True)`` functions over contiguous arrays live here; validation, chunk loops and frames
are in the Python wrappers (`data.py`, `metrics.py`, `optimum.py`). Every reduction is a float64 sum or an
int64 count over fixed blocks of BLOCK = 4,096 positions, in order, so results do not depend on how a
store is chunked and the per-block sums can be merged later (bootstrap, Dask).

Notation per position s: t the target, a = qA(t), b = qB(t) (exact reals exp(target_logprob), computed in
float64 with an error at most a REL + TINY: `analysis.lut`), f_w(j) = w qA(j) + (1 - w) qB(j).

Phase 1 (`prepare_pair`) reduces each position to a, b, its partition code and two open intervals in w:
the certified-right set (L1, U1) and the possibly-right set (L2, U2). Each competitor j != t gives a
strict linear constraint  w c1 + (1 - w) c0 > 0  with
    certified:  c1 = a - hiA(j),  c0 = b - hiB(j)     (t beats j's upper bound)
    possible:   c1 = a - loA(j),  c0 = b - loB(j)     (no lower bound of j reaches t)
whose solution is a half-line w > c0/(c0 - c1) or w < c0/(c0 - c1) (or all, or nothing); their
intersection is one open interval. Rounding is accounted for outward (certified sets only shrink,
possible sets only grow): each difference c carries a bound e on its error (from exp and the
subtraction; exactly 0 when the two stored float32 values are identical, so exact ties stay exact); the
certified set uses (c1 - e1, c0 - e0), the possible set (c1 + e1, c0 + e0) (the constraint is monotone
in both, as w, 1 - w >= 0), and the quotient is stepped outward by a few ulps (it is exact when c0 or c1
is 0). Phase 2 (`acc_blocks`, `nll_blocks`) evaluates a weight grid.

Task kernels (multiple choice: fused option scores, item counts over a grid, and the certified change points
of each item's correctness for the optimum) are at the end of the file, with their formulas.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .lut import REL, TINY

BLOCK = 4096  # positions per reduction block (fixed: results must not depend on chunking)
GROUP = 16  # NLL: positions whose fused probabilities are multiplied before one log
SAFE_MIN = 1e-18  # ... when every a, b in the group is at least this (16 factors stay above 1e-288)
EMPTY_L = 2.0  # canonical empty interval (L, U) = (2, -1)
EMPTY_U = -1.0
# Error of a difference c = x - p relative to |c|: its rounding (2^-53), and room for the rounding of c -+ e
# in `_tighten` (another 2^-53 of |c| + e; e's own slack, REL and TINY being several times the exp error it
# bounds, covers the e part), so c - e computed in float64 is still a sure lower bound (c + e upper).
SUB_ERR = 2.0 ** -51


@njit(cache=True, nogil=True)
def _exp_err(x):
    """(exp(x), bound on its float64 error) for an exact float64 x; (0, 0) for -inf (probability 0 exactly)."""
    if x == -np.inf:
        return 0.0, 0.0
    p = math.exp(x)
    return p, p * REL + TINY


@njit(cache=True, nogil=True)
def _step(x, up):
    """x in [0, 1] moved outward by 2^-50 relative plus 2^-1072: more than the rounding of the subtraction of
    two terms of opposite signs and of the division that made it (2^-53 relative each, or 2^-1075 absolute
    where subnormal). Arithmetic rather than nextafter: this runs for every constraint of every position."""
    return x * (1.0 + REL) + 2.0 ** -1072 if up else x * (1.0 - REL) - 2.0 ** -1072


@njit(cache=True, nogil=True)
def _gap(x, ex, p, ep, tie):
    """(x - p, bound on its error) for x, p known to within ex, ep; exactly (0, 0) for a tie of stored values."""
    if tie:
        return 0.0, 0.0
    c = x - p
    return c, ex + ep + abs(c) * SUB_ERR


@njit(cache=True, nogil=True)
def _below(p, ep, x, ex):
    """Certainly p_true < x_true, for p_true in [0, p + ep] and x_true >= x - ex."""
    return (p + ep) * (1.0 + REL) + TINY < (x - ex) * (1.0 - REL)


@njit(cache=True, nogil=True)
def _tighten(c1, e1, c0, e0, lo, hi, cert):
    """Intersect the open interval (lo, hi) with {w : w c1' + (1 - w) c0' > 0}, where c1' = c1 - e1 and
    c0' = c0 - e0 if ``cert`` (lower ends of the true differences: the set shrinks), else c1 + e1, c0 + e0
    (upper ends: the set grows); the end c0'/(c0' - c1') is rounded the same way (exact if c0' or c1' is 0)."""
    if cert:  # e = 0 for exact values: c is unchanged
        c1 -= e1
        c0 -= e0
    else:
        c1 += e1
        c0 += e0
    if c1 > 0.0:
        if c0 <= 0.0:
            x = c0 / (c0 - c1)  # in [0, 1): w must exceed it
            if c0 != 0.0:
                x = _step(x, cert)
            if x > lo:
                lo = x
    elif c0 > 0.0:
        x = c0 / (c0 - c1)  # in (0, 1]: w must stay below it
        if c1 != 0.0:
            x = _step(x, not cert)
        if x < hi:
            hi = x
    else:
        lo = EMPTY_L
        hi = EMPTY_U
    return lo, hi


@njit(cache=True, nogil=True)
def _lines(a, ea, b, eb, lo_a, hi_a, ep_a, tie_a, lo_b, hi_b, ep_b, tie_b, l1, u1, l2, u2):
    """Tighten the certified (l1, u1) and possible (l2, u2) intervals by one competitor with probability in
    [lo_a, hi_a] (+- ep_a) under A and [lo_b, hi_b] (+- ep_b) under B; tie_*: stored value equal to t's."""
    c1, e1 = _gap(a, ea, hi_a, ep_a, tie_a)
    c0, e0 = _gap(b, eb, hi_b, ep_b, tie_b)
    l1, u1 = _tighten(c1, e1, c0, e0, l1, u1, True)
    if lo_a != hi_a:
        c1, e1 = _gap(a, ea, lo_a, ep_a, tie_a)
    if lo_b != hi_b:
        c0, e0 = _gap(b, eb, lo_b, ep_b, tie_b)
    l2, u2 = _tighten(c1, e1, c0, e0, l2, u2, False)
    return l1, u1, l2, u2


@njit(cache=True, nogil=True)
def _bounds(s, k, bits, f32, is16, lut_lo, lut_hi):
    """(lo, hi, err) of the probability of list entry k at position s: float16 via lookup (sure bounds,
    err 0); float32 lo = hi = exp(value) within err of the exact real."""
    if is16:
        u = bits[s, k]
        return lut_lo[u], lut_hi[u], 0.0
    p, e = _exp_err(np.float64(f32[s, k]))
    return p, p, e


@njit(cache=True, nogil=True)
def _tie(s, k, f32, is16, lt):
    """List entry k stores exactly the target's float32 log-prob lt (a float32 list): an exact tie."""
    return (not is16) and f32[s, k] == lt


@njit(cache=True, nogil=True)
def _tail_upper(tail, widen):
    """Upper bound of the tail mass from a float32 log value rounded to nearest (not clipped at 1: float32
    log-probs need not sum to exactly 1)."""
    x = np.float64(tail)
    if x == -np.inf:
        return 0.0
    return math.exp(x + abs(x) * widen) * (1.0 + REL) + TINY


@njit(cache=True, nogil=True)
def _outside_upper(s, ka, tail, t_in, a, ea, widen, bits, f32, is16, lut_lo, lut_hi):
    """u: no class outside the list (other than t) has probability above it: min(hi of the K-th entry,
    tail upper bound, minus a when t is outside the list)."""
    _, hi_k, ep_k = _bounds(s, ka - 1, bits, f32, is16, lut_lo, lut_hi)
    u = _tail_upper(tail, widen)
    if not t_in:
        u = max(np.nextafter(u - a + ea, np.inf), 0.0)
    return min(u, hi_k + ep_k)


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

    Pruning (exact: only lines that cannot bind are skipped): lists are sorted by the exact values, so once
    an entry of A's list is certainly below a (`_below`), so is every later one: A's prefix ends there (and
    likewise B's). A class beyond both prefixes is below t in both models, so right of t at every w. Beyond
    its prefix, an entry of A's list not in B's matters only if uB may reach b; then one certified line
    (a - hiA of the first such entry, b - uB) holds for all of them (the first entry's bound is above every
    later one's exact value) and its possible line is kept (leaving lines out only grows a possible set).
    Likewise for B. Once the possible set is empty, so is the certified one (each certified line is inside its
    possible line) and the position is done. Membership is looked up in per-thread maps id -> s * M + index,
    valid when >= s * M.
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
            lt_a = lpt_a[s]
            lt_b = lpt_b[s]
            a, ea = _exp_err(np.float64(lt_a))
            b, eb = _exp_err(np.float64(lt_b))
            a_out[s] = a
            b_out[s] = b
            code_out[s] = 2 * (rank_a[s] == 0 and ties_a[s] == 0) + (rank_b[s] == 0 and ties_b[s] == 0)
            n_nan = _count_nan(s, ka, bits_a, f32_a, is16_a) + _count_nan(s, kb, bits_b, f32_b, is16_b)
            bad = n_nan > 0 or a != a or b != b or tail_a[s] != tail_a[s] or tail_b[s] != tail_b[s]
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
            ua = _outside_upper(s, ka, tail_a[s], t_in_a, a, ea, widen, bits_a, f32_a, is16_a, lut_lo, lut_hi)
            ub = _outside_upper(s, kb, tail_b[s], t_in_b, b, eb, widen, bits_b, f32_b, is16_b, lut_lo, lut_hi)
            l1 = -1.0
            u1 = 2.0
            l2 = -1.0
            u2 = 2.0
            # A's prefix (not certainly below a), with B's bounds of each id.
            # Once the possible set is empty (the certified one is inside it), no line can matter: stop.
            pa = 0
            for k in range(ka):
                if l2 >= u2:
                    break
                lo_a, hi_a, ep_a = _bounds(s, k, bits_a, f32_a, is16_a, lut_lo, lut_hi)
                if _below(hi_a, ep_a, a, ea):
                    break
                pa = k + 1
                j = ids_a[s, k]
                if j == t:
                    continue
                m = map_b[j]
                if m >= base:
                    lo_b, hi_b, ep_b = _bounds(s, m - base, bits_b, f32_b, is16_b, lut_lo, lut_hi)
                    tie_b = _tie(s, m - base, f32_b, is16_b, lt_b)
                else:
                    lo_b = 0.0
                    hi_b = ub if j < ncls_b else 0.0
                    ep_b = 0.0
                    tie_b = False
                l1, u1, l2, u2 = _lines(a, ea, b, eb, lo_a, hi_a, ep_a, _tie(s, k, f32_a, is16_a, lt_a),
                                        lo_b, hi_b, ep_b, tie_b, l1, u1, l2, u2)
            # Beyond it: the entries of A's list outside B's list, if uB may reach b (one line for all).
            if l2 < u2 and not _below(ub, 0.0, b, eb):
                for k in range(pa, ka):
                    j = ids_a[s, k]
                    if j == t or j >= ncls_b or map_b[j] >= base:
                        continue
                    lo_a, hi_a, ep_a = _bounds(s, k, bits_a, f32_a, is16_a, lut_lo, lut_hi)
                    l1, u1, l2, u2 = _lines(a, ea, b, eb, lo_a, hi_a, ep_a, False, 0.0, ub, 0.0, False,
                                            l1, u1, l2, u2)
                    break
            # B's prefix (not certainly below b), skipping ids already done in A's prefix.
            pb = 0
            for k in range(kb):
                if l2 >= u2:
                    break
                lo_b, hi_b, ep_b = _bounds(s, k, bits_b, f32_b, is16_b, lut_lo, lut_hi)
                if _below(hi_b, ep_b, b, eb):
                    break
                pb = k + 1
                j = ids_b[s, k]
                if j == t:
                    continue
                m = map_a[j]
                if m >= base:
                    if m - base < pa:
                        continue
                    lo_a, hi_a, ep_a = _bounds(s, m - base, bits_a, f32_a, is16_a, lut_lo, lut_hi)
                    tie_a = _tie(s, m - base, f32_a, is16_a, lt_a)
                else:
                    lo_a = 0.0
                    hi_a = ua if j < ncls_a else 0.0
                    ep_a = 0.0
                    tie_a = False
                l1, u1, l2, u2 = _lines(a, ea, b, eb, lo_a, hi_a, ep_a, tie_a, lo_b, hi_b, ep_b,
                                        _tie(s, k, f32_b, is16_b, lt_b), l1, u1, l2, u2)
            if l2 < u2 and not _below(ua, 0.0, a, ea):
                for k in range(pb, kb):
                    j = ids_b[s, k]
                    if j == t or j >= ncls_a or map_a[j] >= base:
                        continue
                    lo_b, hi_b, ep_b = _bounds(s, k, bits_b, f32_b, is16_b, lut_lo, lut_hi)
                    l1, u1, l2, u2 = _lines(a, ea, b, eb, 0.0, ua, 0.0, False, lo_b, hi_b, ep_b, False,
                                            l1, u1, l2, u2)
                    break
            # Classes outside both lists (other than t), if any exist.
            outside = l2 < u2 and n_vocab > ka + kb + 1
            if l2 < u2 and not outside:
                n_union = kb
                for k in range(ka):
                    if map_b[ids_a[s, k]] < base:
                        n_union += 1
                n_known = n_union + (0 if (t_in_a or t_in_b or t >= n_vocab) else 1)
                outside = n_vocab > n_known
            if outside:
                l1, u1, l2, u2 = _lines(a, ea, b, eb, 0.0, ua, 0.0, False, 0.0, ub, 0.0, False, l1, u1, l2, u2)
            if l1 >= u1 or l2 >= u2:
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
        acc = np.empty(nw)
        prod = np.empty(nw)
        _fused_log_row(a, b, blk * BLOCK, min(n, (blk + 1) * BLOCK), w, omw, prod, acc)
        for i in range(nw):
            out[blk, i] = -acc[i]


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


# ---------------------------------------------------------------------------------------------- tasks
# Task stores (multiple choice, LAMBADA) group positions into options (rows r, positions offsets[r] ..
# offsets[r + 1] - 1) and options into items (rows item_first[i] .. item_first[i + 1] - 1). The fused score of
# option r at weight w is
#     s_r(w) = sum_{p in r} log(w a_p + (1 - w) b_p)
# computed with positions multiplied GROUP at a time before one log (as `nll_blocks`, unless a factor is below
# SAFE_MIN): `_fused_log_sum` (one weight) and `_fused_log_row` (a weight grid, weights innermost) do the same
# operations in the same order, so they give bit-identical values and the optimum agrees with the sweep.
# An item is right at w iff its label's score (divided by the option's length for ACC_norm) is strictly larger
# than every other option's: a tie for the maximum is wrong.
NOISE_REL = 1e-13  # |D| below this (relative to the scores' size) is rounding: a root cannot be located closer
MERGE_REL = 1e-10  # change points of one item closer than this (relative to min(w, 1 - w)) are merged
NORMS = 3  # divisors of the option score: 0 none (ACC), 1 characters (ACC_norm), 2 bytes (ACC_bytes)


@njit(cache=True, nogil=True)
def _group_safe(a, b, g0, g1):
    """No factor of positions [g0, g1) is below SAFE_MIN: their fused probabilities may be multiplied first."""
    for p in range(g0, g1):
        if a[p] < SAFE_MIN or b[p] < SAFE_MIN:
            return False
    return True


@njit(cache=True, nogil=True, error_model="numpy")
def _fused_log_sum(a, b, p0, p1, w, v):
    """sum_{p0 <= p < p1} log(w a_p + v b_p) (v = 1 - w): the scalar twin of `_fused_log_row`."""
    acc = 0.0
    for g0 in range(p0, p1, GROUP):
        g1 = min(p1, g0 + GROUP)
        if _group_safe(a, b, g0, g1):
            prod = 1.0
            for p in range(g0, g1):
                prod *= w * a[p] + v * b[p]
            acc += math.log(prod)
        else:
            for p in range(g0, g1):
                acc += math.log(w * a[p] + v * b[p])
    return acc


@njit(cache=True, nogil=True, error_model="numpy")
def _fused_log_slope(a, b, p0, p1, w, v):
    """d/dw of `_fused_log_sum`: sum (a_p - b_p) / (w a_p + v b_p) (+-inf or nan where a factor is 0)."""
    acc = 0.0
    for p in range(p0, p1):
        acc += (a[p] - b[p]) / (w * a[p] + v * b[p])
    return acc


@njit(cache=True, nogil=True, error_model="numpy")
def _fused_log_row(a, b, p0, p1, w, omw, prod, out):
    """out[i] = sum_{p0 <= p < p1} log(w_i a_p + omw_i b_p) for every weight; ``prod`` is scratch of len(w)."""
    nw = w.shape[0]
    for i in range(nw):
        out[i] = 0.0
    for g0 in range(p0, p1, GROUP):
        g1 = min(p1, g0 + GROUP)
        if _group_safe(a, b, g0, g1):
            for i in range(nw):
                prod[i] = 1.0
            for p in range(g0, g1):
                aa = a[p]
                bb = b[p]
                for i in range(nw):
                    prod[i] *= w[i] * aa + omw[i] * bb
            for i in range(nw):
                out[i] += math.log(prod[i])
        else:
            for p in range(g0, g1):
                aa = a[p]
                bb = b[p]
                for i in range(nw):
                    out[i] += math.log(w[i] * aa + omw[i] * bb)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def option_scores(a, b, offsets, w, omw, out):
    """out[r, i] = s_r(w_i) = sum over option r's positions of log(w_i a + omw_i b), float64."""
    n_rows = offsets.shape[0] - 1
    nw = w.shape[0]
    n_pieces = max(1, min(64, n_rows))
    piece = (n_rows + n_pieces - 1) // n_pieces
    for pc in prange(n_pieces):
        prod = np.empty(nw)
        for r in range(pc * piece, min(n_rows, (pc + 1) * piece)):
            _fused_log_row(a, b, offsets[r], offsets[r + 1], w, omw, prod, out[r])


@njit(cache=True, nogil=True)
def _item_right(sc, i, r0, m, lab, div, k):
    """Strict argmax of item scores sc[o, i] / div[k, r0 + o]: the label beats every other option (and -inf)."""
    own = sc[lab, i] / div[k, r0 + lab]
    ok = own > -np.inf
    for o in range(m):
        if o != lab:
            ok = ok and own > sc[o, i] / div[k, r0 + o]
    return ok


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def mc_counts(a, b, offsets, item_first, label, div, w, omw, max_opt, out):
    """out[piece, k, i] = items right at weight w_i under norm k (divisor div[k, option row]: 1, characters,
    bytes), counted over the piece's items; the wrapper sums the pieces (integers: order-free).

    Per item the options' fused scores over the whole grid are built in a (max_opt, W) scratch, weights
    innermost, then each weight's strict argmax is checked.
    """
    n_items = label.shape[0]
    nw = w.shape[0]
    n_pieces = out.shape[0]
    piece = (n_items + n_pieces - 1) // n_pieces
    for pc in prange(n_pieces):
        sc = np.empty((max_opt, nw))
        prod = np.empty(nw)
        cnt = np.zeros((NORMS, nw), np.int64)
        for it in range(pc * piece, min(n_items, (pc + 1) * piece)):
            r0 = item_first[it]
            m = item_first[it + 1] - r0
            for o in range(m):
                _fused_log_row(a, b, offsets[r0 + o], offsets[r0 + o + 1], w, omw, prod, sc[o])
            lab = label[it]
            for k in range(NORMS):
                for i in range(nw):
                    cnt[k, i] += _item_right(sc, i, r0, m, lab, div, k)
        for k in range(NORMS):
            for i in range(nw):
                out[pc, k, i] = cnt[k, i]


@njit(cache=True, nogil=True)
def _min_of_max(f0, f1, g0, g1):
    """min over t in [0, 1] of max(f(t), g(t)), f and g the lines through (0, f0), (1, f1) and (0, g0), (1, g1)."""
    best = min(max(f0, g0), max(f1, g1))
    den = (f0 - g0) - (f1 - g1)
    if den != 0.0:
        t = (f0 - g0) / den
        if 0.0 < t < 1.0:
            best = min(best, f0 + t * (f1 - f0))
    return best


@njit(cache=True, nogil=True)
def _max_of_min(f0, f1, g0, g1):
    """max over t in [0, 1] of min(f(t), g(t)) (lines as in `_min_of_max`): its mirror image, exactly."""
    return -_min_of_max(-f0, -f1, -g0, -g1)


@njit(cache=True, nogil=True)
def cell_sign(h, l0, dl0, l1, dl1, o0, do0, o1, do1):
    """+1 if D = L - O > 0 on the whole cell [w0, w0 + h], -1 if D < 0 there, 0 if undecided.

    L and O are concave in w (sums of logs of positive linear functions, divided by a positive length), given
    by their values and slopes at both ends. A concave function lies above its chord and below its tangents,
    so  chord_L - min(tangent0_O, tangent1_O) <= D <= min(tangent0_L, tangent1_L) - chord_O : each side is the
    max (min) of two lines, whose extreme over the cell is at an end or where they cross. Both ends of D
    must have the sign too (so rounding never certifies a cell across which D changes sign).
    """
    d0 = l0 - o0
    d1 = l1 - o1
    if d0 > 0.0 and d1 > 0.0:
        lo = _min_of_max(d0, l1 - (o0 + h * do0), l0 - (o1 - h * do1), d1)
        if lo > 0.0:
            return 1
    elif d0 < 0.0 and d1 < 0.0:
        hi = _max_of_min(d0, (l0 + h * dl0) - o1, (l1 - h * dl1) - o0, d1)
        if hi < 0.0:
            return -1
    return 0


@njit(cache=True, nogil=True)
def _score_at(a, b, offsets, r, w, dv):
    p0 = offsets[r]
    p1 = offsets[r + 1]
    v = 1.0 - w
    return _fused_log_sum(a, b, p0, p1, w, v) / dv, _fused_log_slope(a, b, p0, p1, w, v) / dv


@njit(cache=True, nogil=True)
def _identical(a, b, offsets, r, q):
    """Options r and q have the same positions' (a, b), in order: their scores are equal at every w."""
    n = offsets[r + 1] - offsets[r]
    if offsets[q + 1] - offsets[q] != n:
        return False
    for j in range(n):
        if a[offsets[r] + j] != a[offsets[q] + j] or b[offsets[r] + j] != b[offsets[q] + j]:
            return False
    return True


@njit(cache=True, nogil=True)
def _dead(a, b, offsets, r):
    """Some position of option r has a = b = 0: its score is -inf at every weight."""
    for p in range(offsets[r], offsets[r + 1]):
        if a[p] == 0.0 and b[p] == 0.0:
            return True
    return False


@njit(cache=True, nogil=True, error_model="numpy")
def _item_right_at(a, b, offsets, r0, m, lab, dv, w):
    """Is the item right at the single weight w (0 < w < 1)? Scores as in `mc_counts`."""
    v = 1.0 - w
    own = _fused_log_sum(a, b, offsets[r0 + lab], offsets[r0 + lab + 1], w, v) / dv[r0 + lab]
    ok = own > -np.inf
    for o in range(m):
        if o != lab:
            ok = ok and own > _fused_log_sum(a, b, offsets[r0 + o], offsets[r0 + o + 1], w, v) / dv[r0 + o]
    return ok


@njit(cache=True, nogil=True, error_model="numpy")
def _item_right_intervals(a, b, offsets, r0, m, lab, dv, grid, max_visits, stk, roots, out_lo, out_hi):
    """One item of `mc_right_intervals` (serial: its scratch ``roots`` may be replaced by a larger array, which
    is returned). Returns (number of right-intervals, cells visited, budget exhausted, roots scratch)."""
    n_grid = grid.shape[0]
    stack_n = stk.shape[0]
    cap = out_lo.shape[0]
    rl = r0 + lab
    nr = 0
    visits = 0
    flag = 0
    never = _dead(a, b, offsets, rl)
    for o in range(m):
        if never:
            break
        if o == lab:
            continue
        ro = r0 + o
        if _dead(a, b, offsets, ro):
            continue  # D = +inf
        if dv[ro] == dv[rl] and _identical(a, b, offsets, rl, ro):
            never = True  # a tie at every weight
            break
        # the grid's cells, pushed right to left so that they are processed left to right
        top = 0
        l1, dl1 = _score_at(a, b, offsets, rl, grid[n_grid - 1], dv[rl])
        o1, do1 = _score_at(a, b, offsets, ro, grid[n_grid - 1], dv[ro])
        for g in range(n_grid - 2, -1, -1):
            l0, dl0 = _score_at(a, b, offsets, rl, grid[g], dv[rl])
            o0, do0 = _score_at(a, b, offsets, ro, grid[g], dv[ro])
            _put(stk, top, grid[g], grid[g + 1], l0, dl0, l1, dl1, o0, do0, o1, do1)
            top += 1
            l1, dl1, o1, do1 = l0, dl0, o0, do0
        n_vis = 0
        while top > 0:
            top -= 1
            w0 = stk[top, 0]
            w1 = stk[top, 1]
            l0, dl0, l1, dl1 = stk[top, 2], stk[top, 3], stk[top, 4], stk[top, 5]
            o0, do0, o1, do1 = stk[top, 6], stk[top, 7], stk[top, 8], stk[top, 9]
            n_vis += 1
            if n_vis > max_visits:
                flag = 1
                break
            if cell_sign(w1 - w0, l0, dl0, l1, dl1, o0, do0, o1, do1) != 0:
                continue
            mid = 0.5 * (w0 + w1)
            # D at rounding level at both ends: a root localised as far as D can be (or D numerically 0 here,
            # e.g. near w = 0 for options sharing b); either way one change point, and no further splitting.
            noise = NOISE_REL * (1.0 + abs(l0) + abs(o0) + abs(l1) + abs(o1))
            flat = noise < np.inf and abs(l0 - o0) <= noise and abs(l1 - o1) <= noise
            if flat or mid <= w0 or mid >= w1 or w1 - w0 <= 1e-15 * w1 or top + 2 > stack_n:
                if nr == roots.shape[0]:
                    grown = np.empty(2 * nr)
                    grown[:nr] = roots
                    roots = grown
                roots[nr] = mid
                nr += 1
                continue
            lm, dlm = _score_at(a, b, offsets, rl, mid, dv[rl])
            om, dom = _score_at(a, b, offsets, ro, mid, dv[ro])
            _put(stk, top, mid, w1, lm, dlm, l1, dl1, om, dom, o1, do1)  # right half below,
            _put(stk, top + 1, w0, mid, l0, dl0, lm, dlm, o0, do0, om, dom)  # left half on top
            top += 2
        visits += n_vis
    count = 0
    if not never:
        rs = np.sort(roots[:nr])
        # Roots closer than MERGE_REL x min(w, 1 - w) are one change point (D is only known to rounding, so a
        # crossing can show as a cluster of sign changes a few ulps wide): the cluster's midpoint.
        nc = 0
        q = 0
        while q < nr:
            first = rs[q]
            last = first
            while q + 1 < nr and rs[q + 1] - last <= MERGE_REL * min(last, 1.0 - last):
                q += 1
                last = rs[q]
            rs[nc] = 0.5 * (first + last)
            nc += 1
            q += 1
        start = -1.0  # left end of the open right-run, -1 when none
        prev = 0.0
        for q in range(nc + 1):
            nxt = rs[q] if q < nc else 1.0
            if nxt <= prev:
                continue
            ok = _item_right_at(a, b, offsets, r0, m, lab, dv, 0.5 * (prev + nxt))
            if ok and start < 0.0:
                start = prev
            elif not ok and start >= 0.0:
                if count < cap:
                    out_lo[count] = start
                    out_hi[count] = prev
                count += 1
                start = -1.0
            prev = nxt
        if start >= 0.0:
            if count < cap:
                out_lo[count] = start
                out_hi[count] = 1.0
            count += 1
    return count, visits, flag, roots


@njit(cache=True, nogil=True)
def _put(stk, i, w0, w1, l0, dl0, l1, dl1, o0, do0, o1, do1):
    stk[i, 0] = w0
    stk[i, 1] = w1
    stk[i, 2] = l0
    stk[i, 3] = dl0
    stk[i, 4] = l1
    stk[i, 5] = dl1
    stk[i, 6] = o0
    stk[i, 7] = do0
    stk[i, 8] = o1
    stk[i, 9] = do1


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def mc_right_intervals(a, b, offsets, item_first, label, dv, grid, items, max_visits,
                       out_lo, out_hi, out_n, out_visits, out_flag):
    """Per item (of ``items``), the open intervals of w in (0, 1) on which it is right: out_lo/out_hi[j, :n]
    with n = out_n[j] (only the first out_lo.shape[1] are written when n exceeds it; the wrapper retries).

    Change points: for every competitor o of the label l, the roots of D(w) = s_l(w)/dv_l - s_o(w)/dv_o in (0, 1).
    Starting from the cells of ``grid`` (ascending, from 0 to 1), a cell is dropped once `cell_sign` certifies
    the sign of D on all of it, else split in two; a cell too narrow to split (a few ulps) that is still
    undecided, or whose D is at rounding level (NOISE_REL) at both ends, holds a root, recorded at its midpoint
    (an extra change point is harmless: the item's correctness is then evaluated at the midpoint of every piece
    between consecutive change points, and adjacent right pieces are merged). So no sign change of D is missed, double roots included, up to rounding of D itself;
    change points closer than MERGE_REL x min(w, 1 - w) are merged first, so that rounding noise around one
    crossing cannot leave ulp-wide pieces (a real double flip that narrow is lost, and means nothing).
    Guards: an option with a = b = 0 somewhere scores -inf; a competitor identical to the label (same a, b
    in order, same divisor) ties it everywhere; at most ``max_visits`` cells per competitor (out_flag[j] = 1
    when the budget ran out: roots may be missing). out_visits[j] = cells visited.
    """
    n_todo = items.shape[0]
    n_pieces = max(1, min(64, n_todo))
    piece = (n_todo + n_pieces - 1) // n_pieces
    for pc in prange(n_pieces):
        stk = np.empty((grid.shape[0] + 2400, 10))
        roots = np.empty(64)
        for j in range(pc * piece, min(n_todo, (pc + 1) * piece)):
            it = items[j]
            r0 = item_first[it]
            count, visits, flag, roots = _item_right_intervals(
                a, b, offsets, r0, item_first[it + 1] - r0, label[it], dv, grid, max_visits, stk, roots,
                out_lo[j], out_hi[j])
            out_n[j] = count
            out_visits[j] = visits
            out_flag[j] = flag
