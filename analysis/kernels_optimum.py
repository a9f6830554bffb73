"""Numba kernel of the NLL improvement domain (DESIGN.md section 3, "NLL optimum").

The excess of the fused NLL over A alone,

    E(w) = L(w) - L(1) = -sum_s log(x_s / a_s) = -sum_s log1p(v (b_s - a_s) / a_s),   x = w a + v b, v = 1 - w,

is summed term by term: no term is of the size of L itself, so E keeps its relative precision when the total
gain is far below the rounding of L (L(w) - L(1) computed as a difference cancels: 15% error at a gain of 3e-15
nats). b - a is exact when a and b are within a factor 2 (Sterbenz), and within half an ulp otherwise.
Like every reduction of the analysis it is a float64 sum over fixed blocks of BLOCK positions, in order.
"""

from __future__ import annotations

import math

from numba import njit, prange

from .kernels import BLOCK


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def nll_excess(a, b, w, v, out):
    """out[blk] = (sum -log1p(v (b - a) / a), sum -(a - b) / x) over the block: E(w) and L'(w), x = w a + v b.

    a > 0 everywhere (the caller handles a = 0, where L(1) is infinite); v = 1 - w given exactly.
    """
    n = a.shape[0]
    nblk = (n + BLOCK - 1) // BLOCK
    for blk in prange(nblk):
        s0 = blk * BLOCK
        s1 = min(n, s0 + BLOCK)
        e = 0.0
        g = 0.0
        for s in range(s0, s1):
            d = b[s] - a[s]
            e -= math.log1p(v * (d / a[s]))
            g += d / (w * a[s] + v * b[s])
        out[blk, 0] = e
        out[blk, 1] = g
