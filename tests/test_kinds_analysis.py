"""Analysis of classification and masked stores (DESIGN section 8, the paper's appendix C): Pair, sweep, optima,
partitions, held-out weights and bootstrap work unchanged on stores without text (BPC / BPB null), pairs of
different kinds, label sets or masks are refused in words, and the sweep CLI writes Tables 3 / 4."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import reference as ref

from analysis import Pair, bootstrap
from analysis.bootstrap import BootstrapError, choose_units
from analysis.curves import relative_improvement_curve
from analysis.front.appendix_c import appendix_texts, classification_table, masked_table
from analysis.sweep import AnalyzeSettings, run
from pipeline.store import IncompatiblePairError, open_store
from pipeline.store.synthetic import random_distributions, write_store_from_logprobs

GRID = np.concatenate([np.linspace(0.0, 1.0, 41), [0.013, 0.5071, 0.9973]])
NAMES = (("big", 10**8), ("mid", 10**7), ("small", 10**6))


def _classifiers(root, *, dataset="cifar10", split="test", n=300, n_classes=10, k=10, dtype="float32", seed=0,
                 labels=None, names=NAMES):
    """Classifiers of one dataset split: one position per example (doc_id = example index), targets = labels,
    the "tokenizer" the label set. Returns (paths, targets, full log-probs per model)."""
    rng = np.random.default_rng(seed)
    targets, lps = random_distributions(n, n_classes, rng, n_models=len(names), noise=(0.6, 1.0, 1.6))
    paths = []
    for lp, (name, params) in zip(lps, names):
        p = root / dataset / split / f"{name}.zarr"
        write_store_from_logprobs(p, lp, targets, k, dtype, model=name, n_params=params, doc_id=np.arange(n),
                                  kind="classification", dataset=dataset, split=split,
                                  tokenizer=labels or f"{dataset}-labels", chunk_size=128)
        paths.append(p)
    return paths, targets, lps


def _mask(n_seq: int, seed: int, rate: float = 0.15):
    """(doc_id, token_index) of the masked residues of n_seq sequences (lengths 20..60, 15% masked, at least 1)."""
    rng = np.random.default_rng(seed)
    doc, idx = [], []
    for s in range(n_seq):
        length = int(rng.integers(20, 61))
        chosen = np.sort(rng.choice(length, max(1, int(round(rate * length))), replace=False))
        doc += [s] * len(chosen)
        idx += chosen.tolist()
    return np.array(doc), np.array(idx)


def _masked(root, *, dataset="uniref50", split="test", n_seq=40, vocab=33, k=33, dtype="float32", seed=0,
            mask_seed=0, names=NAMES):
    """Masked models of one masking: one position per masked residue (doc_id = sequence, token_index)."""
    doc, idx = _mask(n_seq, mask_seed)
    rng = np.random.default_rng(seed)
    targets, lps = random_distributions(len(doc), vocab, rng, n_models=len(names), noise=(0.6, 1.0, 1.6))
    paths = []
    for lp, (name, params) in zip(lps, names):
        p = root / dataset / split / f"{name}.zarr"
        write_store_from_logprobs(p, lp, targets, k, dtype, model=name, n_params=params, doc_id=doc,
                                  kind="masked", extra={"token_index": idx}, dataset=dataset, split=split,
                                  tokenizer="esm2-vocab", chunk_size=128)
        paths.append(p)
    return paths, targets, lps


def _arrays(path):
    s = open_store(path)
    return s.read([n for n in ref.NAMES_ALL if s.has(n)])


def _check_against_reference(pa, pb, lp_a, lp_b, targets, exact: bool):
    """Sweep, optima and partitions of Pair(pa, pb) (A = pa) against the brute-force reference."""
    pair = Pair(pa, pb, order="given")
    arr_a, arr_b = _arrays(pa), _arrays(pb)
    nc = lp_a.shape[1]
    frame = pair.sweep(GRID)
    # NLL: exact (float64 sums of the float32 target log-probs); PPL = exp(mean NLL)
    want = ref.nll_sums(arr_a, arr_b, GRID)
    np.testing.assert_allclose(frame["nll_sum"].to_numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(frame["ppl"].to_numpy(), np.exp(want / len(targets)), rtol=1e-12)
    # BPC / BPB: null, not 0 or NaN
    assert frame["bpc"].null_count() == frame.height and frame["bpb"].null_count() == frame.height
    assert pair.data.n_chars is None and not pair.data.has_text
    # ACC: the certified counts are the brute-force ones; they contain the truth, and are the truth when exact
    lo, hi = ref.certified_right(arr_a, arr_b, nc, nc, GRID)
    assert (frame["n_right_lo"].to_numpy() == lo.sum(axis=0)).all()
    assert (frame["n_right_hi"].to_numpy() == hi.sum(axis=0)).all()
    truth = ref.truth_right(lp_a, lp_b, targets, GRID, arr_a, arr_b).sum(axis=0)
    assert (frame["n_right_lo"].to_numpy() <= truth).all() and (truth <= frame["n_right_hi"].to_numpy()).all()
    if exact:
        assert (frame["n_undetermined"].to_numpy() == 0).all()
        assert (frame["n_right_lo"].to_numpy() == truth).all()
    # optima
    opt = pair.optimum()
    assert opt.w_nll == pytest.approx(ref.nll_optimum(arr_a, arr_b), abs=1e-9)
    assert opt.acc_detail.n_right_lo == ref.acc_lo_max(arr_a, arr_b, nc, nc)
    assert opt.at_acc["n_right_lo"] == opt.acc_detail.n_right_lo  # the value at the returned w is the optimum
    assert opt.at_nll["nll"] <= frame["nll"].min() * (1 + 1e-12)  # no worse than any grid point
    assert opt.at_nll["bpc"] is None and opt.improvement["bpc"] is None and opt.improvement["bpb"] is None
    best = min(opt.primary["ppl"], opt.secondary["ppl"])
    assert opt.improvement["ppl"] == pytest.approx((best - opt.at_nll["ppl"]) / best * 100)
    # partitions and exchange thresholds
    parts = pair.partitions()
    codes = np.bincount(ref.partition_codes(arr_a, arr_b), minlength=4)
    assert parts.counts == {"Nww": codes[0], "T": codes[1], "F": codes[2], "Nrr": codes[3]}
    et = ref.exchange_thresholds(arr_a, arr_b, lp_a, lp_b)
    pos = parts.positions["position"].to_numpy()
    want_et = et[pos]
    lo_et, hi_et = parts.positions["et_lo"].to_numpy(), parts.positions["et_hi"].to_numpy()
    fin = np.isfinite(want_et)
    assert (lo_et[fin] <= want_et[fin] * (1 + 1e-6)).all() and (want_et[fin] * (1 - 1e-6) <= hi_et[fin]).all()
    assert np.isinf(hi_et[~fin]).all()
    return pair


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    return {
        "cls": _classifiers(root, seed=0),
        "cls_valid": _classifiers(root, split="validation", seed=1, names=NAMES[::2]),
        "cls_k3": _classifiers(root / "k3", n_classes=10, k=3, dtype="float16", seed=2, n=250, names=NAMES[::2]),
        "masked": _masked(root, seed=3, names=NAMES[:2]),
        "masked16": _masked(root / "m16", k=5, dtype="float16", seed=4, names=NAMES[:2]),
        "root": root,
    }


def test_classification_k_equals_classes_is_exact(stores):
    (big, mid, small), targets, lps = stores["cls"]
    _check_against_reference(big, small, lps[0], lps[2], targets, exact=True)
    assert open_store(big).kind == "classification"


def test_classification_k_below_classes_is_certified(stores):
    (big, small), targets, lps = stores["cls_k3"]
    _check_against_reference(big, small, lps[0], lps[1], targets, exact=False)


@pytest.mark.parametrize("which, exact", [("masked", True), ("masked16", False)])
def test_masked_matches_reference(stores, which, exact):
    (big, mid), targets, lps = stores[which]
    _check_against_reference(big, mid, lps[0], lps[1], targets, exact=exact)


def test_bootstrap_units_are_examples_and_sequences(stores):
    big, _, small = stores["cls"][0]
    frame = bootstrap(Pair(big, small), n_resamples=50, seed=0)
    assert set(frame["ci_unit"]) == {"example"} and set(frame["ci_n_units"]) == {300}
    assert not {"dbpc", "dbpb"} & set(frame["statistic"])  # no text: no BPC / BPB rows
    assert {"dppl", "dacc_lo", "alpha_nll", "alpha_acc"} <= set(frame["statistic"])
    mbig, mmid = stores["masked"][0]
    frame = bootstrap(Pair(mbig, mmid), n_resamples=50, seed=0, kfold=5)
    assert set(frame["ci_unit"]) == {"sequence"} and set(frame["ci_n_units"]) == {40}
    assert set(frame["scope"]) == {"in-sample", "k-fold"}
    # the unit rule is the one of every interval: 40 sequences, blocks only from 100 blocks on
    doc = open_store(mbig).read(["doc_id"])["doc_id"]
    assert choose_units(len(doc), doc, store_kind="masked").n_units == 40
    with pytest.raises(BootstrapError, match="too few resampling units: 12 sequences"):
        choose_units(len(doc[doc < 12]), doc[doc < 12], store_kind="masked")


def test_heldout_on_classifiers(stores):
    big, _, small = stores["cls"][0]
    vbig, vsmall = stores["cls_valid"][0]
    pair, valid = Pair(big, small), Pair(vbig, vsmall)
    h = pair.heldout(valid)
    assert h.w_acc == valid.optimum().w_acc and h.w_nll == valid.optimum().w_nll
    assert h.at_acc["acc_lo"] == pair.at(h.w_acc)["acc_lo"]
    assert h.at_acc["acc_lo"] <= pair.optimum().at_acc["acc_lo"]  # in-sample is optimal
    assert h.improvement["bpc"] is None
    curve = relative_improvement_curve(pair.sweep(GRID))  # what the plots draw
    assert curve["rel_bpc"].null_count() == curve.height and curve["rel_ppl"].is_not_null().all()


def test_pairs_of_different_kinds_labels_or_masks_are_refused(stores, tmp_path):
    big = stores["cls"][0][0]
    n = open_store(big).n
    rng = np.random.default_rng(9)
    targets, (lp,) = random_distributions(n, 10, rng, n_models=1)
    text = write_store_from_logprobs(tmp_path / "text.zarr", lp, targets, 10, "float32", model="lm",
                                     dataset="cifar10", split="test", tokenizer="cifar10-labels").path
    with pytest.raises(IncompatiblePairError, match="store kinds differ: classification vs text") as e:
        Pair(big, text)
    assert e.value.field == "kind"
    # another label set (CIFAR-100's labels) on the same examples
    other = _classifiers(tmp_path / "c100", n=n, labels="cifar100-labels", names=(("other", 5),))[0][0]
    with pytest.raises(IncompatiblePairError, match="the label sets differ: 'cifar10-labels' vs 'cifar100-labels'"):
        Pair(big, other)
    # the same label set on other examples
    with pytest.raises(IncompatiblePairError, match="the examples differ: 300 vs 250 examples"):
        Pair(big, stores["cls_k3"][0][0])
    # masked: the same sequences with another masking seed (mostly another count), and the same count with
    # one residue moved
    mbig = stores["masked"][0][0]
    remasked = _masked(tmp_path / "m2", mask_seed=7, names=(("esm-x", 5),))[0][0]
    with pytest.raises(IncompatiblePairError, match="the masked positions differ"):
        Pair(mbig, remasked)
    s = open_store(mbig)
    arr = s.read(["doc_id", "token_index", "targets"])
    idx = arr["token_index"].copy()
    first = np.flatnonzero(arr["doc_id"] == 0)
    free = sorted(set(range(20)) - set(idx[first].tolist()))[0]
    idx[first[0]] = free  # one residue of sequence 0 moved (the mask differs, the count does not)
    rng = np.random.default_rng(3)
    _, lps = random_distributions(s.n, 33, rng, n_models=1)
    moved = write_store_from_logprobs(tmp_path / "moved.zarr", lps[0], arr["targets"], 33, "float32", model="esm-y",
                                      n_params=5, doc_id=arr["doc_id"], kind="masked", extra={"token_index": idx},
                                      dataset="uniref50", split="test", tokenizer="esm2-vocab").path
    with pytest.raises(IncompatiblePairError,
                       match=f"the masked positions differ: token_index first differs at position {first[0]} "
                             f"\\({arr['token_index'][first[0]]} vs {free}\\)"):
        Pair(mbig, moved)


def _text_family(root, n=200):
    rng = np.random.default_rng(11)
    targets, lps = random_distributions(n, 20, rng, n_models=2)
    n_chars = rng.integers(1, 6, n)
    for lp, (name, params) in zip(lps, NAMES):
        write_store_from_logprobs(root / "wiki" / "test" / f"{name}.zarr", lp, targets, 6, model=name,
                                  n_params=params, n_chars=n_chars, dataset="wiki", tokenizer="gpt2-vocab")


def test_sweep_cli_writes_tables_3_and_4(stores, tmp_path):
    root = tmp_path / "stores"
    _classifiers(root, seed=0, n=100)
    _classifiers(root, split="validation", seed=1, n=60)
    _classifiers(root, dataset="cifar100", n_classes=20, k=20, seed=5, n=100, names=NAMES[:2])
    _masked(root, seed=3, n_seq=25)
    _masked(root / "other", seed=6, n_seq=25, mask_seed=1, names=NAMES[2:])  # another masking: skipped
    _text_family(root)
    out = tmp_path / "run"
    frames = run(AnalyzeSettings(stores=root, out_dir=out, n_weights=11, n_resamples=30, kfold=0))
    base, pairs, skipped = frames["baselines"], frames["pairs"], frames["skipped"]
    kinds = dict(zip(base["model"] + "/" + base["dataset"] + "/" + base["split"], base["kind"]))
    assert kinds["big/cifar10/test"] == "classification" and kinds["mid/uniref50/test"] == "masked"
    assert kinds["big/wiki/test"] == "text"
    # pairs: cifar10 test + validation 3 each, cifar100 1, uniref50 3, wiki 1; skipped: only the other masking
    count = {(d, s): n for d, s, n in pairs.group_by("dataset", "split").len().iter_rows()}
    assert count == {("cifar10", "test"): 3, ("cifar10", "validation"): 3, ("cifar100", "test"): 1,
                     ("uniref50", "test"): 3, ("wiki", "test"): 1}
    assert skipped.height == 2 and skipped["reason"].str.contains("the masked positions differ").all(), skipped
    appendix = pairs.filter(pl.col("kind").is_in(["classification", "masked"]))
    assert appendix["fused_bpc"].is_null().all() and appendix["impr_bpc"].is_null().all()
    assert pairs.filter(pl.col("kind") == "text")["impr_bpc"].is_not_null().all()
    c10 = pairs.filter((pl.col("dataset") == "cifar10") & (pl.col("split") == "test"))
    assert c10["heldout_impr_acc_lo"].is_not_null().all() and (c10["ci_unit"] == "example").all()
    assert (pairs.filter(pl.col("dataset") == "uniref50")["ci_unit"] == "sequence").all()
    t3 = (out / "table_classification.md").read_text()
    t4 = (out / "table_masked.md").read_text()
    table = (out / "table.md").read_text()
    assert "| LM | SM | cifar10 | cifar100 |" in t3 and "held-out (weights chosen on the validation split)" in t3
    assert "| LM | SM | uniref50 PPL ↓ | uniref50 ACC ↑ (%) |" in t4 and "PPL red. (%)" in t4
    assert "wiki PPL ↓" in table and "cifar10" not in table.split("## Optimal")[0].split("see table_")[1]
    assert "BPC" not in t3 + t4
    # the numbers in the tables are the frames' numbers
    row = c10.filter((pl.col("primary") == "big") & (pl.col("secondary") == "small")).row(0, named=True)
    line = next(x for x in t3.split("in-sample")[1].splitlines() if x.startswith("| big | small |"))
    assert line.split(" | ")[2] == f"{row['impr_acc_lo']:.2f}%"
    acc_big = base.filter((pl.col("model") == "big") & (pl.col("dataset") == "cifar10")
                          & (pl.col("split") == "test"))["acc"][0]
    assert f"| big |  | {acc_big * 100:.2f} |" in t3
    assert appendix_texts(out) == [t3, t4]  # what the CLI prints after table.md


@pytest.mark.slow
def test_sweep_cli_prints_tables_3_and_4(tmp_path):
    root = tmp_path / "stores"
    _classifiers(root, n=60)
    _masked(root, n_seq=10)
    _text_family(root)
    proc = subprocess.run([sys.executable, "-m", "analysis.sweep", f"stores={root}", f"paths.runs={tmp_path / 'runs'}",
                           "analysis.n_weights=5", "analysis.n_resamples=0"], cwd=ref._ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = proc.stdout
    assert printed.index("| LLM | SLM | wiki PPL ↓") < printed.index("(the layout of Table 3)") \
        < printed.index("(the layout of Table 4)")
    (run_dir,) = (tmp_path / "runs" / "analyze").iterdir()
    for name in ("table.md", "table_classification.md", "table_masked.md"):
        assert (run_dir / name).read_text().strip() in printed


def test_appendix_layout_golden():
    """The exact markdown of a small hand-made result (Table 3's layout, and Table 4's with two metrics)."""
    base = pl.DataFrame({
        "model": ["r18", "r34", "r18", "r34"], "n_params": [11, 21, 11, 21], "kind": ["classification"] * 4,
        "dataset": ["cifar10", "cifar10", "cifar100", "cifar100"], "split": ["test"] * 4,
        "family": ["c10", "c10", "c100", "c100"], "n_positions": [10000] * 4,
        "acc": [0.9044, 0.9314, 0.5547, 0.6499], "ppl": [1.5, 1.4, 4.0, 3.0]})
    pairs = pl.DataFrame({
        "primary": ["r34", "r34"], "secondary": ["r18", "r18"], "kind": ["classification"] * 2,
        "dataset": ["cifar10", "cifar100"], "split": ["test"] * 2, "family": ["c10", "c100"], "flags": ["", ""],
        "fused_acc_lo": [0.9371, 0.66], "fused_acc_hi": [0.9371, 0.6601], "alpha_acc": [2.5, math.inf],
        "impr_acc_lo": [0.61, 1.55], "fused_ppl": [1.3, 2.9], "alpha_nll": [3.0, 1.5], "impr_ppl": [7.1, 3.3],
        "ci_unit": ["example", None], "ci_n_units": [10000, None],
        "insample_dacc_lo_ci_lo": [0.001, None], "insample_dacc_lo_ci_hi": [0.009, None],
        "bootstrap_note": [None, "too few resampling units"]})
    want = """## Image classification (the layout of Table 3): Top-1 accuracy of single models and relative improvement of each AR-fused pair

| LM | SM | cifar10 | cifar100 |
|---|---|---|---|
| *Single model baseline performance (Top-1 Acc. (%))* | | | |
| r18 |  | 90.44 | 55.47 |
| r34 |  | 93.14 | 64.99 |
| *AR fusion: Top-1 improvement relative to the best single model (%), in-sample* | | | |
| r34 | r18 | 0.61% | 1.55% |

No validation split of these pairs: in-sample weights only (the bootstrap intervals below re-choose the weight on every resample).

### cifar10: test split, label set / vocabulary c10, 10,000 examples

| LM | SM | LM Top-1 (%) | SM Top-1 (%) | fused Top-1 (%) | alpha_acc | Top-1 imp. (%) | held-out alpha_acc | held-out Top-1 imp. (%) | dacc_lo 95% CI (pp) | resampled |
|---|---|---|---|---|---|---|---|---|---|---|
| r34 | r18 | 93.14 | 90.44 | 93.71 | 2.5 | 0.61% | – | – | [0.1, 0.9] | 10,000 examples |

95% CI: paired bootstrap of the gain over LM alone; in-sample (w re-chosen on every resample) unless marked held-out (at the weight chosen on the validation split).

### cifar100: test split, label set / vocabulary c100, 10,000 examples

| LM | SM | LM Top-1 (%) | SM Top-1 (%) | fused Top-1 (%) | alpha_acc | Top-1 imp. (%) | held-out alpha_acc | held-out Top-1 imp. (%) | dacc_lo 95% CI (pp) | resampled |
|---|---|---|---|---|---|---|---|---|---|---|
| r34 | r18 | 64.99 | 55.47 | [66.00, 66.01] | inf | 1.55% | – | – | – | not bootstrapped |

r34 + r18: too few resampling units
"""
    assert classification_table(base, pairs) == want
    # a model seen only on a validation split (where a test split exists) is not a row of the test table
    extra = base.head(1).with_columns(pl.lit("r50").alias("model"), pl.lit("validation").alias("split"))
    assert classification_table(pl.concat([base, extra]), pairs) == want
    mbase = base.with_columns(pl.lit("masked").alias("kind"), pl.lit("uniref50").alias("dataset"),
                              pl.lit("esm").alias("family")).head(2)
    mpairs = pairs.with_columns(pl.lit("masked").alias("kind"), pl.lit("uniref50").alias("dataset"),
                                pl.lit("esm").alias("family")).head(1)
    t4 = masked_table(mbase, mpairs)
    lines = t4.splitlines()
    assert lines[2] == "| LM | SM | uniref50 PPL ↓ | uniref50 ACC ↑ (%) |"
    assert lines[4] == "| *Single model baseline performance (PPL, ACC on masked residues (%))* | | | |"
    assert lines[5:7] == ["| r18 |  | 1.50 | 90.44 |", "| r34 |  | 1.40 | 93.14 |"]
    assert lines[8] == "| r34 | r18 | 7.10% | 0.61% |"
    assert "| r34 | r18 | 1.40 | 1.50 | 1.30 | 3 | 7.10% | – | – | 93.14 | 90.44 | 93.71 | 2.5 | 0.61% |" in t4


def test_multi_model_fusion_of_classifiers(stores):
    """The multi-model path reads n_chars too: without text its BPC / BPB are null, the rest as for text."""
    from analysis import MultiData, multi_summary
    from analysis.multi import fused_metrics

    paths, targets, lps = stores["cls"]
    md = MultiData.load([open_store(p) for p in paths])
    assert md.n_chars is None
    got = fused_metrics(md, np.ones(3) / 3)
    assert got["bpc"] is None and got["bpb"] is None
    mix = np.log(sum(np.exp(lp.astype(np.float32).astype(np.float64)) for lp in lps) / 3)
    assert got["nll"] == pytest.approx(-mix[np.arange(len(targets)), targets].mean(), rel=1e-6)
    summary = multi_summary(md, rs=[1.0])
    assert summary["bpc"].null_count() == summary.height
