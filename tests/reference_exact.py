"""Exact truth of the fusion from full distributions, for the certified-bounds campaign (DESIGN.md section 3).

Shares no code with `analysis`: a store stands for the reals exp(x) of its float32 log-probs x (the
distribution the model computed; float16 lists are roundings of those x). Every quantity here is a sign or a
value of a linear combination of such reals with rational (dyadic) coefficients:

    D_j(w) = w (exp(xA_t) - exp(xA_j)) + (1 - w) (exp(xB_t) - exp(xB_j)),

t strictly right at w iff D_j(w) > 0 for every class j != t. Signs are decided exactly: terms with equal
exponents are merged with `fractions.Fraction` coefficients (w is a float, hence a dyadic rational); if
every merged coefficient is 0 the combination is exactly 0. Otherwise it is not 0 (Lindemann-Weierstrass:
exponentials of distinct rationals are linearly independent over the algebraic numbers), and mpmath
evaluates it at a precision raised until the value exceeds its error bound, so the sign is certain. Values
(exchange thresholds, interval ends) are computed at PREC bits, far beyond float64.
"""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import numpy as np

PREC = 200  # bits for values; signs escalate from here


class Model:
    """One model's exact distribution at one position: float32 log-probs (n_vocab,), -inf = probability 0."""

    def __init__(self, x32: np.ndarray):
        self.x = np.asarray(x32, dtype=np.float32)
        self._cache: dict[int, dict[float, mpmath.mpf]] = {}

    def p(self, j: int, prec: int) -> mpmath.mpf:
        c = self._cache.setdefault(prec, {})
        x = float(self.x[j])
        if x not in c:
            with mpmath.workprec(prec):
                c[x] = mpmath.mpf(0) if x == -math.inf else mpmath.exp(mpmath.mpf(x))
        return c[x]


def _merged(terms: list[tuple[Fraction, float]]) -> dict[float, Fraction]:
    """Coefficients per exponent of sum c exp(x), zero coefficients and exp(-inf) = 0 dropped."""
    out: dict[float, Fraction] = {}
    for c, x in terms:
        if x != -math.inf and c != 0:
            out[x] = out.get(x, Fraction(0)) + c
    return {x: c for x, c in out.items() if c != 0}


def sign(terms: list[tuple[Fraction, float]]) -> int:
    """Exact sign of sum c exp(x) over (Fraction c, float x) terms."""
    merged = _merged(terms)
    if not merged:
        return 0
    prec = PREC
    while True:
        with mpmath.workprec(prec + 20):
            vals = [mpmath.mpf(c.numerator) / c.denominator * mpmath.exp(mpmath.mpf(x)) for x, c in merged.items()]
            total = mpmath.fsum(vals)
            bound = mpmath.fsum(abs(v) for v in vals) * mpmath.mpf(2) ** (-prec)
            if abs(total) > bound:
                return 1 if total > 0 else -1
        prec *= 2
        if prec > 1 << 16:
            raise AssertionError(f"sign undecided at {prec} bits: {merged}")


def d_terms(A: Model, B: Model, t: int, j: int, w: float) -> list[tuple[Fraction, float]]:
    """The terms of D_j(w) (module docstring)."""
    wf = Fraction(w)
    v = 1 - wf
    return [(wf, float(A.x[t])), (-wf, float(A.x[j])), (v, float(B.x[t])), (-v, float(B.x[j]))]


def right(A: Model, B: Model, t: int, w: float) -> bool:
    """Is the fusion strictly right at w (w in [0, 1]; at 0 and 1 the single model, from its float32 values)?"""
    n = len(A.x)
    return all(sign(d_terms(A, B, t, j, w)) > 0 for j in range(n) if j != t)


def count_at_least(A: Model, B: Model, t: int, w: float) -> int:
    """c = #{j != t : f_w(j) >= f_w(t)} (RBP: t inside the top k iff c < k)."""
    return sum(sign(d_terms(A, B, t, j, w)) <= 0 for j in range(len(A.x)) if j != t)


def right_interval(A: Model, B: Model, t: int) -> tuple[mpmath.mpf, mpmath.mpf] | None:
    """The exact set of w in (0, 1) where t is strictly right, an open interval (lo, hi) at PREC bits, or
    None when empty. Each j gives D_j(w) = w alpha + (1 - w) beta > 0 with exact signs of alpha, beta."""
    lo, hi = mpmath.mpf(0), mpmath.mpf(1)
    with mpmath.workprec(PREC):
        for j in range(len(A.x)):
            if j == t:
                continue
            sa = sign([(Fraction(1), float(A.x[t])), (Fraction(-1), float(A.x[j]))])
            sb = sign([(Fraction(1), float(B.x[t])), (Fraction(-1), float(B.x[j]))])
            if sa <= 0 and sb <= 0:
                return None
            if sa > 0 and sb > 0:
                continue
            alpha = A.p(t, PREC) - A.p(j, PREC)
            beta = B.p(t, PREC) - B.p(j, PREC)
            x = beta / (beta - alpha)  # the signs differ (or one is 0): no division by 0
            if sa > 0:  # beta <= 0: w > x
                lo = max(lo, x)
            else:  # alpha <= 0 < beta: w < x
                hi = min(hi, x)
        return (lo, hi) if lo < hi else None


def best_other(x: np.ndarray, t: int) -> int:
    """The most probable class other than t, lowest id among ties (the order of a store's list)."""
    y = np.asarray(x, dtype=np.float64).copy()
    y[t] = -np.inf
    return int(np.argmax(y))


def exchange_threshold(A: Model, B: Model, t: int, partition: str, a_ties: bool):
    """ET (tau = (1 - w) / w) at PREC bits: T: i = A's best other, (qA(i) - a) / (b - qB(i)), 0 when A ties;
    F: j = B's best other, (a - qA(j)) / (qB(j) - b); +inf when the denominator is <= 0."""
    if partition == "T":
        if a_ties:
            return mpmath.mpf(0)
        i = best_other(A.x, t)
        den_sign = sign([(Fraction(1), float(B.x[t])), (Fraction(-1), float(B.x[i]))])
        if den_sign <= 0:
            return mpmath.inf
        with mpmath.workprec(PREC):
            num = max(A.p(i, PREC) - A.p(t, PREC), mpmath.mpf(0))
            return num / (B.p(t, PREC) - B.p(i, PREC))
    j = best_other(B.x, t)
    den_sign = sign([(Fraction(1), float(B.x[j])), (Fraction(-1), float(B.x[t]))])
    if den_sign <= 0:
        return mpmath.inf
    with mpmath.workprec(PREC):
        num = max(A.p(t, PREC) - A.p(j, PREC), mpmath.mpf(0))
        return num / (B.p(j, PREC) - B.p(t, PREC))


def single_right(x: np.ndarray, t: int) -> bool:
    """A single model is strictly right: its float32 value of t above every other's."""
    y = np.asarray(x, dtype=np.float64)
    return bool(np.all(np.delete(y, t) < y[t]))
