"""Similarity-based variant (appendix B.3): bounds against loops and against the full distributions."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
import reference_law as rl

from analysis import Pair
from analysis.similarity import (
    SimilarityError,
    load_embedding,
    similarity_at,
    similarity_optimum,
    similarity_sweep,
    similarity_terms,
)


@pytest.mark.parametrize("seed,dtype,k", [(0, "float16", 4), (1, "float32", 12), (2, "float16", 6)])
def test_similarity_bounds_match_loops_and_contain_truth(seed, dtype, k):
    sa, sb, lp_a, lp_b, targets = ref.memory_pair(seed, n=200, vocab=12, k=k, logprob_dtype=dtype)
    emb = np.random.default_rng(seed).standard_normal((12, 5)) + (0.8 if seed else 0.0)
    terms = similarity_terms(sa, sb, emb)
    for p in (0.0, 0.5, 2.0, 6.0):
        got = similarity_at(terms, p)
        want = rl.similarity_bounds(sa.arrays, sb.arrays, emb, 12, p)
        np.testing.assert_allclose(got["nll_lo"], want[0], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got["nll_hi"], want[1], rtol=1e-9, atol=1e-12)
        assert np.array_equal(got["right_lo"], want[2]) and np.array_equal(got["right_hi"], want[3])
        nll, right = rl.similarity_truth(lp_a, lp_b, targets, emb, p)
        fin = np.isfinite(nll)
        tol = 1e-6  # float32 stored values count as exact (DESIGN.md); the truth is float64
        assert np.all(got["nll_lo"][fin] <= nll[fin] + tol) and np.all(nll[fin] <= got["nll_hi"][fin] + tol)
        assert np.all(right[got["right_lo"]]) and np.all(got["right_hi"][right])


def test_similarity_sweep_and_optimum():
    sa, sb, *_ = ref.memory_pair(4, n=300, vocab=12, k=12, logprob_dtype="float32")
    emb = np.random.default_rng(4).standard_normal((12, 5)) + 1.0
    sw = similarity_sweep(Pair(sa, sb, order="given"), emb, ps=[0.0, 0.5, 1.0, 4.0])
    assert sw.height == 4 and bool((sw["nll_lo"] <= sw["nll_hi"] + 1e-12).all())
    # K = vocab and float32: p = 0 is A alone, exactly.
    assert sw["acc_lo"][0] == pytest.approx(ref.single_right(sa.arrays).mean())
    assert sw["acc_lo"][0] == sw["acc_hi"][0]
    opt = similarity_optimum(sw)
    assert opt["acc_lo"] == sw["acc_lo"].max() and opt["nll_hi"] == sw["nll_hi"].min()
    with pytest.raises(SimilarityError, match="embedding"):
        load_embedding(sa)
    with pytest.raises(SimilarityError, match="-1"):
        similarity_at(similarity_terms(sa, sb, emb), -1.0)


def test_embedding_table_of_a_real_store(tmp_path):
    from pipeline.store import StoreWriter, open_store
    from pipeline.store.synthetic import arrays_from_logprobs, synthetic_attrs

    _, _, lp_a, _, targets = ref.make_pair(0, n=50, vocab=12, k=4)
    emb = np.random.default_rng(0).standard_normal((12, 5)).astype(np.float32)
    attrs = synthetic_attrs("A")
    w = StoreWriter(tmp_path / "a.zarr", n_positions=50, top_k=4, n_classes=12, logprob_dtype="float16",
                    attrs=attrs, setting_hash="x")
    with w:
        w.write(0, **arrays_from_logprobs(lp_a, targets, 4, "float16"))
        w.write_table("embedding", emb)
    w.close()
    assert np.array_equal(load_embedding(open_store(tmp_path / "a.zarr")), emb)
