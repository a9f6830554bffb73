"""Stored float32 reductions of the LM head are correctly rounded (DESIGN section 3, "What exact and certified
rest on"; issue 11): target_logprob, topk_logprobs (before the float16 cast), tail_logmass and entropy are within
half an ulp of float32 of the exact value for the same float32 logits.

The reference shares no code with `pipeline.extraction.head`: 80-bit long double (numpy's longdouble on x86; on
platforms where it is float64 the reference is still ~1e-15 relative) exps of z - max, summed by numpy, logs taken
in long double. Slack beyond the half ulp: the stored value is a float64 result before its one rounding, and a
float64 sum of at most V positive terms is within V * 2^-53 relative (Higham's gamma_n), the logs, exps and the
final subtraction add a few ulps; 4 V * 2^-53 relative covers both (0.1% of a float32 half ulp at V = 151,936).
Review case: float32 reductions missed the half ulp at 133 of 512 positions (V = 50,257, K = 64).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.extraction import head
from pipeline.extraction.head import score_logits

LD = np.longdouble


def _reference(z: np.ndarray, t: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Exact (long double) values for float32 logits z (P, V), targets t and the stored top-K ids (P, K)."""
    out = {n: np.empty(z.shape[0], LD) for n in ("target_logprob", "tail_logmass", "entropy")}
    out["topk_logprobs"] = np.empty(ids.shape, LD)
    for i, row in enumerate(z):
        x = row.astype(LD)
        j0 = int(np.argmax(x))
        d = x - x[j0]
        e = np.exp(d)
        rest = np.ones(x.size, bool)
        rest[j0] = False
        r = e[rest].sum()  # s - 1 without cancellation (near-certain rows: r ~ 1e-20)
        log_s = np.log1p(r)
        out["target_logprob"][i] = d[t[i]] - log_s
        out["topk_logprobs"][i] = d[ids[i]] - log_s
        tail = np.ones(x.size, bool)
        tail[ids[i]] = False
        out["tail_logmass"][i] = np.log(e[tail].sum()) - log_s if tail.any() else -np.inf
        out["entropy"][i] = log_s - (e * d).sum() / (1 + r)
    return out


def _check(stored: np.ndarray, exact: np.ndarray, n_classes: int, name: str) -> None:
    stored = stored.astype(LD)
    half_ulp = np.spacing(np.abs(exact.astype(np.float32))).astype(LD) / 2
    slack = np.abs(exact) * LD(4 * n_classes * 2.0**-53)
    finite = np.isfinite(exact)
    assert np.array_equal(np.isfinite(stored), finite), name
    err = np.abs(stored[finite] - exact[finite])
    bound = half_ulp[finite] + slack[finite]
    worst = int(np.argmax(err / bound))
    assert np.all(err <= bound), (f"{name}: {int((err > bound).sum())} of {err.size} values beyond half an ulp; "
                                  f"worst {float(err[worst]):.3e} > {float(bound[worst]):.3e} at {float(exact[finite][worst])!r}")


def _lm_like(rng, n: int, v: int) -> np.ndarray:
    z = (rng.standard_normal((n, v)) * 3).astype(np.float32)
    for i in range(n):  # a few large logits per row, some rows near-certain
        z[i, rng.integers(0, v, 3)] += rng.uniform(5, 30, 3).astype(np.float32)
    return z


def _adversarial(rng, n: int, v: int, k: int) -> np.ndarray:
    z = _lm_like(rng, n, v)
    q = n // 6
    z[:q] = np.round(z[:q] / 0.5) * 0.5  # many equal logits, ties across the top-K boundary
    z[q:2 * q, :] = 1.0  # all equal: one tie class
    z[q:2 * q, : k // 2] = 2.0
    rows = np.arange(2 * q, 3 * q)
    z[rows, rng.integers(0, v, q)] = 100.0  # one dominant logit: r ~ V e^-100, target log-prob ~ -1e-40
    rows = np.arange(3 * q, 4 * q)
    z[rows, rng.integers(0, v, q)] = 45.0  # dominant: r ~ 1e-15 (1 + r rounds to 1 in float32 and nearly in float64)
    z[4 * q:5 * q] = -1000.0  # tails that underflow: every term below the top K is e^-1000 of the max
    z[4 * q:5 * q, :k] = rng.uniform(-1, 0, (q, k)).astype(np.float32)
    z[5 * q:] -= 95.0  # every logit far below 0: exp of them underflows in float32 (not relative to the max)
    z[5 * q:, rng.integers(0, v, n - 5 * q)] = -88.0
    return z.astype(np.float32)


def _targets(rng, z: np.ndarray, k: int) -> np.ndarray:
    n, v = z.shape
    t = rng.integers(0, v, n)
    t[::3] = z[::3].argmax(1)  # the argmax (near-certain rows: target log-prob ~ -r)
    order = np.argsort(-z[1::3], axis=1, kind="stable")
    t[1::3] = order[np.arange(order.shape[0]), rng.integers(0, k, order.shape[0])]  # inside the top K
    return t


CASES = [(50_257, 64, 96, "lm"), (50_257, 64, 96, "adversarial"), (50_257, 1, 24, "adversarial"),
         (151_936, 64, 24, "lm"), (151_936, 64, 24, "adversarial")]


@pytest.fixture(params=["fused CPU kernel", "torch reductions (the CUDA path)"])
def path(request, monkeypatch):
    if request.param.startswith("torch"):
        monkeypatch.setattr(head, "_row_sums_cpu", head._row_sums_torch)
    return request.param


@pytest.mark.parametrize("v,k,n,kind", CASES)
def test_stored_reductions_are_correctly_rounded(v, k, n, kind, path):
    rng = np.random.default_rng(v + k + n + len(kind))
    z = _lm_like(rng, n, v) if kind == "lm" else _adversarial(rng, n, v, k)
    t = _targets(rng, z, k)
    out = {name: x.numpy() for name, x in score_logits(torch.from_numpy(z), torch.from_numpy(t), k).items()}
    # ids: the K largest logits, most probable first (any order among equal values)
    top = np.take_along_axis(z, out["topk_ids"].astype(np.int64), 1)
    assert np.all(np.diff(top, axis=1) <= 0)
    assert np.all(top[:, -1] >= np.sort(z, 1)[:, -k])
    assert np.array_equal(out["target_rank"], (z > z[np.arange(n), t][:, None]).sum(1))
    assert np.array_equal(out["target_ties"], (z == z[np.arange(n), t][:, None]).sum(1) - 1)
    ref = _reference(z, t, out["topk_ids"].astype(np.int64))
    for name in ("target_logprob", "topk_logprobs", "tail_logmass", "entropy"):
        assert out[name].dtype == np.float32
        _check(out[name], ref[name], v, name)


def test_float32_reductions_would_fail_the_same_check():
    # the check has teeth: the old float32 logsumexp (exp, sum and log in float32) misses the half ulp
    rng = np.random.default_rng(5)
    z = _lm_like(rng, 64, 50_257)
    t = _targets(rng, z, 64)
    zt = torch.from_numpy(z)
    m = zt.max(1, keepdim=True).values
    lse = (m + torch.log(torch.exp(zt - m).sum(1, keepdim=True))).squeeze(1)
    old = (zt[torch.arange(64), torch.from_numpy(t)] - lse).numpy()
    ids = np.argsort(-z, 1)[:, :64]
    with pytest.raises(AssertionError, match="beyond half an ulp"):
        _check(old, _reference(z, t, ids)["target_logprob"], 50_257, "target_logprob")


def test_tail_is_finite_and_exact_far_below_float32_underflow():
    # the top K hold all but e^-1000 of the mass: float32 exps of the tail are 0, the stored tail is exact
    z = np.full((2, 5000), -1000.0, np.float32)
    z[:, :8] = 0.0
    z[1, 8] = -999.5  # the tail's maximum is not the K-th value
    out = score_logits(torch.from_numpy(z), torch.tensor([0, 4000]), 8)
    ref = _reference(z, np.array([0, 4000]), out["topk_ids"].numpy().astype(np.int64))
    for name in ("tail_logmass", "target_logprob", "entropy"):
        _check(out[name].numpy(), ref[name], 5000, name)
    assert out["tail_logmass"][0] == pytest.approx(-1000 + np.log(4992 / 8), rel=1e-7)
