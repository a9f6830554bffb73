"""A word-level vocabulary built from the training split, saved as a `tokenizers` tokenizer with offsets."""

from __future__ import annotations

from collections import Counter

from tokenizers import Tokenizer, models, pre_tokenizers

UNK, EOS = "<unk>", "<eos>"


def build_word_tokenizer(texts: list[str], max_size: int = 10_000, min_freq: int = 2):
    """Words (runs of word characters, or of punctuation) seen at least ``min_freq`` times, most frequent
    first, at most ``max_size`` entries including <unk> and <eos>; ties broken alphabetically."""
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    counts: Counter[str] = Counter()
    for t in texts:
        counts.update(w for w, _ in pre.pre_tokenize_str(t))
    words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
    vocab = {UNK: 0, EOS: 1}
    for w in words[: max(0, max_size - len(vocab))]:
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=UNK, eos_token=EOS, bos_token=EOS)
    return fast
