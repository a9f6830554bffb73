"""The token stream and its windows (DESIGN section 2, issue 3 item 2).

A stream is a list of segments: one per document when documents are scored independently, one in
all when they are joined with a separator. A segment is a token sequence `seq` (with a BOS token in
front of each document when the protocol asks for it; never one per window) and a mask of the
positions that are scored targets: every token except BOS tokens and, without BOS, the segment's
first token (nothing to predict it from).

Windows partition each segment's target positions [lo0, T) into blocks [c, d), with lo0 the
segment's first scored index (1 for documents; the first continuation token for task items):
    first window:  c = lo0,    d = min(lo0 + L, T)
    later windows: c = prev d, d = min(c + S, T)
and feed inputs seq[a : d - 1] with a = max(0, d - 1 - L), so every window has at most L inputs,
every target after the first window sees at least L - S + 1 tokens of context, the last window of a
segment gets a full context (as lm-evaluation-harness's rolling windows), and every target is
scored exactly once. A task item's continuation of at most L tokens is thus one window holding the
last L tokens of context + continuation (lm-evaluation-harness's left truncation). The windows are a
fixed partition, so a resumed extraction replays them identically.

n_chars / n_bytes of a target: characters / UTF-8 bytes from the end of the previous target's span
to the end of this one (the first scored token absorbs what precedes it, the last one what trails
it), so they sum to the scored text's length.

word_start of a target (`build_stream(..., word_start=True)`, DESIGN section 7): 1 when the token starts at
a word boundary of its document, the token's start being the end of the token before it (`words.py`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from ..logs import warn_once
from . import words
from .errors import ConfigError, EmptyDatasetError
from .words import boundaries, token_starts

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Protocol:
    scoring: str = "independent"     # 'independent' | 'joined'
    separator: str = "\n\n"          # text between documents when joined
    bos: str = "document"            # 'document' | 'none'
    context_length: int = 1024       # L: inputs per window
    stride: int = 1024               # S: new targets per window after the first (S <= L)

    def __post_init__(self):
        if self.scoring not in ("independent", "joined"):
            raise ConfigError(f"protocol scoring={self.scoring!r}: use 'independent' or 'joined'")
        if self.bos not in ("document", "none"):
            raise ConfigError(f"protocol bos={self.bos!r}: use 'document' or 'none'")
        if self.context_length < 1:
            raise ConfigError(f"extract.context_length={self.context_length} must be >= 1")
        if not 1 <= self.stride <= self.context_length:
            raise ConfigError(
                f"extract.stride={self.stride} must be in [1, context_length={self.context_length}]"
            )


@dataclasses.dataclass
class Segment:
    seq: np.ndarray        # (T,) int64 token ids fed to the model (BOS included)
    scored: np.ndarray     # (T,) bool, True where seq[j] is a target
    n_chars: np.ndarray    # (T,) int32, valid where scored
    n_bytes: np.ndarray    # (T,) int32
    doc_id: np.ndarray     # (T,) int32
    item_id: np.ndarray | None = None    # (T,) int32, task streams only (see pipeline/extraction/tasks.py)
    option_id: np.ndarray | None = None  # (T,) int32
    word_start: np.ndarray | None = None  # (T,) uint8, valid where scored (build_stream(word_start=True))


@dataclasses.dataclass
class Windows:
    """Window w feeds segments[seg[w]].seq[a[w]:d[w]-1] and scores targets in [c[w], d[w])."""
    seg: np.ndarray
    a: np.ndarray
    c: np.ndarray
    d: np.ndarray
    n_targets: np.ndarray  # scored targets per window
    offset: np.ndarray     # (n_windows + 1,) first position of each window in the store

    def __len__(self) -> int:
        return len(self.seg)

    @property
    def n_positions(self) -> int:
        return int(self.offset[-1])


@dataclasses.dataclass
class TokenStream:
    segments: list[Segment]
    protocol: Protocol
    exact_alignment: bool   # decode(encode(text)) == text for every document (byte-level tokenizer)
    n_text_chars: int       # length of the scored text

    def targets(self) -> np.ndarray:
        return np.concatenate([s.seq[s.scored] for s in self.segments]).astype(np.int32)

    def windows(self) -> Windows:
        return make_windows([len(s.seq) for s in self.segments],
                            [s.scored for s in self.segments], self.protocol)

    def position_arrays(self, w: Windows, lo: int, hi: int) -> dict[str, np.ndarray]:
        """targets, n_chars, n_bytes, doc_id (+ item_id, option_id for task streams) of windows [lo, hi),
        in store order."""
        keys = ("seq", "n_chars", "n_bytes", "doc_id")
        if self.segments and self.segments[0].item_id is not None:
            keys += ("item_id", "option_id")
        if self.segments and self.segments[0].word_start is not None:
            keys += ("word_start",)
        parts: dict[str, list] = {k: [] for k in keys}
        for i in range(lo, hi):
            s = self.segments[w.seg[i]]
            sl = slice(w.c[i], w.d[i])
            mask = s.scored[sl]
            for k in keys:
                parts[k].append(getattr(s, k)[sl][mask])
        out = {k: np.concatenate(v) if v else np.zeros(0, np.int32) for k, v in parts.items()}
        out["targets"] = out.pop("seq").astype(np.int32)
        return {k: v.astype(np.uint8 if k == "word_start" else np.int32) for k, v in out.items()}


def make_windows(lengths: Sequence[int], scored: Sequence[np.ndarray], p: Protocol) -> Windows:
    L, S = p.context_length, p.stride
    seg, a, c, d, n = [], [], [], [], []
    for i, T in enumerate(lengths):
        if T < 2:
            continue
        csum = np.concatenate([[0], np.cumsum(scored[i])])
        first = np.flatnonzero(scored[i])
        lo = max(1, int(first[0])) if len(first) else 1   # nothing predicts seq[0]
        step = L
        while lo < T:
            hi = min(lo + step, T)
            step = S
            seg.append(i)
            a.append(max(0, hi - 1 - L))
            c.append(lo)
            d.append(hi)
            n.append(int(csum[hi] - csum[lo]))
            lo = hi
    arr = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
    n_t = arr(n)
    return Windows(arr(seg), arr(a), arr(c), arr(d), n_t, np.concatenate([[0], np.cumsum(n_t)]).astype(np.int64))


def _byte_offsets(text: str) -> np.ndarray:
    """(len(text) + 1,) cumulative UTF-8 byte offset of every character boundary."""
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    nb = 1 + (cp >= 0x80).astype(np.int64) + (cp >= 0x800) + (cp >= 0x10000)
    return np.concatenate([[0], np.cumsum(nb)])


def _spans(ends: np.ndarray, scored: np.ndarray, text_len: int, byte_off: np.ndarray):
    """n_chars / n_bytes per token from token end offsets (ends of unscored tokens are absorbed)."""
    e = np.maximum.accumulate(np.asarray(ends, dtype=np.int64)) if len(ends) else np.zeros(0, np.int64)
    idx = np.flatnonzero(scored)
    n_chars = np.zeros(len(ends), np.int32)
    n_bytes = np.zeros(len(ends), np.int32)
    if len(idx) == 0:
        return n_chars, n_bytes
    end_s = e[idx].copy()
    end_s[-1] = text_len                       # the last target absorbs trailing text
    start_s = np.concatenate([[0], end_s[:-1]])
    n_chars[idx] = end_s - start_s
    n_bytes[idx] = byte_off[end_s] - byte_off[start_s]
    return n_chars, n_bytes


def _encode(tokenizer, texts: list[str]):
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True,
                    return_attention_mask=False, split_special_tokens=True)
    return enc["input_ids"], enc["offset_mapping"]


def _round_trip(tokenizer, ids: list[list[int]], texts: list[str]) -> int:
    """How many texts do not come back from decode(encode(text))."""
    dec = tokenizer.batch_decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return sum(x != y for x, y in zip(dec, texts))


def check_tokenizer(tokenizer, protocol: Protocol, bos_id: int | None) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer; n_chars/n_bytes need its "
            "offset mapping: install `tokenizers` and load the model's fast tokenizer"
        )
    if protocol.bos == "document" and bos_id is None:
        raise ConfigError("protocol bos='document' but the tokenizer has no BOS or EOS token: set bos=none")


def _word_start_joined(ends: np.ndarray, doc: np.ndarray, docs: list[str], starts: np.ndarray) -> np.ndarray:
    """word_start of the tokens of a joined text: a token's start (the previous token's end) is a word boundary
    of its own document (offsets relative to that document's first character)."""
    tok_start = token_starts(ends)
    rel = tok_start - starts[doc]
    nonempty = np.maximum.accumulate(np.asarray(ends, dtype=np.int64)) > tok_start  # see words.word_start
    out = np.zeros(len(ends), np.uint8)
    for k in np.unique(doc):
        sel = np.flatnonzero(doc == k)
        out[sel] = np.isin(rel[sel], boundaries(docs[k])) & nonempty[sel]
    return out


def build_stream(docs: Sequence[str], tokenizer, protocol: Protocol, bos_id: int | None,
                 word_start: bool = False) -> TokenStream:
    """Tokenise the documents (fast tokenizer, offsets) into the segments of the protocol; with word_start,
    each segment gets its targets' word_start (DESIGN section 7)."""
    check_tokenizer(tokenizer, protocol, bos_id)
    docs = list(docs)
    if not docs or not any(docs):
        raise EmptyDatasetError("the dataset has no text (0 documents or all empty): check dataset.path/split")
    use_bos = protocol.bos == "document"
    segments: list[Segment] = []
    if protocol.scoring == "independent":
        ids, offs = _encode(tokenizer, docs)
        n_inexact = _round_trip(tokenizer, ids, docs)
        n_text = 0
        for k, (tok, off, text) in enumerate(zip(ids, offs, docs)):
            if not tok:
                continue
            seq = np.asarray(([bos_id] if use_bos else []) + list(tok), dtype=np.int64)
            scored = np.ones(len(seq), bool)
            scored[0] = False
            ends = np.asarray([o[1] for o in off], dtype=np.int64)
            if use_bos:
                ends = np.concatenate([[0], ends])
            nc, nb = _spans(ends, scored, len(text), _byte_offsets(text))
            n_text += int(nc.sum())
            ws = words.word_start(text, token_starts(ends), ends) if word_start else None
            segments.append(Segment(seq, scored, nc, nb, np.full(len(seq), k, np.int32), word_start=ws))
    else:
        text = protocol.separator.join(docs)
        starts = np.cumsum([0] + [len(x) + len(protocol.separator) for x in docs[:-1]])
        (tok,), (off,) = _encode(tokenizer, [text])
        n_inexact = _round_trip(tokenizer, [tok], [text])
        tok = np.asarray(tok, dtype=np.int64)
        ends = np.asarray([o[1] for o in off], dtype=np.int64)
        # a token belongs to the document containing its last character; a separator counts with the
        # document before it
        doc = (np.searchsorted(starts, np.maximum(ends - 1, 0), side="right") - 1).astype(np.int32)
        is_bos = np.zeros(len(tok), bool)
        if use_bos and len(tok):
            first = np.flatnonzero(np.concatenate([[True], doc[1:] != doc[:-1]]))
            tok = np.insert(tok, first, bos_id)
            ends = np.insert(ends, first, np.concatenate([[0], ends[first[1:] - 1]]))
            doc = np.insert(doc, first, doc[first])
            is_bos = np.zeros(len(tok), bool)
            is_bos[first + np.arange(len(first))] = True
        scored = ~is_bos
        if len(scored):
            scored[0] = False
        nc, nb = _spans(ends, scored, len(text), _byte_offsets(text))
        n_text = int(nc.sum())
        ws = _word_start_joined(ends, doc, docs, starts) if word_start else None
        segments.append(Segment(tok, scored, nc, nb, doc, word_start=ws))
    exact = n_inexact == 0
    if not exact:
        warn_once(log, "round_trip", "decode(encode(text)) != text for %d of %d texts (tokenizer %s): "
                  "n_chars/n_bytes follow the tokenizer's offsets and are approximate where it normalises text",
                  n_inexact, len(docs) if protocol.scoring == "independent" else 1,  # joined: one text
                  getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    stream = TokenStream(segments, protocol, exact, n_text)
    if sum(int(s.scored.sum()) for s in segments) == 0:
        raise EmptyDatasetError(
            f"the dataset produced no scored token ({len(docs)} documents): with bos=none every "
            "document needs at least two tokens; check the text or use bos=document"
        )
    return stream
