"""Pair alignment: may two stores be fused position by position?

They may iff their token-stream hashes match. When they do not, `align` says why, most telling field first.
Settings that change the predictions but not the stream (context length, stride, dtypes, quantisation, K,
logit width) are allowed and reported as flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import IncompatiblePairError

# (label, getter) of fields that must agree, most telling first.
_MUST_MATCH = (
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

    def raise_if_incompatible(self) -> None:
        if not self.ok:
            f, a, b = self.differences[0]
            more = f" (and {len(self.differences) - 1} more: {[d[0] for d in self.differences[1:]]})" \
                if len(self.differences) > 1 else ""
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
    """First position where array ``name`` differs (None if equal over the common length)."""
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
    if store_a.stream_hash != store_b.stream_hash:
        where = None
        if store_a.n == store_b.n:
            for name in ("targets", "doc_id", "n_chars", "n_bytes"):
                pos = first_difference(store_a, store_b, name)
                if pos is not None:
                    where = f"{name} first differ at position {pos}"
                    break
        differences.append(("stream_hash", store_a.stream_hash, store_b.stream_hash) if where is None
                           else (f"stream_hash ({where})", store_a.stream_hash, store_b.stream_hash))
    return Alignment(ok=not differences, differences=differences, flagged=flagged)
