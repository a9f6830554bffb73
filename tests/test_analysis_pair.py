"""The analysis API on real stores: alignment, chunking, truncated views, held-out weights, typed errors,
and that `analysis` never imports torch or transformers."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import reference as ref

from analysis import (
    DegenerateObjectiveError,
    HeldoutMismatchError,
    MemoryStore,
    NonFiniteStoreError,
    Pair,
    TargetMismatchError,
    WeightError,
    open_store,
)
from analysis.metrics import sweep_frame
from pipeline.store import IncompatiblePairError, IncompleteStoreError, StoreError, StoreWriter
from pipeline.store.synthetic import random_distributions, synthetic_attrs, write_store_from_logprobs

GRID = np.linspace(0, 1, 21)


def _write_family(root, seed=0, n=300, vocab=20, k=6, split="test", chunk_size=64, dtype="float16",
                  dataset="synthetic", tokenizer="synthetic-vocab", context_length=1024):
    """Three models (big, mid, small) of one token stream; returns their paths."""
    rng = np.random.default_rng(seed)
    targets, lps = random_distributions(n, vocab, rng, n_models=3, noise=(0.6, 1.0, 1.6))
    n_chars = np.random.default_rng(seed + 7).integers(1, 6, n)
    paths = []
    for lp, name, params in zip(lps, ("big", "mid", "small"), (10**9, 10**8, 10**7)):
        p = root / dataset / split / f"{name}.zarr"
        write_store_from_logprobs(p, lp, targets, k, dtype, model=name, n_params=params, n_chars=n_chars,
                                  chunk_size=chunk_size, dataset=dataset, split=split, tokenizer=tokenizer,
                                  context_length=context_length if name != "small" else 512)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    test = _write_family(root, seed=0, split="test")
    valid = _write_family(root, seed=1, split="validation")
    return root, test, valid


def test_pair_orders_by_size_and_flags_protocol_differences(family):
    _, (big, mid, small), _ = family
    pair = Pair(small, big)
    assert pair.names == ("big", "small")
    assert "protocol.context_length" in pair.alignment.flags
    assert Pair(small, big, order="given").names == ("small", "big")


def test_store_chunking_gives_identical_results(family, tmp_path):
    _, (big, mid, _), _ = family
    rechunked = []
    for p, name in ((big, "big"), (mid, "mid")):
        s = open_store(p)
        arr = s.read(list(ref.NAMES_ALL))
        q = tmp_path / f"{name}.zarr"
        w = StoreWriter(q, n_positions=s.n, top_k=s.k, n_classes=s.n_classes, logprob_dtype=s.logprob_dtype,
                        attrs={k: s.attrs[k] for k in ("model", "tokenizer", "dataset", "protocol")},
                        setting_hash="x", chunk_size=37)
        with w:
            for lo in range(0, s.n, 50):  # odd write pieces too
                w.write(lo, **{k: v[lo:lo + 50] for k, v in arr.items()})
        w.close()
        rechunked.append(q)
    f1 = Pair(big, mid).sweep(GRID)
    f2 = Pair(*rechunked).sweep(GRID)
    assert f1.equals(f2)
    assert Pair(big, mid).optimum().w_nll == Pair(*rechunked).optimum().w_nll


def test_optimum_and_partitions_on_stores(family):
    _, (big, _, small), _ = family
    pair = Pair(big, small)
    opt = pair.optimum()
    assert 0.0 <= opt.w_d_nll <= opt.w_nll <= 1.0
    assert opt.alpha_nll == pytest.approx(opt.w_nll / (1 - opt.w_nll)) if opt.w_nll < 1 else opt.alpha_nll == np.inf
    assert opt.at_nll["ppl"] <= min(opt.primary["ppl"], opt.secondary["ppl"]) * (1 + 1e-12)
    assert opt.improvement["ppl"] == pytest.approx(
        (min(opt.primary["ppl"], opt.secondary["ppl"]) - opt.at_nll["ppl"])
        / min(opt.primary["ppl"], opt.secondary["ppl"]) * 100)
    parts = pair.partitions()
    assert sum(parts.counts.values()) == open_store(big).n
    assert parts.positions.height == parts.T + parts.F


def test_heldout_uses_the_validation_weights(family):
    _, (big, _, small), (vbig, vmid, vsmall) = family
    pair, valid = Pair(big, small), Pair(vbig, vsmall)
    h = pair.heldout(valid)
    assert h.w_nll == valid.optimum().w_nll
    assert h.at_nll["nll"] == pair.at(valid.optimum().w_nll)["nll"]
    assert h.at_nll["nll"] >= h.in_sample.at_nll["nll"] * (1 - 1e-12)  # in-sample is optimal
    with pytest.raises(HeldoutMismatchError, match="mid"):
        pair.heldout(Pair(vbig, vmid))


def test_truncated_view_bounds_nest(family):
    _, (big, _, small), _ = family
    a, b = open_store(big), open_store(small)
    full = Pair(a, b).sweep(GRID)
    cut = Pair(a.truncated(2), b.truncated(3)).sweep(GRID)
    assert (cut["n_right_lo"].to_numpy() <= full["n_right_lo"].to_numpy()).all()
    assert (cut["n_right_hi"].to_numpy() >= full["n_right_hi"].to_numpy()).all()
    assert (cut["n_undetermined"].to_numpy() >= full["n_undetermined"].to_numpy()).all()


def test_incompatible_pair_is_refused(family, tmp_path):
    _, (big, _, _), _ = family
    other = _write_family(tmp_path, seed=5, tokenizer="other-vocab")[1]
    with pytest.raises(IncompatiblePairError, match="tokenizer"):
        Pair(big, other)


def test_incomplete_store_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    targets, (lp, _) = random_distributions(100, 8, rng)
    arr = ref.arrays_from_logprobs(lp, targets, 3, "float16")
    w = StoreWriter(tmp_path / "p.zarr", n_positions=100, top_k=3, n_classes=8, logprob_dtype="float16",
                    attrs=synthetic_attrs("m"), setting_hash="x", chunk_size=16)
    w.write(0, **{k: v[:40] for k, v in arr.items()})
    w.abort()
    with pytest.raises(IncompleteStoreError, match="incomplete"):
        open_store(tmp_path / "p.zarr")


def test_nan_in_a_store_is_a_typed_error():
    sa, sb, *_ = ref.memory_pair(2, n=50)
    arr = dict(sb.arrays)
    lp = arr["topk_logprobs"].copy()
    lp[17, 1] = np.nan
    arr["topk_logprobs"] = lp
    bad = MemoryStore(arr, n_classes=sb.n_classes, attrs=sb.attrs)
    with pytest.raises(NonFiniteStoreError, match="position 17") as e:
        _ = Pair(sa, bad).data
    assert isinstance(e.value, StoreError)
    arr = dict(sa.arrays)
    arr["target_logprob"] = arr["target_logprob"].copy()
    arr["target_logprob"][3] = np.nan
    with pytest.raises(NonFiniteStoreError, match="target_logprob is NaN at position 3"):
        _ = Pair(MemoryStore(arr, n_classes=sa.n_classes, attrs=sa.attrs), sb).data


def test_target_mismatch_is_a_typed_error():
    sa, sb, *_ = ref.memory_pair(2, n=50)
    arr = dict(sb.arrays)
    arr["targets"] = arr["targets"].copy()
    arr["targets"][9] = (arr["targets"][9] + 1) % sb.n_classes
    with pytest.raises(TargetMismatchError, match="position 9"):
        _ = Pair(sa, MemoryStore(arr, n_classes=sb.n_classes, attrs=sb.attrs)).data


@pytest.mark.parametrize("weights, match", [([], "non-empty"), ([0.5, 1.2], "1.2"), ([-0.1], "-0.1"),
                                            ([np.nan], "nan")])
def test_bad_weights_are_typed_errors(weights, match):
    sa, sb, *_ = ref.memory_pair(2, n=20)
    with pytest.raises(WeightError, match=match):
        Pair(sa, sb).sweep(weights)


def test_bad_betas_and_ambiguous_arguments():
    sa, sb, *_ = ref.memory_pair(2, n=20)
    pair = Pair(sa, sb)
    with pytest.raises(WeightError, match="-1"):
        pair.sweep(betas=[1.0, -1.0])
    with pytest.raises(WeightError, match="exactly one"):
        pair.sweep()


def test_probability_zero_under_both_models_is_degenerate():
    lp = np.log(np.array([[0.5, 0.5, 0.0], [0.6, 0.4, 0.0]]))
    arrs = [ref.arrays_from_logprobs(lp[m:m + 1], np.array([2]), 2, "float32") for m in (0, 1)]
    pair = Pair(MemoryStore(arrs[0], n_classes=3), MemoryStore(arrs[1], n_classes=3), order="given")
    assert np.isinf(sweep_frame(pair.data, [0.5])["nll"][0])
    with pytest.raises(DegenerateObjectiveError, match="position 0"):
        pair.optimum()


def test_analysis_never_imports_torch_or_transformers():
    code = ("import sys; sys.path.insert(0, '.'); import analysis, analysis.sweep, analysis.table; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ref._ROOT)
