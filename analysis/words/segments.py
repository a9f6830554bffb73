"""Word segments of a store and their alignment across two stores of one text (DESIGN.md section 7).

`store_segments(store, drop_mode)` runs `kernels.segment_pass` over a store's target_logprob, bow_logmass,
word_start, n_bytes, n_chars and doc_id (about 21 B per position, read whole): per segment its log-probability
(float64), bytes, characters, document and first position. `WordData.load(A, B)` aligns the two stores'
segments (same documents, same count per document, same bytes per segment; else `SegmentMismatchError` naming
the first document and segment that differ) and keeps lA, lB per segment with the sums the sweep and the exact
optimum need, all in the log domain.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from .. import kernels as token_kernels
from ..data import PairData
from ..errors import (
    DegenerateObjectiveError,
    NonFiniteStoreError,
    SegmentMismatchError,
    WordFusionUnavailableError,
)
from ..optimum import NllProblem
from . import kernels

log = logging.getLogger(__name__)

WORD_ARRAYS = ("bow_logmass", "word_start")
READ = ("target_logprob", "bow_logmass", "word_start", "n_bytes", "n_chars", "doc_id")
W_SAFE = 1e-280  # weights with w or 1 - w below this are summed exactly in the log domain (`log_mix_blocks`)
# What must agree between two stores fused at the word level: the same text, cut into documents alike.
SAME_TEXT = (("dataset.name", lambda s: s.dataset.get("name")), ("dataset.split", lambda s: s.dataset.get("split")),
             ("dataset.text_sha256", lambda s: s.dataset.get("text_sha256")),
             ("protocol.scoring", lambda s: s.protocol.get("scoring")),
             ("protocol.separator", lambda s: s.protocol.get("separator")))


def _tok_name(store) -> str:
    return str(store.attrs.get("tokenizer", {}).get("name", "unknown tokenizer"))


def word_fusion_refusal(store) -> str | None:
    """Why ``store`` cannot be fused at the word level (None when it can)."""
    tok = store.attrs.get("tokenizer", {})
    wa, wf = tok.get("word_arrays"), tok.get("word_fusion")  # the extraction's record of the property test
    failed = (wa if isinstance(wa, dict) and wa.get("mode") is not False and not wa.get("written", True) else
              wf if isinstance(wf, dict) and not wf.get("ok", True) else None)
    if failed is not None:
        return (f"{store.path}: tokenizer {_tok_name(store)!r} fails the word-boundary property "
                f"({failed.get('reason', 'no reason recorded')}); word-level fusion needs a byte-complete tokenizer "
                "whose tokens never cross a word boundary")
    if store.kind != "text":
        return f"{store.path} is a {store.kind!r} store; word-level fusion needs text stores"
    missing = [n for n in (*WORD_ARRAYS, "n_bytes", "n_chars") if not store.has(n)]
    if missing:
        return (f"{store.path} has no {', '.join(missing)} (extracted before word-level fusion existed); re-extract "
                "it with the current pipeline (python -m pipeline.extract with the same model and dataset, "
                "overwrite=true) to record them")
    return None


def check_word_store(store) -> None:
    reason = word_fusion_refusal(store)
    if reason is not None:
        raise WordFusionUnavailableError(reason)


def has_bos(store) -> bool:
    """Whether each document's first token was scored (a BOS in front): protocol.bos 'document' (or unrecorded)."""
    return store.protocol.get("bos", "document") not in ("none", False)


def drop_mode(store_a, store_b) -> int:
    """Which documents lose their first words in both stores: none when both scored every document's first
    token, else every document (independent scoring) or the first one (joined: later documents are scored from
    the text before them)."""
    if has_bos(store_a) and has_bos(store_b):
        return kernels.DROP_NONE
    return kernels.DROP_FIRST if store_a.protocol.get("scoring") == "joined" else kernels.DROP_ALL


@dataclass(frozen=True)
class Segments:
    """Kept word segments of one store (arrays of length n_segments) and what was left out."""

    logp: np.ndarray  # float64 log-probability
    n_bytes: np.ndarray  # int64
    n_chars: np.ndarray
    doc: np.ndarray  # doc_id
    first: np.ndarray  # first position
    n_tokens: np.ndarray
    dropped: dict  # positions, bytes, chars, segments left out (documents without BOS)

    @property
    def n(self) -> int:
        return int(self.logp.shape[0])


def store_segments(store, mode: int = kernels.DROP_NONE) -> Segments:
    """The word segments of ``store`` (see `kernels.segment_pass`)."""
    check_word_store(store)
    r = store.read(list(READ))
    tlp = np.ascontiguousarray(r["target_logprob"], np.float32)
    bow = np.ascontiguousarray(r["bow_logmass"], np.float32)
    for name, x in (("target_logprob", tlp), ("bow_logmass", bow)):
        if np.isnan(x).any():
            raise NonFiniteStoreError(f"{store.path}: {name} is NaN at position {int(np.flatnonzero(np.isnan(x))[0])}; "
                                      "the extraction is broken: re-extract this store")
    logp, nb, nc, doc, first, ntok, dropped, bad = kernels.segment_pass(
        tlp, bow, np.ascontiguousarray(r["word_start"], np.uint8), np.ascontiguousarray(r["n_bytes"], np.int32),
        np.ascontiguousarray(r["n_chars"], np.int32), np.ascontiguousarray(r["doc_id"], np.int32), int(mode))
    if bad >= 0:
        raise NonFiniteStoreError(f"{store.path}: bow_logmass is {float(bow[bad])} at position {bad}, where a word "
                                  "starts (its target begins with a space, so that mass is positive): re-extract it")
    return Segments(logp, nb, nc, doc, first, ntok, dict(zip(("positions", "bytes", "chars", "segments"),
                                                        (int(x) for x in dropped))))


def _mismatch(sa: Segments, sb: Segments, name_a: str, name_b: str) -> SegmentMismatchError | None:
    """The first document and segment where the two stores' segments differ (None when they agree)."""
    if sa.n == sb.n and np.array_equal(sa.doc, sb.doc) and np.array_equal(sa.n_bytes, sb.n_bytes):
        return None
    m = min(sa.n, sb.n)
    diff = np.flatnonzero((sa.doc[:m] != sb.doc[:m]) | (sa.n_bytes[:m] != sb.n_bytes[:m]))
    i = int(diff[0]) if diff.size else m
    docs = [int(s.doc[i]) for s in (sa, sb) if i < s.n]
    d = min(docs)
    count = [int(np.count_nonzero(s.doc == d)) for s in (sa, sb)]
    where = sa if i < sa.n and sa.doc[i] == d else sb
    j = i - int(np.flatnonzero(where.doc == d)[0])
    if len(docs) == 2 and docs[0] == docs[1]:
        what = (f"it has {int(sa.n_bytes[i])} bytes in {name_a} but {int(sb.n_bytes[i])} in {name_b} "
                f"({count[0]} vs {count[1]} segments in the document)")
    else:
        what = f"the document has {count[0]} word segments in {name_a} but {count[1]} in {name_b}"
    return SegmentMismatchError(
        f"document {d}, segment {j}: {what}. The two stores do not cut the text at the same word boundaries (a "
        "tokenizer that fails the word-boundary property, or stores of different texts); word-level fusion needs "
        "both; check attrs['tokenizer']['word_fusion'] of each store", field="segments", value_a=count[0],
        value_b=count[1])


@dataclass
class WordData:
    """Aligned word segments of a pair: lA, lB (float64 log-probabilities), bytes, chars, document per segment."""

    la: np.ndarray
    lb: np.ndarray
    n_bytes: np.ndarray
    n_chars: np.ndarray
    doc: np.ndarray
    dropped: dict = field(default_factory=dict)  # per store: what was left out (documents without BOS)
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return int(self.la.shape[0])

    @classmethod
    def load(cls, store_a, store_b) -> WordData:
        mode = drop_mode(store_a, store_b)
        sa, sb = store_segments(store_a, mode), store_segments(store_b, mode)
        err = _mismatch(sa, sb, str(store_a.path), str(store_b.path))
        if err is not None:
            raise err
        if sa.n == 0:
            raise SegmentMismatchError(f"{store_a.path} and {store_b.path} have no word segment left to fuse "
                                       f"({sa.dropped['bytes']} bytes left out: documents without BOS lose their "
                                       "first words)", field="segments", value_a=0, value_b=0)
        if not np.array_equal(sa.n_chars, sb.n_chars):
            log.warning("segments agree in bytes but not in characters (a tokenizer normalises text); BPC uses %s's",
                        store_a.path)
        dropped = {"a": sa.dropped, "b": sb.dropped}
        if sa.dropped["positions"] or sb.dropped["positions"]:
            log.info("documents without BOS: %d bytes (%d characters) left out of the word-level fusion",
                     sa.dropped["bytes"], sa.dropped["chars"])
        return cls(sa.logp, sb.logp, sa.n_bytes, sa.n_chars, sa.doc, dropped)

    # ------------------------------------------------------------------ derived, computed once
    def _get(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def d(self) -> np.ndarray:
        """lB - lA per segment (+inf where pA = 0, -inf where pB = 0)."""
        def make():
            with np.errstate(invalid="ignore"):
                return np.ascontiguousarray(self.lb - self.la)
        return self._get("d", make)

    @property
    def scaled(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(m, ea, eb): m = max(lA, lB), ea = exp(lA - m), eb = exp(lB - m) (1 and 1 where both are -inf)."""
        def make():
            m = np.maximum(self.la, self.lb)
            both = m == -np.inf
            with np.errstate(invalid="ignore"):
                ea = np.where(both, 1.0, np.exp(self.la - m))
                eb = np.where(both, 1.0, np.exp(self.lb - m))
            return np.ascontiguousarray(m), np.ascontiguousarray(ea), np.ascontiguousarray(eb)
        return self._get("scaled", make)

    @property
    def log_sums(self) -> tuple[float, float, float]:
        """(-sum lA, -sum lB, -sum m): the NLL of A alone, of B alone, and the weight-free part of the fusion."""
        def make():
            m = self.scaled[0]
            out = np.empty(((self.n + token_kernels.BLOCK - 1) // token_kernels.BLOCK, 3))
            kernels.log_sums(np.ascontiguousarray(self.la), np.ascontiguousarray(self.lb), m, out)
            return tuple(float(x) for x in token_kernels.reduce_blocks(out))
        return self._get("log_sums", make)

    # ------------------------------------------------------------------ sums
    def nll_sums(self, w, omw=None) -> np.ndarray:
        """sum_s -log(w pA(s) + (1 - w) pB(s)) for each weight, float64 block sums, exact at every magnitude:
        A's (B's) own sum at w = 1 (0), the scaled token kernel in between, the log domain for extreme w."""
        w = np.ascontiguousarray(w, dtype=np.float64)
        omw = np.ascontiguousarray(1.0 - w if omw is None else omw, dtype=np.float64)
        la_sum, lb_sum, m_sum = self.log_sums
        out = np.where(omw == 0.0, la_sum, lb_sum)
        nblk = (self.n + token_kernels.BLOCK - 1) // token_kernels.BLOCK
        normal = (w >= W_SAFE) & (omw >= W_SAFE)
        if normal.any():
            _, ea, eb = self.scaled
            blocks = np.empty((nblk, int(normal.sum())))
            token_kernels.nll_blocks(ea, eb, np.ascontiguousarray(w[normal]), np.ascontiguousarray(omw[normal]),
                                     blocks)
            out[normal] = m_sum + token_kernels.reduce_blocks(blocks)
        extreme = (w > 0.0) & (omw > 0.0) & ~normal
        if extreme.any():
            blocks = np.empty((nblk, int(extreme.sum())))
            kernels.log_mix_blocks(np.ascontiguousarray(self.la), np.ascontiguousarray(self.lb),
                                   np.log(w[extreme]), np.log(omw[extreme]), blocks)
            out[extreme] = token_kernels.reduce_blocks(blocks)
        return out

    def segment_nll(self, w: float) -> np.ndarray:
        """-log(w pA(s) + (1 - w) pB(s)) per segment, in the log domain (numpy)."""
        lw = math.log(w) if w > 0.0 else -np.inf
        lv = math.log1p(-w) if w < 1.0 else -np.inf
        return -np.logaddexp(lw + self.la, lv + self.lb)

    def _blocks(self, kernel, w: float, v: float) -> tuple[float, float]:
        out = np.empty(((self.n + token_kernels.BLOCK - 1) // token_kernels.BLOCK, 2))
        kernel(self.d, w, v, out)
        x, y = token_kernels.reduce_blocks(out)
        return float(x), float(y)

    def problem(self) -> NllProblem:
        """The exact-optimum problem (`analysis.optimum.solve_nll`) of the word NLL, summed from d = lB - lA."""
        both = (self.la == -np.inf) & (self.lb == -np.inf)
        if both.any():
            s = int(np.flatnonzero(both)[0])
            raise DegenerateObjectiveError(
                f"word segment {s} (document {int(self.doc[s])}) has probability 0 under both models, so the fused "
                "NLL is infinite for every weight; check the stores' targets")
        return NllProblem(slope=lambda w, v: self._blocks(kernels.log_gradient, w, v),
                          excess=lambda w, v: self._blocks(kernels.log_excess, w, v),
                          value=lambda w: float(self.nll_sums(np.array([w]))[0]),
                          flat=bool(np.array_equal(self.la, self.lb)), a_zero=bool(np.any(self.la == -np.inf)))

    def as_pair_data(self) -> PairData:
        """The segments as a `PairData` of the scaled probabilities (ea, eb) with empty correctness intervals:
        every ratio, derivative and NLL difference of it is the segments' own (the bootstrap's per-unit grid)."""
        _, ea, eb = self.scaled
        n = self.n
        return PairData(ea, eb, np.zeros(n, np.int8), np.full(n, token_kernels.EMPTY_L),
                        np.full(n, token_kernels.EMPTY_U), np.full(n, token_kernels.EMPTY_L),
                        np.full(n, token_kernels.EMPTY_U), self.n_chars, self.n_bytes)
