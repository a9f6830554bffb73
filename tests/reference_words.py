"""Brute-force reference of word-level fusion (DESIGN.md section 7), sharing no code with analysis.words.

Words are cut from the TEXT (a boundary is a character offset b > 0 with text[b - 1].isalnum() and text[b] == " "),
tokens are located by their character offsets, and every probability is taken from a model's FULL distribution
in mpmath: the probability of a word is the product of its tokens' probabilities, times the probability that
the next token begins with a space (the word has ended; not for a document's last word), divided by the same
probability at the word's own first token (not for a document's first word). Fused NLL, optimum and improvement
domain are summed and bisected in 60-digit arithmetic.

Also: two toy tokenizers that meet the word-boundary property (a GPT-2-like regex pre-tokenizer and a
SentencePiece-like split at every space, each followed by random chunking), and synthetic "models" (random full
distributions over a tokenizer's vocabulary) from which stores are built.
"""

from __future__ import annotations

import re

import mpmath as mp
import numpy as np

from pipeline.store.synthetic import arrays_from_logprobs, synthetic_attrs

DPS = 60
TEXTS = [
    "The cat sat.  Then,  it ran away!",
    "naïve café 東京 — ok? yes:1,2 3",
    "one",
    "  leading spaces and trailing ones  ",
    "a b c d e f g h",
    "x-ray 42x 7 up.down (paren) [brackets] end",
]


def boundaries(text: str) -> list[int]:
    return [b for b in range(1, len(text)) if text[b - 1].isalnum() and text[b] == " "]


def word_spans(text: str) -> list[tuple[int, int]]:
    cuts = [0] + boundaries(text) + [len(text)]
    return [(cuts[i], cuts[i + 1]) for i in range(len(cuts) - 1)]


def _chunk(piece: str, rng, max_len: int) -> list[str]:
    out, i = [], 0
    while i < len(piece):
        k = int(rng.integers(1, max_len + 1))
        out.append(piece[i:i + k])
        i += k
    return out


GPT2_RE = re.compile(r" ?[^\W_]+| ?[^\w\s]+| ?_+|\s+(?!\S)|\s+")


def gpt2_like(text: str, rng, max_len: int = 3) -> list[str]:
    """Regex pre-tokens (a space attaches to the word after it), each cut into random chunks."""
    return [c for p in GPT2_RE.findall(text) for c in _chunk(p, rng, max_len)]


def sentencepiece_like(text: str, rng, max_len: int = 4) -> list[str]:
    """Pieces split before every space (SentencePiece's whitespace splitting: '▁' starts a piece), cut randomly;
    letters and punctuation may share a token."""
    return [c for p in re.split(r"(?= )", text) if p for c in _chunk(p, rng, max_len)]


def check_property(text: str, tokens: list[str]) -> None:
    """The tokenizer requirement of DESIGN section 7, on one text."""
    assert "".join(tokens) == text
    starts = set(np.cumsum([0] + [len(t) for t in tokens[:-1]]).tolist())
    for b in boundaries(text):
        assert b in starts, (text, b)
    for t in tokens:
        assert not any(c.isalnum() and n == " " for c, n in zip(t, t[1:])), t


# ---------------------------------------------------------------------------------------------- models
class ToyModel:
    """Random full distributions over a vocabulary, one per position of every document, float32-exact."""

    def __init__(self, docs_tokens: list[list[str]], extra: list[str], rng, sharp: float = 2.0):
        vocab = sorted({t for toks in docs_tokens for t in toks} | set(extra))
        self.vocab = vocab
        self.index = {t: i for i, t in enumerate(vocab)}
        self.space = np.array([t.startswith(" ") for t in vocab])
        self.lp = []
        for toks in docs_tokens:
            z = sharp * rng.standard_normal((len(toks), len(vocab)))
            z[np.arange(len(toks)), [self.index[t] for t in toks]] += rng.uniform(0, 3, len(toks))
            lp = z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(1, keepdims=True)
            self.lp.append(lp.astype(np.float32).astype(np.float64))  # the model's distribution IS float32 values

    def target_lp(self, d: int, i: int, tok: str) -> mp.mpf:
        return mp.mpf(float(self.lp[d][i, self.index[tok]]))

    def bow(self, d: int, i: int) -> mp.mpf:
        """log P(next token begins with a space) at token i of document d, from the full distribution."""
        return mp.log(mp.fsum(mp.exp(mp.mpf(float(x))) for x in self.lp[d][i, self.space]))


def store_arrays(texts, docs_tokens, model: ToyModel, *, bos: bool = True, k: int = 4, full: bool = False):
    """Position arrays of a store of these documents (with a BOS: every token scored; without: all but each
    document's first, whose bytes the first scored token absorbs), bow_logmass and word_start included; with
    ``full``, (arrays, full log-probs (N, V)) for the real store writer."""
    parts = {key: [] for key in ("lp", "t", "nb", "nc", "doc", "bow", "ws")}
    for d, (text, toks) in enumerate(zip(texts, docs_tokens)):
        starts = np.cumsum([0] + [len(t) for t in toks[:-1]])
        bset = set(boundaries(text))
        first = 0 if bos else 1
        for i in range(first, len(toks)):
            span = "".join(toks[:i + 1]) if i == first else toks[i]
            parts["lp"].append(model.lp[d][i])
            parts["t"].append(model.index[toks[i]])
            parts["nb"].append(len(span.encode()))
            parts["nc"].append(len(span))
            parts["doc"].append(d)
            with mp.workdps(30):
                parts["bow"].append(float(model.bow(d, i)))
            parts["ws"].append(1 if int(starts[i]) in bset else 0)
    arrays = arrays_from_logprobs(np.array(parts["lp"]), np.array(parts["t"]), k, "float32",
                                  doc_id=np.array(parts["doc"]), n_chars=np.array(parts["nc"]),
                                  n_bytes=np.array(parts["nb"]))
    arrays["bow_logmass"] = np.array(parts["bow"], np.float32)
    arrays["word_start"] = np.array(parts["ws"], np.uint8)
    return (arrays, np.array(parts["lp"])) if full else arrays


def word_attrs(name: str, tokenizer: str, *, bos: bool = True, split: str = "test", n_params: int = 10**6,
               word_fusion=None) -> dict:
    a = synthetic_attrs(name, n_params=n_params, tokenizer=tokenizer, split=split)
    a["protocol"]["bos"] = "document" if bos else "none"
    if word_fusion is not None:
        a["tokenizer"]["word_fusion"] = word_fusion
    return a


# ---------------------------------------------------------------------------------------------- reference
def segments(texts, docs_tokens, model: ToyModel, *, bos: bool = True, drop: bool = False):
    """[(doc, log p(word) as mpf, bytes, chars)] of every kept word, from the text and the full distributions.

    The model's stored probabilities are float32, so log p of a token and the bow mass are taken as the float32
    the store holds (bow rounded to float32 as stored)."""
    out = []
    with mp.workdps(DPS):
        for d, (text, toks) in enumerate(zip(texts, docs_tokens)):
            starts = list(np.cumsum([0] + [len(t) for t in toks[:-1]]).tolist())
            words = word_spans(text)
            tok_of = [[i for i, s in enumerate(starts) if a <= s < b] for a, b in words]

            def bow(i, d=d):
                return mp.mpf(float(np.float32(float(model.bow(d, i)))))

            keep_from = 2 if drop else 0
            for k in range(keep_from, len(words)):
                ids = tok_of[k]
                lp = mp.fsum(model.target_lp(d, i, toks[i]) for i in ids)
                if k > 0:
                    lp -= bow(ids[0])
                if k + 1 < len(words):
                    lp += bow(tok_of[k + 1][0])
                a, b = words[k]
                if k == 0 and not bos:
                    a = 0
                out.append((d, lp, len(text[a:b].encode()), len(text[a:b])))
    return out


def dropped_bytes(texts, docs_tokens) -> int:
    """Bytes left out when every document loses its first two words (analysis.words, no BOS); a document of one
    token has no scored position at all."""
    total = 0
    for text, toks in zip(texts, docs_tokens):
        if len(toks) >= 2:
            w = word_spans(text)
            total += len(text[:w[min(1, len(w) - 1)][1]].encode())
    return total


def fused_nll(la, lb, w) -> mp.mpf:
    """-sum log(w e^lA + (1 - w) e^lB), 60 digits; w taken exactly."""
    with mp.workdps(DPS):
        w = mp.mpf(float(w))
        return -mp.fsum(mp.log(w * mp.exp(mp.mpf(x)) + (1 - w) * mp.exp(mp.mpf(y))) for x, y in zip(la, lb))


def slope(la, lb, w) -> mp.mpf:
    with mp.workdps(DPS):
        w = mp.mpf(w)
        return mp.fsum((mp.exp(mp.mpf(y)) - mp.exp(mp.mpf(x))) / (w * mp.exp(mp.mpf(x)) + (1 - w) * mp.exp(mp.mpf(y)))
                       for x, y in zip(la, lb))


def optimum(la, lb, halvings: int = 110) -> tuple[mp.mpf, mp.mpf]:
    """(w*, w_D) by bisection in u = log(w / (1 - w)) over [-1000, 1000] (roots far below 1e-300 included), 60
    digits: w* the root of L' (or an end), w_D the root of L(w) - L(1) left of it."""
    with mp.workdps(DPS):
        def w_of(u):
            return 1 / (1 + mp.exp(-u))

        if all(mp.mpf(x) == mp.mpf(y) for x, y in zip(la, lb)):
            return mp.mpf(1), mp.mpf(0)
        if slope(la, lb, 1) <= 0:
            return mp.mpf(1), mp.mpf(1)
        if slope(la, lb, 0) >= 0:
            return mp.mpf(0), mp.mpf(0)
        lo, hi = mp.mpf(-1000), mp.mpf(1000)
        for _ in range(halvings):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if slope(la, lb, w_of(mid)) > 0 else (mid, hi)
        us = (lo + hi) / 2
        l1 = fused_nll(la, lb, 1)

        def e(w):
            return -mp.fsum(mp.log(w * mp.exp(mp.mpf(x)) + (1 - w) * mp.exp(mp.mpf(y))) for x, y in zip(la, lb)) - l1

        if e(mp.mpf(0)) <= 0:
            return w_of(us), mp.mpf(0)
        lo, hi = mp.mpf(-1000), us
        for _ in range(halvings):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if e(w_of(mid)) > 0 else (lo, mid)
        return w_of(us), w_of((lo + hi) / 2)
