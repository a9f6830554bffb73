"""The per-position math of pipeline.extraction.head against the brute-force NumPy reference."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.extraction.errors import NonFiniteLogitsError
from pipeline.extraction.head import head_chunk_size, score_hidden, score_logits
from pipeline.store.synthetic import arrays_from_logprobs


def _reference(logits: np.ndarray, targets: np.ndarray, k: int):
    z = logits.astype(np.float64)
    lp = z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(1, keepdims=True)
    return arrays_from_logprobs(lp, targets, k, "float32"), lp


def _check(out, ref, lp, k):
    np.testing.assert_allclose(out["target_logprob"], ref["target_logprob"], atol=2e-5)
    np.testing.assert_array_equal(out["target_rank"], ref["target_rank"])
    np.testing.assert_array_equal(out["target_ties"], ref["target_ties"])
    np.testing.assert_allclose(out["topk_logprobs"], ref["topk_logprobs"], atol=2e-5)
    # ids may differ in order only among equal values: check the value each id points at
    np.testing.assert_allclose(np.take_along_axis(lp, out["topk_ids"].astype(np.int64), 1),
                               ref["topk_logprobs"], atol=2e-5)
    np.testing.assert_allclose(out["entropy"], ref["entropy"], atol=2e-5, rtol=1e-5)
    if k == lp.shape[1]:
        assert np.all(np.isneginf(out["tail_logmass"]))
    else:
        np.testing.assert_allclose(out["tail_logmass"], ref["tail_logmass"], atol=1e-4, rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), v=st.integers(2, 60), k=st.integers(1, 60), grid=st.sampled_from([None, 0.5, 2.0]),
       scale=st.sampled_from([0.1, 3.0, 30.0]), seed=st.integers(0, 2**16))
def test_score_logits_matches_brute_force(n, v, k, grid, scale, seed):
    rng = np.random.default_rng(seed)
    k = min(k, v)
    z = (rng.standard_normal((n, v)) * scale).astype(np.float32)
    if grid:  # exact ties, the case float32 logits make common enough to matter
        z = (np.round(z / grid) * grid).astype(np.float32)
    t = rng.integers(0, v, n)
    ref, lp = _reference(z, t, k)
    out = {n_: x.numpy() for n_, x in score_logits(torch.from_numpy(z.copy()), torch.from_numpy(t), k).items()}
    _check(out, ref, lp, k)


def test_tail_is_exact_when_top_k_holds_almost_all_mass():
    # 1 - sum(top-K) would cancel to 0 in float32; the direct tail sum keeps it
    z = np.zeros((1, 100), np.float32)
    z[0, :3] = 40.0
    out = score_logits(torch.from_numpy(z.copy()), torch.tensor([50]), 3)
    ref, _ = _reference(z, np.array([50]), 3)
    assert np.isfinite(out["tail_logmass"].item())
    np.testing.assert_allclose(out["tail_logmass"].numpy(), ref["tail_logmass"], rtol=1e-5)


def test_score_hidden_is_chunking_invariant_and_matches_a_float64_head():
    rng = np.random.default_rng(1)
    h = torch.from_numpy(rng.standard_normal((37, 16)).astype(np.float32))
    w = torch.from_numpy(rng.standard_normal((300, 16)).astype(np.float32))
    b = torch.from_numpy(rng.standard_normal(300).astype(np.float32))
    t = torch.from_numpy(rng.integers(0, 300, 37))
    outs = [score_hidden(h, w, b, t, 20, chunk=c) for c in (1, 7, 37, 1000)]
    # BLAS may sum a row differently when the chunk height changes: equal to float32 rounding, not bitwise
    for o in outs[1:]:
        for name in o:
            if o[name].dtype.kind == "f":
                np.testing.assert_allclose(o[name], outs[0][name], atol=1e-5, rtol=1e-6, err_msg=name)
            else:
                np.testing.assert_array_equal(o[name], outs[0][name], err_msg=name)
    np.testing.assert_array_equal(score_hidden(h, w, b, t, 20, chunk=7)["topk_logprobs"], outs[1]["topk_logprobs"])
    ref, lp = _reference((h.double() @ w.double().T + b.double()).numpy(), t.numpy(), 20)
    _check(outs[0], ref, lp, 20)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_logits_raise_a_typed_error_naming_the_position(bad):
    z = np.zeros((4, 10), np.float32)
    z[2, 5] = bad
    with pytest.raises(NonFiniteLogitsError, match="position 2"):
        score_logits(torch.from_numpy(z), torch.zeros(4, dtype=torch.long), 3, where="(test)")


def test_head_chunk_fits_the_memory_budget():
    # a 152k vocabulary at 512 MB: two float32 (P, V) tensors must fit
    p = head_chunk_size(152_064, 512)
    assert 2 * 4 * 152_064 * p <= 512 * 2**20 and p >= 64
    assert head_chunk_size(10, 512) == 4096
