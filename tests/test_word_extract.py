"""The word-level arrays of extraction (DESIGN section 7): bow_logmass, word_start and the space-initial sets.

- bow_logmass is correctly rounded: within half an ulp of float32 (plus 4 V 2^-53 relative) of an 80-bit long
  double reference that sums the space-initial and the other probabilities separately, each relative to its own
  maximum (no code shared with head.py), on the adversarial logits of test_extract_precision (ties at the top-K
  boundary, near-certain rows, tails e^-1000 below the top, every logit far below 0) and masks that are sparse,
  dense, empty, full or entirely inside the top K; both the fused CPU kernel and the torch (CUDA) reductions;
  a few extreme rows against mpmath at 60 digits.
- word_start equals an independent character-level computation (token starts from the concatenated bytes of the
  decoded tokens, boundaries with str.isalnum()) on varied text, for independent and joined scoring, with and
  without BOS, for several tokenizer families; the segments it cuts have the same bytes for two tokenizers.
- space-initial sets per family against the tokenizer's own decode; the store records their hash.
"""

from __future__ import annotations

import hashlib
import json

import mpmath
import numpy as np
import pytest
import tokenizer_families as tf
import torch
from extract_helpers import make_model, write_jsonl
from hypothesis import given, settings
from hypothesis import strategies as st
from test_extract_precision import _adversarial, _check, _lm_like, _targets

from pipeline.extraction import head
from pipeline.extraction.config import DatasetSpec, ExtractSpec, ModelSpec, RunSpec
from pipeline.extraction.errors import ConfigError
from pipeline.extraction.head import score_logits
from pipeline.extraction.stream import Protocol, build_stream
from pipeline.extraction.words import PROBE_TEXTS, space_initial_hash, space_initial_ids, word_start

LD = np.longdouble


# ------------------------------------------------------------------------------------------------ bow_logmass
def _reference_bow(z: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """log(sum_{mask} p) per row, long double: B and N each relative to their own maximum, -log1p(N / B)."""
    out = np.empty(z.shape[0], LD)
    for i, row in enumerate(z.astype(LD)):
        if not mask.any():
            out[i] = -np.inf
            continue
        if mask.all():
            out[i] = 0.0
            continue
        b, n = row[mask], row[~mask]
        mb, mn = b.max(), n.max()
        ratio = np.exp(n - mn).sum() / np.exp(b - mb).sum() * np.exp(mn - mb)
        out[i] = -np.log1p(ratio)
    return out


@pytest.fixture(params=["fused CPU kernel", "torch reductions (the CUDA path)"])
def path(request, monkeypatch):
    if request.param.startswith("torch"):
        monkeypatch.setattr(head, "_row_sums_cpu", head._row_sums_torch)
    return request.param


def _masks(rng, v: int, k: int, z: np.ndarray) -> dict[str, np.ndarray]:
    top = np.zeros(v, bool)
    top[np.argsort(-z[0], kind="stable")[: max(1, k // 2)]] = True
    return {"dense": rng.random(v) < 0.6, "sparse": rng.random(v) < 0.002, "empty": np.zeros(v, bool),
            "full": np.ones(v, bool), "inside the top K of row 0": top}


def _compare(out: np.ndarray, ref: np.ndarray, v: int, name: str) -> None:
    fin = np.isfinite(ref)
    assert np.array_equal(np.isfinite(out), fin), name
    assert np.array_equal(out[~fin], ref[~fin].astype(np.float32)), name  # -inf exactly where B = 0
    if fin.any():
        _check(out[fin], ref[fin], v, name)


@pytest.mark.parametrize("v,k,n,kind", [(50_257, 64, 36, "adversarial"), (50_257, 64, 12, "lm"),
                                        (3_000, 1, 36, "adversarial"), (500, 64, 36, "adversarial"),
                                        (64, 64, 12, "adversarial")])
def test_bow_logmass_is_correctly_rounded(v, k, n, kind, path):
    rng = np.random.default_rng(v + k + n)
    z = _lm_like(rng, n, v) if kind == "lm" else _adversarial(rng, n, v, k)
    t = _targets(rng, z, k)
    for name, mask in _masks(rng, v, k, z).items():
        if v > 10_000 and name not in ("dense", "sparse"):
            continue  # the same code paths are covered at the smaller widths
        out = score_logits(torch.from_numpy(z), torch.from_numpy(t), k, bow_mask=torch.from_numpy(mask))
        _compare(out["bow_logmass"].numpy(), _reference_bow(z, mask), v, f"bow_logmass ({name}, {path})")


def test_bow_logmass_extreme_rows_against_mpmath(path):
    # the space-initial mass is e^-1000 (below float64's range relative to the max), or 1 - e^-1000, or tied
    v, k = 400, 8
    z = np.zeros((4, v), np.float32)
    mask = np.zeros(v, bool)
    mask[200:] = True
    z[0, :200] = 1000.0       # the masked half sits 1000 below the rest
    z[1, 200:] = 1000.0       # the unmasked half sits 1000 below: bow = -200/200 e^-1000, rounds to -0
    z[2, :] = 5.0             # all tied: bow = log(1/2)
    z[3, :8] = 40.0           # the top K unmasked, the tail masked 40 below: bow ~ -40 + log(200/8)
    out = score_logits(torch.from_numpy(z), torch.zeros(4, dtype=torch.long), k, bow_mask=torch.from_numpy(mask))
    mpmath.mp.dps = 60
    for i in range(4):
        terms = [mpmath.e ** mpmath.mpf(float(x)) for x in z[i]]
        exact = mpmath.log(sum(t for t, m in zip(terms, mask) if m) / sum(terms))
        got = float(out["bow_logmass"][i])
        assert got == np.float32(float(exact)), (i, got, exact)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 6), v=st.integers(2, 80), k=st.integers(1, 80), p=st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]),
       grid=st.sampled_from([None, 0.5]), scale=st.sampled_from([0.1, 3.0, 300.0]), seed=st.integers(0, 2**16))
def test_bow_logmass_matches_brute_force_property(n, v, k, p, grid, scale, seed):
    rng = np.random.default_rng(seed)
    k = min(k, v)
    z = (rng.standard_normal((n, v)) * scale).astype(np.float32)
    if grid:
        z = (np.round(z / grid) * grid).astype(np.float32)
    mask = rng.random(v) < p
    out = score_logits(torch.from_numpy(z), torch.from_numpy(rng.integers(0, v, n)), k,
                       bow_mask=torch.from_numpy(mask))
    _compare(out["bow_logmass"].numpy(), _reference_bow(z, mask), v, "bow_logmass")


def test_bow_mask_of_the_wrong_width_is_refused():
    with pytest.raises(ValueError, match="bow_mask has shape"):
        score_logits(torch.zeros(2, 10), torch.zeros(2, dtype=torch.long), 3, bow_mask=torch.zeros(9, dtype=torch.bool))


# ------------------------------------------------------------------------------------------------ word_start
DOCS = [" A document that starts with a space, then  two spaces and   three.",
        "Lines\nbreak\n\n here, and 12 345 numbers; x9 y\tz.",
        "Émigrés in Zürich: naïve café 東京 大阪 🙂 x 👍🏽 y, Москва и Санкт-Петербург.",
        "one",
        "Trailing space ",
        "(Parenthesised) words—dashes – and \"quotes\" 'single' it's O'Neil's"] + list(PROBE_TEXTS[:4])


def _reference_word_start(tokenizer, seq: np.ndarray, text: str) -> np.ndarray:
    """word_start of each token of one document from the tokenizer's own decode of every prefix (no offsets, no
    regex): token j starts at character len(decode(seq[:j])) when that decode is a prefix of the text (it is not
    when token j starts inside a character split across byte-level tokens)."""
    out = np.zeros(len(seq), np.uint8)
    for j in range(len(seq)):
        before = tokenizer.decode([int(i) for i in seq[:j]], skip_special_tokens=False,
                                  clean_up_tokenization_spaces=False)
        c = len(before)
        if text.startswith(before) and 0 < c < len(text) and text[c - 1].isalnum() and text[c] == " ":
            out[j] = 1
    return out


@pytest.mark.parametrize("family", ["gpt2", "llama2", "neox", "qwen2"])
@pytest.mark.parametrize("bos", ["document", "none"])
def test_word_start_matches_a_character_level_computation(family, bos):
    tok = tf.build(family)
    p = Protocol("independent", "", bos, 64, 64)
    stream = build_stream(DOCS, tok, p, tok.bos_token_id, word_start=True)
    for seg in stream.segments:
        k = int(seg.doc_id[0])
        body = seg.seq[1:] if bos == "document" else seg.seq
        ref = _reference_word_start(tok, body, DOCS[k])
        got = seg.word_start[1:] if bos == "document" else seg.word_start
        assert np.array_equal(got, ref), (family, k, DOCS[k])
        # every boundary of the document starts a token (the first token is unscored without BOS)
        n_boundaries = sum(DOCS[k][b - 1].isalnum() and DOCS[k][b] == " " for b in range(1, len(DOCS[k])))
        assert int(got.sum()) == n_boundaries
        if bos == "none":
            assert got[0] == 0


def test_word_start_in_joined_scoring_is_per_document():
    tok = tf.build("gpt2")
    docs = ["cat", "dog ran", "a b"]
    stream = build_stream(docs, tok, Protocol("joined", " ", "document", 64, 64), tok.bos_token_id, word_start=True)
    seg = stream.segments[0]
    ws, doc, scored = seg.word_start, seg.doc_id, seg.scored
    # 'cat' + ' ' + 'dog ran' + ' ' + 'a b': the separators' spaces are not inside a document
    per_doc = [int(ws[scored & (doc == k)].sum()) for k in range(3)]
    assert per_doc == [0, 1, 1]


def _segment_bytes(stream) -> list[list[int]]:
    """Bytes of each word segment per document: n_bytes summed between word starts."""
    out = []
    for seg in stream.segments:
        nb, ws = seg.n_bytes[seg.scored], seg.word_start[seg.scored]
        cut = np.flatnonzero(ws)
        out.append([int(x.sum()) for x in np.split(nb, cut) if len(x)])
    return out


def test_two_tokenizers_cut_the_same_segments():
    docs = DOCS + ["Numbers 1 234 567 and 3.14 and a1 b2, done."]
    p = Protocol("independent", "", "document", 512, 512)
    cuts = [_segment_bytes(build_stream(docs, tf.build(f), p, tf.build(f).bos_token_id, word_start=True))
            for f in ("gpt2", "llama2", "qwen2")]
    assert cuts[0] == cuts[1] == cuts[2]
    assert [len(c) for c in cuts[0]] == [1 + sum(d[b - 1].isalnum() and d[b] == " " for b in range(1, len(d)))
                                         for d in docs]


@settings(max_examples=25, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab1 .\n\t,éÆ東🙂'-")), min_size=1, max_size=40))
def test_word_start_function_matches_str_isalnum(text):
    starts = np.arange(len(text) + 1)
    got = word_start(text, starts)
    ref = [int(0 < b < len(text) and text[b - 1].isalnum() and text[b] == " ") for b in starts]
    assert got.tolist() == ref


# ------------------------------------------------------------------------------------------------ space-initial sets
@pytest.mark.parametrize("family", ["gpt2", "neox", "llama2", "llama3", "qwen2", "wordlevel"])
def test_space_initial_sets_follow_the_tokenizers_own_decode(family):
    tok = tf.build(family)
    ids = space_initial_ids(tok)
    special = set(tok.all_special_ids)
    assert not special & set(ids.tolist())
    anchor = tok.convert_tokens_to_ids("a") if family != "wordlevel" else None  # word-level: no decoder
    sample = range(len(tok)) if len(tok) < 5000 else np.random.default_rng(0).choice(len(tok), 800, replace=False)
    for i in map(int, sample):
        if i in special:
            continue
        if anchor is not None:  # inside a sequence, after 'a': the id's own text follows
            text = tok.decode([anchor, i], skip_special_tokens=False, clean_up_tokenization_spaces=False)[1:]
        else:
            text = tok.convert_ids_to_tokens(i)
        assert (text[:1] == " ") == (i in set(ids.tolist())), (family, i, tok.convert_ids_to_tokens(i), text)
    if family == "gpt2":  # the real GPT-2 vocabulary: the ids whose byte-level string starts with 'Ġ'
        vocab = tok.get_vocab()
        assert ids.tolist() == sorted(i for s, i in vocab.items() if s.startswith("Ġ"))
        assert len(ids) == 33_135 and 220 in ids and 50_256 not in ids
    if family == "llama2":
        assert tok.convert_tokens_to_ids("<0x20>") in ids and tok.convert_tokens_to_ids("<0x41>") not in ids
    if family == "neox":
        assert tok.convert_tokens_to_ids("  ") in ids  # an added run of spaces
    if family == "wordlevel":
        assert len(ids) == 0


# ------------------------------------------------------------------------------------------------ stores
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("words")
    return make_model(root / "gpt2", "gpt2", max_len=64), write_jsonl(root / "docs.jsonl", DOCS[:6])


def _spec(model_dir, data, tmp, **extract):
    ex = {"top_k": 8, "context_length": 24, "stride": 12, "progress": False, "chunk_size": 64} | extract
    return RunSpec(model=ModelSpec(name="tiny", name_or_path=str(model_dir), device="cpu"),
                   dataset=DatasetSpec(name="docs", split="test", loader="text_file", path=str(data)),
                   extract=ExtractSpec(**ex), store=str(tmp / "s.zarr"), stores_root=str(tmp), overwrite=True,
                   resolved={"test": True})


def test_store_has_the_word_arrays_and_their_hash(tiny, tmp_path):
    from extract_helpers import reference_arrays

    from pipeline.extraction.datasets import load_documents
    from pipeline.extraction.models import load_model
    from pipeline.extraction.run import extract, resolve_protocol

    spec = _spec(*tiny, tmp_path)
    lm = load_model(spec.model)
    store = extract(spec, lm)
    got = store.read(["bow_logmass", "word_start", "targets", "n_bytes"])
    assert got["bow_logmass"].dtype == np.float32 and got["word_start"].dtype == np.uint8
    ids = space_initial_ids(lm.tokenizer)
    tok_attrs = store.attrs["tokenizer"]
    assert tok_attrs["n_space_initial"] == len(ids) > 0
    assert tok_attrs["space_initial_hash"] == space_initial_hash(ids)
    assert tok_attrs["space_initial_hash"] == "sha256:" + hashlib.sha256(json.dumps(ids.tolist()).encode()).hexdigest()
    assert tok_attrs["word_arrays"]["written"] and tok_attrs["word_arrays"]["mode"] == "auto"
    # bow_logmass from the model's own full logits (float64 log_softmax, logsumexp over the space-initial ids)
    stream = build_stream(load_documents(spec.dataset).texts, lm.tokenizer, resolve_protocol(spec, lm.max_length),
                          lm.bos_id, word_start=True)
    lp = reference_arrays(lm, stream, stream.windows(), 8)["_lp"]
    mask = np.zeros(lp.shape[1], bool)
    mask[ids] = True
    ref = np.logaddexp.reduce(lp[:, mask], axis=1)
    np.testing.assert_allclose(got["bow_logmass"], ref, atol=2e-4, rtol=1e-5)
    # word_start: per document, one per word boundary of its text
    docs = load_documents(spec.dataset).texts
    doc_id = store.read(["doc_id"])["doc_id"]
    for k, d in enumerate(docs):
        assert got["word_start"][doc_id == k].sum() == sum(d[b - 1].isalnum() and d[b] == " " for b in range(1, len(d)))


def test_word_arrays_off_or_refused(tiny, tmp_path):
    from pipeline.extraction.run import extract

    store = extract(_spec(*tiny, tmp_path, word_arrays=False))
    assert "bow_logmass" not in store.attrs["arrays"] and "word_start" not in store.attrs["arrays"]
    assert store.attrs["tokenizer"]["word_arrays"] == {"mode": False, "written": False,
                                                       "reason": "extract.word_arrays=false"}
    with pytest.raises(ConfigError, match="word_arrays"):
        ExtractSpec(word_arrays="sometimes")
    assert ExtractSpec(word_arrays="true").word_arrays is True


def test_word_level_vocabulary_gets_no_word_arrays(tmp_path):
    from pipeline.extraction.words import plan_word_arrays

    tok = tf.build("wordlevel")
    info, mask = plan_word_arrays("auto", tok, len(tok))
    assert mask is None and not info["word_arrays"]["written"]
    assert "unknown token '<unk>'" in info["word_arrays"]["reason"]
    with pytest.raises(ConfigError, match="fails the word-boundary property test.*unknown token"):
        plan_word_arrays(True, tok, len(tok))
    # ids past the tokenizer (padded logits, as Pythia's) are never space-initial
    info, mask = plan_word_arrays("auto", tf.build("llama2"), len(tf.build("llama2")) + 16)
    assert mask.shape == (len(tf.build("llama2")) + 16,) and not mask[-16:].any()
    assert info["n_space_initial"] == int(mask.sum())
