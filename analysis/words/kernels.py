"""Numba kernels of word-level fusion (DESIGN.md section 7).

Notation per word segment s (tokens i..j of one document): lA, lB its log-probabilities under A and B,
d = lB - lA, m = max(lA, lB), and the scaled probabilities ea = exp(lA - m), eb = exp(lB - m) (one of them is
exactly 1, the other exp(-|d|)), so that for any weight w (v = 1 - w given exactly)

    log(w pA(s) + v pB(s)) = m + log(w ea + v eb),    w ea + v eb in [min(w, v), 1],

which holds whatever the magnitudes (segment probabilities far below 1e-300). The sweep over a weight grid is
then the token kernel `analysis.kernels.nll_blocks` on (ea, eb) plus the weight-free sum of m; the derivatives
and the excess over A alone are summed here from d directly (`log_gradient`, `log_excess`). Every reduction is
a float64 sum over fixed blocks of BLOCK segments, in order (`analysis.kernels.BLOCK`).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ..kernels import BLOCK
from ..kernels_optimum import mix_terms

# drop modes of `segment_pass`: which documents lose their first words (their first token was not scored)
DROP_NONE, DROP_ALL, DROP_FIRST = 0, 1, 2


@njit(cache=True, nogil=True)
def _segment_loop(tlp, bow, word_start, n_bytes, n_chars, doc_id, drop_mode, fill, logp, nb, nc, doc, first, ntok,
                  dropped):
    """One pass of `segment_pass`: counts the kept segments, and fills their arrays when ``fill``."""
    n = tlp.shape[0]
    s = -1
    bad = -1
    dropping = False
    seen = 0
    kept_in_doc = 0
    doc_dropped = False
    for p in range(n):
        new_doc = p == 0 or doc_id[p] != doc_id[p - 1]
        if new_doc:
            dropping = drop_mode == 1 or (drop_mode == 2 and p == 0)
            seen = 0
            kept_in_doc = 0
            doc_dropped = False
        if dropping:
            if word_start[p] != 0:
                seen += 1
                dropping = seen < 2
            if dropping:
                doc_dropped = True
                if fill:
                    dropped[0] += 1
                    dropped[1] += n_bytes[p]
                    dropped[2] += n_chars[p]
                    if new_doc or word_start[p] != 0:
                        dropped[3] += 1
                continue
        if kept_in_doc == 0 or word_start[p] != 0:
            if fill and kept_in_doc > 0:
                logp[s] += bow[p]  # the previous segment of this document ended: its word is complete
            s += 1
            kept_in_doc += 1
            if fill:
                doc[s] = doc_id[p]
                first[s] = p
                if kept_in_doc > 1 or doc_dropped:  # not the document's first word: a conditional, -bow[i]
                    if not math.isfinite(bow[p]) and bad < 0:
                        bad = p
                    logp[s] -= bow[p]
        if fill:
            logp[s] += tlp[p]
            nb[s] += n_bytes[p]
            nc[s] += n_chars[p]
            ntok[s] += 1
    return s + 1, bad


@njit(cache=True, nogil=True)
def segment_pass(tlp, bow, word_start, n_bytes, n_chars, doc_id, drop_mode):
    """Word segments of one store, in one pass over its positions (and one to count them first).

    A segment starts at a document's first kept position (the document's first segment: no -bow term) or at a
    position with word_start = 1; it ends before the next start. Its log-probability is
        sum_{k=i..j} tlp[k] + bow[j + 1] - bow[i]
    with bow[j + 1] left out for a document's last segment and -bow[i] for its first. In a dropped document
    (drop_mode DROP_ALL: every document, DROP_FIRST: the first one) every position up to the end of the first
    segment that starts at a word start is left out: the text before the first scored token is absorbed into
    that token's n_bytes, so the words ahead of the second word start cannot be measured alike in two stores.
    The segment after the dropped words keeps its -bow[i] (a conditional given them).

    Returns (l, bytes, chars, doc_id, first position, tokens) per kept segment; dropped = (positions, bytes,
    chars, segments) left out; bad = the first kept segment start (not a document's first) whose bow is not
    finite, else -1.
    """
    e_f = np.zeros(0)
    e_i = np.zeros(0, np.int64)
    dropped = np.zeros(4, np.int64)
    n_seg, _ = _segment_loop(tlp, bow, word_start, n_bytes, n_chars, doc_id, drop_mode, False, e_f, e_i, e_i, e_i,
                             e_i, e_i, dropped)
    logp = np.zeros(n_seg)
    nb = np.zeros(n_seg, np.int64)
    nc = np.zeros(n_seg, np.int64)
    doc = np.zeros(n_seg, np.int64)
    first = np.zeros(n_seg, np.int64)
    ntok = np.zeros(n_seg, np.int64)
    _, bad = _segment_loop(tlp, bow, word_start, n_bytes, n_chars, doc_id, drop_mode, True, logp, nb, nc, doc, first,
                           ntok, dropped)
    return logp, nb, nc, doc, first, ntok, dropped, bad


@njit(cache=True, nogil=True, parallel=True)
def log_sums(la, lb, m, out):
    """out[blk] = (-sum lA, -sum lB, -sum m) over the block's segments: NLL at w = 1, at w = 0, and the
    weight-free part of every fused NLL."""
    n = la.shape[0]
    nblk = (n + BLOCK - 1) // BLOCK
    for blk in prange(nblk):
        s0 = blk * BLOCK
        s1 = min(n, s0 + BLOCK)
        x = 0.0
        y = 0.0
        z = 0.0
        for s in range(s0, s1):
            x -= la[s]
            y -= lb[s]
            z -= m[s]
        out[blk, 0] = x
        out[blk, 1] = y
        out[blk, 2] = z


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def log_mix_blocks(la, lb, logw, logv, out):
    """out[blk, i] = sum -log(w_i pA + v_i pB) = sum -logaddexp(log w_i + lA, log v_i + lB), exactly in the log
    domain: for weights too close to 0 or 1 for the scaled sum (w or v below 1e-280)."""
    n = la.shape[0]
    nw = logw.shape[0]
    nblk = (n + BLOCK - 1) // BLOCK
    for blk in prange(nblk):
        for i in range(nw):
            acc = 0.0
            for s in range(blk * BLOCK, min(n, (blk + 1) * BLOCK)):
                x = logw[i] + la[s]
                y = logv[i] + lb[s]
                hi = max(x, y)
                lo = min(x, y)
                if hi == -np.inf:
                    acc += np.inf
                else:
                    acc -= hi + math.log1p(math.exp(lo - hi))
            out[blk, i] = acc


@njit(cache=True, nogil=True)
def _ratio(d, w, v):
    """r = (pA - pB) / (w pA + v pB) from d = lB - lA, without forming pA or pB."""
    if d <= 0.0:
        return -math.expm1(d) / (w + v * math.exp(d))
    return math.expm1(-d) / (w * math.exp(-d) + v)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def log_gradient(d, w, v, out):
    """out[blk] = (sum -r, sum r^2), r = (pA - pB) / x, x = w pA + v pB: L'(w) and L''(w) of the word NLL."""
    n = d.shape[0]
    nblk = (n + BLOCK - 1) // BLOCK
    for blk in prange(nblk):
        g = 0.0
        h = 0.0
        for s in range(blk * BLOCK, min(n, (blk + 1) * BLOCK)):
            r = _ratio(d[s], w, v)
            g -= r
            h += r * r
        out[blk, 0] = g
        out[blk, 1] = h


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def log_excess(d, w, v, out):
    """out[blk] = (sum -log(x / pA), sum -r): E(w) = L(w) - L(1) term by term, and L'(w).

    The terms of the token kernel (`analysis.kernels_optimum.mix_terms`) from rho = exp(d): -log1p(v expm1(d))
    where x / pA = w + v exp(d) is near 1 (no cancellation when the gain is tiny), -log(w + v exp(d)) where it is
    below 1/2 (1 + v expm1(d) would cancel: v rounds to 1 for tiny w), -(d + log(v + w exp(-d))) where expm1(d)
    overflows; 0 at v = 0. pA > 0 (the caller handles lA = -inf).
    """
    n = d.shape[0]
    nblk = (n + BLOCK - 1) // BLOCK
    for blk in prange(nblk):
        e = 0.0
        g = 0.0
        for s in range(blk * BLOCK, min(n, (blk + 1) * BLOCK)):
            ds = d[s]
            if ds <= 0.0:
                t, q = mix_terms(w, v, True, math.exp(ds), math.expm1(ds), 0.0, 0.0)
            else:
                t, q = mix_terms(w, v, False, math.exp(-ds), math.expm1(ds), -math.expm1(-ds), ds)
            e -= t
            g += q
        out[blk, 0] = e
        out[blk, 1] = g
