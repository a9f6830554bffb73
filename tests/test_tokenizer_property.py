"""The tokenizer requirement of word-level fusion (DESIGN section 7), per tokenizer family the configs name.

A family passes when every word boundary of the probe text is a token boundary, the token starting there begins
with a space and no token contains a letter or digit followed by a space (decode(encode(text)) == text, no
unknown token). The stand-ins (tests/tokenizer_families.py) carry each family's real pre-tokenizer,
normalizer, post-processor and decoder; GPT-2 and SmolLM2 are the real vocabularies. Each failure mode of the
check is exercised with a reason string: word-level and WordPiece vocabularies with an unknown token, pieces
across words, pieces carrying the trailing space, a vocabulary that cannot spell an emoji, broken offsets,
misread space markers, a decoder that changes text.
"""

from __future__ import annotations

import unicodedata

import pytest
import tokenizer_families as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.extraction.words import check_tokenizer, token_texts

FAST = [f for f in tf.PASSING if f not in tf.SLOW]


@pytest.mark.parametrize("family", FAST + [pytest.param(f, marks=pytest.mark.slow) for f in tf.SLOW])
def test_families_that_meet_the_requirement(family):
    ok, reason = check_tokenizer(tf.build(family))
    assert ok, f"{family}: {reason}"
    assert reason.startswith("ok: ") and "space-initial ids" in reason


@pytest.mark.parametrize("family,why", [
    ("wordlevel", "WordLevel vocabulary with the unknown token '<unk>': not byte-complete"),
    ("wordpiece", "WordPiece vocabulary with the unknown token '[UNK]'"),
    ("llama2_nosplit", "contain a letter or digit followed by a space"),
    ("trailing_space", "contain a letter or digit followed by a space"),
])
def test_families_that_are_refused_with_the_reason(family, why):
    ok, reason = check_tokenizer(tf.build(family))
    assert not ok and why in reason, reason


TEXT = st.lists(st.sampled_from(list("abcXYZ019 .,;'\"-\n\t()éßøЖ東京🙂👍🏽") + ["  ", " a", "a "]),
                min_size=1, max_size=30).map(lambda xs: unicodedata.normalize("NFC", "".join(xs)))


@pytest.mark.parametrize("family", ["gpt2", "llama2", "qwen2", "neox"])
def test_the_property_holds_on_generated_text(family):
    tok = tf.build(family)
    pieces = token_texts(tok)

    @settings(max_examples=15, deadline=None)
    @given(TEXT)
    def check(text):
        ok, reason = check_tokenizer(tok, texts=(text,), token_bytes=pieces)
        assert ok, (text, reason)

    check()


class _Wrapped:
    """A tokenizer with one thing broken, everything else delegated."""

    def __init__(self, tok, **overrides):
        self._tok, self._over = tok, overrides

    def __getattr__(self, name):
        return self._over.get(name, getattr(self._tok, name))

    def __len__(self):
        return len(self._tok)

    def __call__(self, *a, **kw):
        return self._over["__call__"](*a, **kw) if "__call__" in self._over else self._tok(*a, **kw)


def test_broken_offsets_are_caught():
    tok = tf.build("llama3")

    def shifted(texts, **kw):  # every token claims to end one character later than it does
        enc = tok(texts, **kw)
        enc["offset_mapping"] = [[(a, min(b + 1, len(t))) for a, b in offs] for offs, t in zip(enc["offset_mapping"], texts)]
        return enc

    ok, reason = check_tokenizer(_Wrapped(tok, __call__=shifted))
    # the token before a boundary now spans its space: caught as a boundary inside a token
    assert not ok and ("is not a token boundary" in reason or "falls inside a token" in reason), reason


def test_misread_space_markers_are_caught():
    tok = tf.build("gpt2")
    strings = tok.convert_ids_to_tokens(list(range(len(tok))))
    the = tok.convert_tokens_to_ids("Ġthe")
    strings[the] = "the"  # as if 'Ġthe' did not begin with a space

    ok, reason = check_tokenizer(_Wrapped(tok, convert_ids_to_tokens=lambda ids: [strings[i] for i in ids]
                                          if isinstance(ids, list) else strings[ids]))
    assert not ok and "'the' starting at the word boundary" in reason and "does not begin with a space" in reason


def test_a_decoder_that_changes_text_is_caught():
    tok = tf.build("qwen2")
    ok, reason = check_tokenizer(_Wrapped(tok, decode=lambda ids, **kw: tok.decode(ids, **kw).lower()))
    assert not ok and "decode(encode(text)) != text" in reason


def test_a_vocabulary_that_cannot_spell_the_probe_is_refused():
    # SentencePiece without byte fallback: an emoji becomes <unk>
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Strip(" ", 1, 0)])
    tk.train_from_iterator(["the cat sat on the mat"] * 5, trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>"],
                                                                                show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>")
    ok, reason = check_tokenizer(tok, texts=("the cat 🙂 sat",))
    assert not ok and "gives the unknown token '<unk>': not byte-complete" in reason, reason
