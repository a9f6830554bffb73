"""Word-level fusion (analysis.WordPair, DESIGN.md section 7) against the brute force of tests/reference_words.py:
segments cut from the text, probabilities from full distributions in 60 digits, fused NLL and optimum by
mpmath bisection; constructed worst cases (segment probabilities below 1e-300, identical models, one-segment
documents, documents without BOS, w at 0 and 1); refusals with their reasons."""

from __future__ import annotations

import math
import re

import mpmath as mp
import numpy as np
import polars as pl
import pytest
import reference_words as rw
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis import Pair, SegmentMismatchError, WordFusionUnavailableError, WordPair
from analysis.data import MemoryStore
from analysis.optimum import solve_nll
from analysis.words.segments import WordData
from pipeline.store import open_store
from pipeline.store.synthetic import write_store_from_logprobs

W = np.array([0.0, 1e-300, 1e-9, 0.2, 0.5, 0.8, 1 - 1e-12, 1.0])
EXTRA = [" the", " a", "zz", " q", ".", " 9", "ab"]


def _build(tokenize_a, tokenize_b, *, bos_a=True, bos_b=True, seed=0, texts=rw.TEXTS, same_model=False):
    rng = np.random.default_rng(seed)
    toks = []
    for tok in (tokenize_a, tokenize_b):
        docs = [tok(t, rng) for t in texts]
        for t, d in zip(texts, docs):
            rw.check_property(t, d)
        toks.append(docs)
    if same_model:
        toks[1] = toks[0]
    ma = rw.ToyModel(toks[0], EXTRA, rng)
    mb = ma if same_model else rw.ToyModel(toks[1], EXTRA, rng)
    stores = []
    for name, tk, m, bos, params in (("A", toks[0], ma, bos_a, 10**9), ("B", toks[1], mb, bos_b, 10**8)):
        tname = "tok-" + ("a" if tk is toks[0] else "b")
        arrays = rw.store_arrays(texts, tk, m, bos=bos)
        stores.append(MemoryStore(arrays, n_classes=len(m.vocab),
                                  attrs=rw.word_attrs(name, tname, bos=bos, n_params=params)))
    return stores, toks, (ma, mb)


def _ref(texts, toks, models, bos, drop):
    return [rw.segments(texts, t, m, bos=b, drop=drop) for t, m, b in zip(toks, models, bos)]


def _close(got, want, rel):
    assert abs(mp.mpf(float(got)) - want) <= rel * max(1, abs(want)), (got, want)


TOKENIZERS = {
    "bpe-vs-sentencepiece": (rw.gpt2_like, rw.sentencepiece_like),
    "two-bpe-vocabularies": (lambda t, r: rw.gpt2_like(t, r, 2), lambda t, r: rw.gpt2_like(t, r, 4)),
}


@pytest.mark.parametrize("bos", [(True, True), (False, True), (False, False)], ids=["bos", "A-no-bos", "no-bos"])
@pytest.mark.parametrize("which", list(TOKENIZERS))
def test_segments_fused_nll_and_optimum_match_the_brute_force(which, bos):
    (sa, sb), toks, models = _build(*TOKENIZERS[which], bos_a=bos[0], bos_b=bos[1])
    wp = WordPair(sa, sb, order="given")
    drop = not all(bos)
    ref_a, ref_b = _ref(rw.TEXTS, toks, models, bos, drop)
    assert wp.data.n == len(ref_a) == len(ref_b)
    assert [r[2] for r in ref_a] == [r[2] for r in ref_b] == wp.data.n_bytes.tolist()
    assert [r[0] for r in ref_a] == wp.data.doc.tolist()
    for got, ref in ((wp.data.la, ref_a), (wp.data.lb, ref_b)):
        for g, r in zip(got, ref):
            _close(g, r[1], 1e-12)
    if drop:
        assert wp.dropped["a"]["bytes"] == wp.dropped["b"]["bytes"] == rw.dropped_bytes(rw.TEXTS, toks[1])
    la, lb = [float(r[1]) for r in ref_a], [float(r[1]) for r in ref_b]
    frame = wp.sweep(W)
    nbytes, chars = sum(r[2] for r in ref_a), sum(r[3] for r in ref_a)
    for w, row in zip(W, frame.iter_rows(named=True)):
        want = rw.fused_nll(la, lb, w)
        _close(row["nll"], want, 1e-12)
        _close(row["bpb"], want / mp.log(2) / nbytes, 1e-12)
        _close(row["bpc"], want / mp.log(2) / chars, 1e-12)
        _close(row["word_ppl"], mp.exp(want / len(la)), 1e-11)
        assert row["n_segments"] == len(la)
    opt = wp.optimum()
    ws, wd = rw.optimum(la, lb)
    for got, want in ((opt.w_nll, ws), (opt.w_d_nll, wd)):
        assert abs(got - float(want)) <= 1e-8 * max(float(want), 1e-300) or got == float(want), (got, want)
    # the optimum is no worse than any grid point, and its value is the sweep's value at it
    assert opt.at_nll["nll"] <= frame["nll"].min() + 1e-12 * abs(frame["nll"].min())
    assert opt.at_nll["nll"] == wp.at(opt.w_nll)["nll"]


def test_single_model_bpb_and_bpc_from_segments_equal_the_token_level_figures():
    (sa, sb), toks, models = _build(rw.gpt2_like, rw.sentencepiece_like)
    wp = WordPair(sa, sb, order="given")
    for store, w in ((sa, 1.0), (sb, 0.0)):
        r = store.read(["target_logprob", "n_bytes", "n_chars"])
        total = -math.fsum(r["target_logprob"].astype(np.float64))
        row = wp.at(w)
        assert row["nll"] == pytest.approx(total, rel=1e-13)
        assert row["bpb"] == pytest.approx(total / math.log(2) / r["n_bytes"].sum(), rel=1e-13)
        assert row["bpc"] == pytest.approx(total / math.log(2) / r["n_chars"].sum(), rel=1e-13)


def test_one_tokenizer_gives_both_levels_and_word_level_is_the_brute_force_word_mixture():
    # the same tokenization for both models: the token-level Pair exists, and the word-level mixture is a
    # different (coarser) model whose NLL is the brute-force word mixture's
    (sa, sb), toks, models = _build(rw.gpt2_like, rw.gpt2_like, seed=3)
    rng = np.random.default_rng(3)
    docs = [rw.gpt2_like(t, rng) for t in rw.TEXTS]
    ma, mb = rw.ToyModel(docs, EXTRA, rng), rw.ToyModel(docs, EXTRA, rng)
    stores = [MemoryStore(rw.store_arrays(rw.TEXTS, docs, m), n_classes=len(m.vocab),
                          attrs=rw.word_attrs(n, "one-tok", n_params=p))
              for m, n, p in ((ma, "A", 10**9), (mb, "B", 10**8))]
    wp, tp = WordPair(*stores, order="given"), Pair(*stores, order="given")
    assert wp.same_tokenizer
    la = [float(r[1]) for r in rw.segments(rw.TEXTS, docs, ma)]
    lb = [float(r[1]) for r in rw.segments(rw.TEXTS, docs, mb)]
    for w in (0.3, 0.7):
        _close(wp.at(w)["nll"], rw.fused_nll(la, lb, w), 1e-12)
        assert wp.at(w)["bpb"] != pytest.approx(tp.at(w)["bpb"], rel=1e-9)  # a different model
    for w in (0.0, 1.0):  # alone, the two levels agree
        assert wp.at(w)["bpb"] == pytest.approx(tp.at(w)["bpb"], rel=1e-12)


def test_identical_models_give_d_nll_zero_exactly():
    (sa, _), toks, (ma, _) = _build(rw.gpt2_like, rw.gpt2_like, same_model=True)
    twin = MemoryStore(dict(sa.arrays), n_classes=sa.n_classes, attrs=rw.word_attrs("A2", "tok-a"))
    opt = WordPair(sa, twin, order="given").optimum()
    assert (opt.w_nll, opt.alpha_nll, opt.w_d_nll, opt.d_nll) == (1.0, math.inf, 0.0, 0.0)
    assert opt.nll_detail.gain == 0.0


# ---------------------------------------------------------------------------------------------- worst cases
def _wd(la, lb, docs=None):
    la, lb = np.asarray(la, float), np.asarray(lb, float)
    n = la.size
    return WordData(la, lb, np.full(n, 3, np.int64), np.full(n, 2, np.int64),
                    np.arange(n, dtype=np.int64) if docs is None else np.asarray(docs, np.int64))


def _check_log_domain(la, lb, rel=1e-12):
    wd = _wd(la, lb)
    got = wd.nll_sums(W)
    for w, g in zip(W, got):
        _close(g, rw.fused_nll(la, lb, w), rel)
    return wd


def test_segment_probabilities_far_below_1e_300():
    la = [-1000.0, -5.0, -2.0, -800.0, -1e-3, -750.0]
    lb = [-1.0, -1005.0, -2.5, -790.0, -2e-3, -1500.0]
    wd = _check_log_domain(la, lb)
    opt = solve_nll(wd.problem())
    ws, wd_ref = rw.optimum(la, lb)
    assert abs(opt.w - float(ws)) <= 1e-9 * float(ws)
    assert abs(opt.w_domain - float(wd_ref)) <= 1e-8 * float(wd_ref)
    # A's -1000 on one segment is outweighed by B's -3000 on the other only below w ~ e^-999: the domain's end is
    # past what float64 holds, and reported as 0
    la2, lb2 = [-1000.0, -1.0], [-1.0, -3000.0]
    opt2 = solve_nll(_check_log_domain(la2, lb2).problem())
    assert float(rw.optimum(la2, lb2)[1]) < 1e-300 and opt2.w_domain == 0.0 and opt2.d == 0.0
    _close(opt.gain, rw.fused_nll(la, lb, 1) - rw.fused_nll(la, lb, opt.w), 1e-12)


def test_b_impossible_on_a_segment_and_a_impossible_on_another():
    la, lb = [-1.0, -np.inf, -2.0], [-np.inf, -3.0, -2.0]
    wd = _wd(la, lb)
    got = wd.nll_sums(np.array([0.0, 0.5, 1.0]))
    assert got[0] == math.inf and got[2] == math.inf
    _close(got[1], rw.fused_nll([-1.0, -1e9, -2.0], [-1e9, -3.0, -2.0], 0.5), 1e-12)
    opt = solve_nll(wd.problem())
    assert 0.0 < opt.w < 1.0 and opt.d == 0.0 and opt.gain == math.inf


@st.composite
def segment_logs(draw):
    n = draw(st.integers(1, 25))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    kind = draw(st.sampled_from(["words", "extreme", "close", "equal"]))
    la = -rng.exponential(8.0, n)
    if kind == "words":
        lb = la + rng.normal(0, 2, n)
    elif kind == "extreme":  # lA - lB of +-1000: probabilities far below 1e-300
        lb = la + rng.choice([-1000.0, 1000.0, 0.5, -0.5], n)
        la = la - rng.choice([0.0, 700.0], n)
    elif kind == "close":  # tiny gains
        lb = la + rng.normal(0, 1e-6, n)
    else:
        lb = np.where(rng.random(n) < 0.6, la, la + rng.normal(0, 1, n))
    return np.minimum(la, 0.0), np.minimum(lb, 0.0)


@settings(max_examples=12, deadline=None)
@given(segment_logs())
def test_fused_nll_and_optimum_match_the_reference_at_every_magnitude(ab):
    la, lb = (x.tolist() for x in ab)
    wd = _check_log_domain(la, lb)
    opt = solve_nll(wd.problem())
    ws, _ = rw.optimum(la, lb, halvings=60)
    e_opt = rw.fused_nll(la, lb, opt.w)
    slack = 1e-11 * max(1, abs(e_opt))
    for g in np.linspace(0, 1, 11):  # no grid point is better than the returned optimum
        assert e_opt <= rw.fused_nll(la, lb, g) + slack
    if la == lb:
        assert (opt.w, opt.d) == (1.0, 0.0)
    assert abs(opt.w - float(ws)) <= 1e-6 or abs(float(e_opt - rw.fused_nll(la, lb, ws))) <= slack


# ---------------------------------------------------------------------------------------------- refusals, I/O
def test_refusals_name_the_reason():
    (sa, sb), toks, _ = _build(rw.gpt2_like, rw.sentencepiece_like)
    old = MemoryStore({k: v for k, v in sa.arrays.items() if k not in ("bow_logmass", "word_start")},
                      n_classes=sa.n_classes, attrs=rw.word_attrs("old", "tok-a"))
    with pytest.raises(WordFusionUnavailableError, match="re-extract"):
        WordPair(old, sb)
    unk = MemoryStore(dict(sb.arrays), n_classes=sb.n_classes, attrs=rw.word_attrs(
        "wordlevel", "word-vocab", word_fusion={"ok": False, "reason": "unknown token <unk> for 'émigré'"}))
    with pytest.raises(WordFusionUnavailableError, match="unknown token <unk>"):
        WordPair(sa, unk)
    # a different cut: drop one boundary from B's word_start (a tokenizer that fails the property)
    bad = dict(sb.arrays)
    ws = bad["word_start"].copy()
    i = int(np.flatnonzero((bad["doc_id"] == 1) & (ws == 1))[1])
    ws[i] = 0
    bad["word_start"] = ws
    with pytest.raises(SegmentMismatchError, match=r"document 1, segment 1:"):
        WordPair(sa, MemoryStore(bad, n_classes=sb.n_classes, attrs=rw.word_attrs("B", "tok-b")), order="given")
    other = MemoryStore(dict(sb.arrays), n_classes=sb.n_classes, attrs=rw.word_attrs("B", "tok-b", split="train"))
    with pytest.raises(SegmentMismatchError, match="dataset.split"):
        WordPair(sa, other)


def test_stores_on_disk_heldout_and_bootstrap(tmp_path):
    texts = [f"doc {i} has words, and more words {i * 7}." for i in range(24)]
    (sa, sb), toks, models = _build(rw.gpt2_like, rw.sentencepiece_like, texts=texts, seed=5)
    paths = []
    for s, name in ((sa, "A"), (sb, "B")):
        arr = s.arrays
        lp = np.full((s.n, s.n_classes), -np.inf)  # only what the word level reads must be exact
        lp[np.arange(s.n), arr["targets"]] = arr["target_logprob"]
        p = tmp_path / f"{name}.zarr"
        write_store_from_logprobs(p, lp, arr["targets"], 2, "float32", model=name, doc_id=arr["doc_id"],
                                  n_chars=arr["n_chars"], n_bytes=arr["n_bytes"],
                                  extra={"bow_logmass": arr["bow_logmass"], "word_start": arr["word_start"]},
                                  attrs={"protocol": {"bos": "document"}, "tokenizer": s.attrs["tokenizer"]},
                                  n_params=10**9 if name == "A" else 10**8)
        paths.append(p)
    wp = WordPair(*paths)
    mem = WordPair(sa, sb, order="given")
    assert np.array_equal(wp.data.la, mem.data.la) and open_store(paths[0]).has("bow_logmass")
    valid = WordPair(paths[1], paths[0], order="given")  # the other way round: its w is 1 - w here
    h = wp.heldout(valid)
    assert h.w_nll == pytest.approx(1.0 - valid.optimum().w_nll) and h.w_nll == pytest.approx(wp.optimum().w_nll)
    frame = wp.bootstrap(n_resamples=200, heldout_w=h.w_nll)
    assert set(frame["statistic"]) == {"alpha_nll", "d_nll", "dbpb", "dbpc", "dword_ppl"}
    assert frame["ci_unit"][0] == "doc" and frame["ci_n_units"][0] == 24
    row = frame.filter((frame["statistic"] == "dbpb") & (frame["scope"] == "in-sample")).row(0, named=True)
    assert row["ci_lo"] <= row["estimate"] <= row["ci_hi"] + 1e-12


@pytest.mark.slow
def test_sweep_cli_adds_word_level_rows(tmp_path):
    from analysis.sweep import AnalyzeSettings, run

    rng = np.random.default_rng(11)
    toks = {"tok-a": [rw.gpt2_like(t, rng) for t in rw.TEXTS], "tok-b": [rw.sentencepiece_like(t, rng) for t in rw.TEXTS]}
    specs = (("big-a", "tok-a", 10**9, None), ("small-a", "tok-a", 10**7, None), ("mid-b", "tok-b", 10**8, None),
             ("wordlevel", "tok-b", 10**6, {"ok": False, "reason": "word-level vocabulary with <unk>"}))
    for split in ("test", "validation"):
        for name, tk, params, wf in specs:
            m = rw.ToyModel(toks[tk], EXTRA, rng)
            arr, lp = rw.store_arrays(rw.TEXTS, toks[tk], m, full=True)
            a = rw.word_attrs(name, tk, split=split, n_params=params, word_fusion=wf)
            write_store_from_logprobs(tmp_path / "stores" / split / f"{name}.zarr", lp, arr["targets"], 4, "float32",
                                      model=name, doc_id=arr["doc_id"], n_chars=arr["n_chars"], n_bytes=arr["n_bytes"],
                                      extra={"bow_logmass": arr["bow_logmass"], "word_start": arr["word_start"]},
                                      attrs={k: a[k] for k in ("protocol", "tokenizer")}, n_params=params, split=split)
    frames = run(AnalyzeSettings(stores=tmp_path / "stores", out_dir=tmp_path / "out", n_resamples=50))
    prs = frames["pairs"].filter(pl.col("split") == "test")
    word = prs.filter(pl.col("level") == "word")
    # across tokenizers: word rows only; one tokenizer: both levels
    assert {("big-a", "mid-b"), ("mid-b", "small-a"), ("big-a", "small-a")} <= set(
        zip(word["primary"], word["secondary"]))
    tok = prs.filter(pl.col("level") == "token")
    assert set(zip(tok["primary"], tok["secondary"])) >= {("big-a", "small-a")}
    assert not (tok["primary"].is_in(["mid-b"]) & tok["secondary"].is_in(["big-a", "small-a"])).any()
    row = word.filter((pl.col("primary") == "big-a") & (pl.col("secondary") == "mid-b")).row(0, named=True)
    assert row["heldout_split"] == "validation" and math.isfinite(row["heldout_impr_bpb"])
    assert "bootstrap_note" in word.columns  # 6 documents: too few units, said so
    skipped = frames["skipped"]
    reasons = skipped.filter(pl.col("a").is_in(["wordlevel"]) | pl.col("b").is_in(["wordlevel"]))["reason"].to_list()
    assert any("word-level vocabulary with <unk>" in r for r in reasons)
    # one short reason a row: the vocabulary hashes cut to 8 hex digits, no store paths (the row names the models)
    assert all(re.search(r"different tokenizers \(vocab_hash [0-9a-f]{8} vs [0-9a-f]{8}\); word level: ", r)
               and not re.search(r"[0-9a-f]{64}|\.zarr", r) for r in reasons), reasons
    assert not any("different tokenizer" in r for r in skipped.filter(
        ~pl.col("a").is_in(["wordlevel"]) & ~pl.col("b").is_in(["wordlevel"]))["reason"].to_list())
    table = (tmp_path / "out" / "table.md").read_text()
    assert "## Word-level fusion" in table and "| level |" in table.replace("level |", "level |")
    assert (tmp_path / "out" / "word_sweeps.parquet").is_file()
