"""Pair alignment: may two stores be fused position by position?

They may iff their token-stream hashes match. When they do not, `align` says why, most telling field first.
Settings that change the predictions but not the stream (context length, stride, dtypes, quantisation, K,
logit width) are allowed and reported as flags. Stores of different kinds (text, task, classification, masked)
never pair; classifiers pair only over one label set (its hash is the "tokenizer" vocab_hash), masked models only
when they masked the same residues (doc_id, token_index and targets enter the stream hash), and the error says
so in those words.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import IncompatiblePairError

# (label, getter) of fields that must agree, most telling first.
_MUST_MATCH = (
    ("kind", lambda s: getattr(s, "kind", "text")),
    ("tokenizer.vocab_hash", lambda s: s.attrs.get("tokenizer", {}).get("vocab_hash")),
    ("dataset.name", lambda s: s.dataset.get("name")),
    ("dataset.split", lambda s: s.dataset.get("split")),
    ("dataset.text_sha256", lambda s: s.dataset.get("text_sha256")),
    ("protocol.scoring", lambda s: s.protocol.get("scoring")),
    ("protocol.separator", lambda s: s.protocol.get("separator")),
    ("protocol.bos", lambda s: s.protocol.get("bos")),
    ("n_positions", lambda s: s.n),
)
# Fields that may differ; reported so every table can flag them.
_MAY_DIFFER = (
    ("protocol.context_length", lambda s: s.protocol.get("context_length")),
    ("protocol.stride", lambda s: s.protocol.get("stride")),
    ("model.dtype", lambda s: s.model.get("dtype")),
    ("model.quantization", lambda s: s.model.get("quantization")),
    ("top_k", lambda s: s.k),
    ("logprob_dtype", lambda s: s.logprob_dtype),
    ("n_classes", lambda s: s.n_classes),
)


@dataclass(frozen=True)
class Alignment:
    ok: bool
    differences: list = field(default_factory=list)  # (field, value_a, value_b) that forbid pairing
    flagged: list = field(default_factory=list)  # (field, value_a, value_b) allowed but worth a flag
    reason: str = ""  # the first difference in a user's words, where the field name alone would not say it

    def raise_if_incompatible(self) -> None:
        if not self.ok:
            f, a, b = self.differences[0]
            more = f" (and {len(self.differences) - 1} more: {[d[0] for d in self.differences[1:]]})" \
                if len(self.differences) > 1 else ""
            if self.reason:
                raise IncompatiblePairError(f"stores cannot be paired: {self.reason}{more}", field=f, value_a=a,
                                            value_b=b)
            raise IncompatiblePairError(
                f"stores do not score the same token stream: {f} is {a!r} vs {b!r}{more}. "
                "Fuse only stores extracted with one tokenizer on the same text and protocol.",
                field=f, value_a=a, value_b=b,
            )

    @property
    def flags(self) -> str:
        """Short text for tables: 'L,S differ' style."""
        return ",".join(f for f, _, _ in self.flagged)


def first_difference(a, b, name: str = "targets") -> int | None:
    """First position where array ``name`` differs (None if equal over the common length, or if either store
    lacks the array)."""
    if hasattr(a, "has") and not (a.has(name) and b.has(name)):
        return None
    n = min(a.n_valid, b.n_valid)
    for lo, hi, chunk in a.iter_chunks([name], 0, n):
        other = b.read([name], lo, hi)[name]
        diff = np.flatnonzero(chunk[name] != other)
        if diff.size:
            return lo + int(diff[0])
    return None


def align(store_a, store_b) -> Alignment:
    differences = [(f, g(store_a), g(store_b)) for f, g in _MUST_MATCH if g(store_a) != g(store_b)]
    flagged = [(f, g(store_a), g(store_b)) for f, g in _MAY_DIFFER if g(store_a) != g(store_b)]
    kind = getattr(store_a, "kind", "text")
    first = None  # (array, position, value_a, value_b) where the streams first part
    if store_a.stream_hash != store_b.stream_hash:
        where = None
        if store_a.n == store_b.n:
            # a masked store's stream is its mask first: which sequence and residue each position is
            names = ("doc_id", "token_index", "targets") if kind == "masked" else ("targets", "doc_id", "n_chars",
                                                                                    "n_bytes", "token_index")
            for name in names:
                pos = first_difference(store_a, store_b, name)
                if pos is not None:
                    where = f"{name} first differ at position {pos}"
                    first = (name, pos, *(int(s.read([name], pos, pos + 1)[name][0]) for s in (store_a, store_b)))
                    break
        differences.append(("stream_hash", store_a.stream_hash, store_b.stream_hash) if where is None
                           else (f"stream_hash ({where})", store_a.stream_hash, store_b.stream_hash))
    reason = _reason(store_a, store_b, differences[0], first) if differences else ""
    return Alignment(ok=not differences, differences=differences, flagged=flagged, reason=reason)


def _reason(store_a, store_b, difference: tuple, first: tuple | None) -> str:
    """The first difference in words, for store kinds and classifier / masked stores ("" for text and task
    stores, whose field names say it: tokenizer.vocab_hash, dataset.split, stream_hash (...))."""
    f, va, vb = difference
    kind = getattr(store_a, "kind", "text")
    if f == "kind":
        return (f"store kinds differ: {va} vs {vb} ({store_a.path} vs {store_b.path}); a classifier's labels, a "
                "masked model's residues and a text's tokens are different streams: pair stores of one kind")
    if kind == "classification" and f == "tokenizer.vocab_hash":
        names = [str(s.attrs.get("tokenizer", {}).get("name")) for s in (store_a, store_b)]
        return (f"the label sets differ: {names[0]!r} vs {names[1]!r} (tokenizer.vocab_hash {str(va)[:12]} vs "
                f"{str(vb)[:12]}); classifiers pair only over the same classes in the same order")
    if kind == "classification" and (f == "n_positions" or f.startswith("stream_hash")):
        detail = f"{va:,} vs {vb:,} examples" if f == "n_positions" else _where(first, "labels or example ids")
        return (f"the examples differ: {detail}; classifiers pair only on the same examples of one dataset split "
                "in the same order")
    if kind == "masked" and (f == "n_positions" or f.startswith("stream_hash")):
        detail = f"{va:,} vs {vb:,} masked residues" if f == "n_positions" else _where(first, "masked residues")
        return (f"the masked positions differ: {detail}; masked models pair only when they masked the same residues "
                "of the same sequences (same masking seed and rate): re-extract one store with the other's masking")
    return ""


def _where(first: tuple | None, what: str) -> str:
    if first is None:
        return f"the stream hashes differ (the {what} or their order)"
    name, pos, a, b = first
    return f"{name} first differs at position {pos:,} ({a} vs {b})"
