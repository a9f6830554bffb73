"""Numba kernels of the NLL improvement domain (DESIGN.md section 3, "NLL optimum").

The excess of the fused NLL over A alone,

    E(w) = L(w) - L(1) = -sum_s log(x_s / a_s),   x / a = w + v rho,   rho = b / a,   v = 1 - w,

is summed term by term: no term is of the size of L itself, so E keeps its relative precision when the total
gain is far below the rounding of L (L(w) - L(1) computed as a difference cancels: 15% error at a gain of 3e-15
nats). Each term keeps its own relative precision at every magnitude (`mix_terms`):

- x / a near 1 (above 1/2): log1p(v (rho - 1)), with rho - 1 = (b - a) / a to an ulp (b - a is exact when a and b
  are within a factor 2, Sterbenz, and within half an ulp otherwise);
- x / a below 1/2 (B far less likely than A): log(w + v rho), two positive terms. log1p(v (b - a) / a) would
  cancel there: 1 + v (b - a) / a carries an absolute error of an ulp of 1, so the term has a relative error of
  eps / (x / a); once w < eps and b < eps a, v rounds to 1 and (b - a) / a to -1, and the term is -inf;
- rho - 1 beyond float64 (a subnormal, b near 1): log rho + log(v + w / rho), where (b - a) / a would be inf.

The word-level kernel (`analysis.words.kernels.log_excess`) sums the same terms from d = log rho through the
same `mix_terms`. Like every reduction of the analysis it is a float64 sum over fixed blocks of BLOCK positions,
in order.
"""

from __future__ import annotations

import math

from numba import njit, prange

from .kernels import BLOCK


@njit(cache=True, nogil=True)
def mix_terms(w, v, below, r, rm1, om, log_rho):
    """(log(x / pA), (pB - pA) / x) for x = w pA + v pB (v = 1 - w given exactly), from rho = pB / pA > 0:

    below (rho <= 1): r = rho, rm1 = rho - 1 (om, log_rho unused);
    else: r = 1 / rho, rm1 = rho - 1 (inf where it overflows), om = 1 - 1 / rho, and log_rho = log rho (read only
    where rm1 is inf). Each argument to full relative precision; so is each result (module docstring).
    """
    if below:
        x = w + v * r  # two non-negative terms: relative precision whatever their size
        if v == 0.0:
            t = 0.0
        elif x > 0.5:
            t = math.log1p(v * rm1)
        else:
            t = math.log(x)
        return t, rm1 / x
    y = v + w * r  # x / pB
    if v == 0.0:
        t = 0.0
    elif rm1 < math.inf:
        t = math.log1p(v * rm1)
    else:
        t = log_rho + math.log(y)
    return t, om / y


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def nll_excess(a, b, w, v, out):
    """out[blk] = (sum -log(x / a), sum (b - a) / x) over the block: E(w) and L'(w), x = w a + v b (`mix_terms`).

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
            pa = a[s]
            pb = b[s]
            d = pb - pa
            rm1 = d / pa
            if pb <= pa:
                t, q = mix_terms(w, v, True, pb / pa, rm1, 0.0, 0.0)
            else:
                lr = math.log(pb) - math.log(pa) if rm1 == math.inf else 0.0
                t, q = mix_terms(w, v, False, pa / pb, rm1, d / pb, lr)
            e -= t
            g += q
        out[blk, 0] = e
        out[blk, 1] = g
