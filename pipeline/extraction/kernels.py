"""CPU kernel of the LM head's reductions: one pass over each row of float32 logits, float64 sums.

Per row i, with t the target logit, c the K-th largest logit and mt the (K+1)-th (the tail's maximum):

    rank  = #{j : z_j >  t}            ties = #{j : z_j == t} - 1
    n_gt  = #{j : z_j >  c}            n_eq = #{j : z_j == c}           (top-K ties at its boundary)
    tsum  = sum_{z_j < c} exp(z_j - mt)          usum = sum_{z_j < c} exp(z_j - mt) (z_j - mt)

in float64 (z_j - mt is exact in float64), so the stored float32 log-probs, tail and entropy are the float64
results rounded once (`head.py`). Relative to the tail's own maximum the tail sum never underflows however
small the tail is. exp is evaluated inline (`_exp_nonpos`: Cody-Waite reduction, degree-12 Taylor, relative
error < 4e-16) so the loop vectorises; libm's exp does not and costs 6x more. torch would need several
passes and (P, V) temporaries for the same; this loop is faster than torch's float32 path it replaces.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

INV_LN2 = 1.4426950408889634
LN2_HI = 0.6931471803691238  # ln 2 split so that k * LN2_HI is exact for |k| < 2^11
LN2_LO = 1.9082149292705877e-10
EXP_MIN = -708.0  # below this exp(d) is 0 here (< 3e-308 of the tail's largest term, which is 1)


@intrinsic
def _f64_from_bits(typingctx, bits):
    """Reinterpret an int64 as the float64 with those bits (to build 2^k without a libm call)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


@njit(inline="always")
def _exp_nonpos(d):
    """exp(d) for d <= 0 in float64 (0 below EXP_MIN and for nan): d = k ln 2 + r, |r| <= ln 2 / 2."""
    x = max(d, EXP_MIN)
    k = math.floor(x * INV_LN2 + 0.5)
    r = (x - k * LN2_HI) - k * LN2_LO
    p = 1.0 + r * (1.0 + r * (1 / 2 + r * (1 / 6 + r * (1 / 24 + r * (1 / 120 + r * (1 / 720 + r * (
        1 / 5040 + r * (1 / 40320 + r * (1 / 362880 + r * (1 / 3628800 + r * (1 / 39916800 + r * (
            1 / 479001600))))))))))))
    scale = _f64_from_bits((np.int64(k) + 1023) << 52)
    return p * scale if d >= EXP_MIN else 0.0


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def head_rows_f32(z, zt, kth, mt, rank, ties, n_gt, n_eq, tsum, usum):
    """z: (P, V) float32 C-contiguous; zt, kth, mt: (P,) float32; outputs (P,): rank, ties, n_gt, n_eq int32,
    tsum, usum float64 (see the module docstring). The sums' order may differ by SIMD width (reassoc): sums of
    positive terms, so any order is within V * 2^-53 relative."""
    n, v = z.shape
    for i in prange(n):
        t = zt[i]
        c = kth[i]
        m = np.float64(mt[i])
        g = 0
        e = 0
        a = 0
        b = 0
        s = 0.0
        u = 0.0
        row = z[i]
        for j in range(v):
            x = row[j]
            g += x > t
            e += x == t
            a += x > c
            b += x == c
            d = np.float64(x) - m
            p = _exp_nonpos(d) if x < c else 0.0
            s += p
            u += p * d
        rank[i] = g
        ties[i] = e - 1
        n_gt[i] = a
        n_eq[i] = b
        tsum[i] = s
        usum[i] = u


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def head_rows_bow_f32(z, zt, kth, mt, bow, rank, ties, n_gt, n_eq, tsum, usum, bsum, nsum, b_eq):
    """`head_rows_f32` and, for the word-level arrays, with bow: (V,) uint8 (1 for space-initial ids):
    bsum = sum_{z_j < c, bow_j} exp(z_j - mt), nsum = the same over the other tail ids, b_eq = #{j : z_j == c,
    bow_j} (float64 / int32 outputs (P,)). The tail exps are the ones tsum adds up, so the extra cost is two
    multiply-adds and a compare per logit."""
    n, v = z.shape
    for i in prange(n):
        t = zt[i]
        c = kth[i]
        m = np.float64(mt[i])
        g = 0
        e = 0
        a = 0
        b = 0
        be = 0
        s = 0.0
        u = 0.0
        sb = 0.0
        sn = 0.0
        row = z[i]
        for j in range(v):
            x = row[j]
            w = bow[j]
            g += x > t
            e += x == t
            a += x > c
            b += x == c
            be += (x == c) & (w != 0)
            d = np.float64(x) - m
            p = _exp_nonpos(d) if x < c else 0.0
            s += p
            u += p * d
            q = p if w != 0 else 0.0
            sb += q
            sn += p - q
        rank[i] = g
        ties[i] = e - 1
        n_gt[i] = a
        n_eq[i] = b
        tsum[i] = s
        usum[i] = u
        bsum[i] = sb
        nsum[i] = sn
        b_eq[i] = be


def head_rows_bow(z: np.ndarray, zt: np.ndarray, kth: np.ndarray, mt: np.ndarray,
                  bow: np.ndarray) -> tuple[np.ndarray, ...]:
    """(rank, ties, n_gt, n_eq, tsum, usum, bsum, nsum, b_eq) of `head_rows_bow_f32`; bow: (V,) bool/uint8."""
    n = z.shape[0]
    out = ([np.empty(n, np.int32) for _ in range(4)] + [np.empty(n, np.float64) for _ in range(4)]
           + [np.empty(n, np.int32)])
    f32 = lambda x: np.ascontiguousarray(x, dtype=np.float32)  # noqa: E731
    mask = np.ascontiguousarray(bow).view(np.uint8) if np.asarray(bow).dtype == np.bool_ else \
        np.ascontiguousarray(bow, dtype=np.uint8)
    head_rows_bow_f32(f32(z), f32(zt), f32(kth), f32(mt), mask, *out)
    return tuple(out)


def head_rows(z: np.ndarray, zt: np.ndarray, kth: np.ndarray, mt: np.ndarray) -> tuple[np.ndarray, ...]:
    """(rank, ties, n_gt, n_eq, tsum, usum) of `head_rows_f32` for float32 logits z (P, V)."""
    n = z.shape[0]
    out = [np.empty(n, np.int32) for _ in range(4)] + [np.empty(n, np.float64) for _ in range(2)]
    f32 = lambda x: np.ascontiguousarray(x, dtype=np.float32)  # noqa: E731
    head_rows_f32(f32(z), f32(zt), f32(kth), f32(mt), *out)
    return tuple(out)
