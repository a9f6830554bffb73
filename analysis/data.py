"""Reading a pair of stores into the per-position arrays the kernels work on.

`PairData.load(A, B)` runs phase 1 (`kernels.prepare_pair`) chunk by chunk and keeps, per position,
a, b (float64), the partition code (int8: 2 [A right] + [B right]), the certified and possible
correctness intervals in w (4 x float64), and n_chars / n_bytes: about 57 B per position. Phase 1 is
per position, so any chunking gives the same arrays; the reductions over them use fixed blocks. Stores without
text (kinds "classification" and "masked": labels of examples, masked residues) have no n_chars / n_bytes:
there the two fields are None and BPC / BPB are null everywhere.

`MemoryStore` is a store held in memory (same read interface), for tests and benchmarks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from pipeline.store import Store

from . import kernels
from .errors import NonFiniteStoreError, TargetMismatchError
from .lut import TAIL_WIDEN, float16_tables

log = logging.getLogger(__name__)

NAMES = ("targets", "target_logprob", "target_rank", "target_ties", "topk_ids", "topk_logprobs",
         "tail_logmass")
SIDE_NAMES = ("n_chars", "n_bytes")
# Codes of the partitions: 2 [A right] + [B right].
NWW, T, F, NRR = 0, 1, 2, 3
PARTITIONS = {"Nww": NWW, "T": T, "F": F, "Nrr": NRR}


class MemoryStore(Store):
    """A store held in memory: the arrays of `pipeline.store.synthetic.arrays_from_logprobs` plus attrs (and
    optional ``tables``, e.g. a task store's item tables).

    It is a `pipeline.store.Store` whose "group" is the dict of numpy arrays, so reads, chunk iteration and the
    K-truncated view behave exactly as on disk.
    """

    def __init__(self, arrays: dict, *, n_classes: int, attrs: dict | None = None, chunk_size: int = 65536,
                 path: str = "<memory>", tables: dict | None = None):
        self.arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        n = int(len(self.arrays["targets"]))
        a = {"model": {"name": "memory"}, **(attrs or {})}
        a.update(n_positions=n, top_k=int(self.arrays["topk_ids"].shape[1]), n_classes=int(n_classes),
                 logprob_dtype=str(self.arrays["topk_logprobs"].dtype), chunk_size=int(chunk_size),
                 arrays=list(self.arrays), complete=True, tables=list(tables or {}))
        # tables (task tables, vocabulary) live in the same dict "group", outside the position arrays' list
        group = {**self.arrays, **{k: np.asarray(v) for k, v in (tables or {}).items()}}
        super().__init__(path, group, a, n)
        self.path = path


def _lists(arrs: dict) -> tuple[np.ndarray, np.ndarray, bool]:
    """(uint16 bits, float32 values, is_float16) of topk_logprobs; the unused one is an empty array."""
    lp = arrs["topk_logprobs"]
    if lp.dtype == np.float16:
        return np.ascontiguousarray(lp).view(np.uint16), np.empty((0, 0), np.float32), True
    if lp.dtype == np.float32:
        return np.empty((0, 0), np.uint16), np.ascontiguousarray(lp), False
    raise NonFiniteStoreError(f"topk_logprobs has dtype {lp.dtype}; the store format allows float16 or float32")


@dataclass
class PairData:
    """Per-position arrays of a pair (see module docstring); n positions."""

    a: np.ndarray
    b: np.ndarray
    code: np.ndarray
    l1: np.ndarray
    u1: np.ndarray
    l2: np.ndarray
    u2: np.ndarray
    n_chars: np.ndarray | None  # None: the stores have no text (classification, masked)
    n_bytes: np.ndarray | None

    @property
    def n(self) -> int:
        return int(self.a.shape[0])

    @property
    def has_text(self) -> bool:
        """Whether BPC / BPB are defined (the primary store has n_chars and n_bytes)."""
        return self.n_chars is not None and self.n_bytes is not None

    def partition_counts(self) -> dict[str, int]:
        counts = np.bincount(self.code, minlength=4)
        return {name: int(counts[c]) for name, c in PARTITIONS.items()}

    @classmethod
    def empty(cls, n: int, text: bool) -> PairData:
        """Uninitialised arrays for n positions (n_chars / n_bytes only when ``text``)."""
        return cls(*(np.empty(n, np.float64) for _ in range(2)), np.empty(n, np.int8),
                   *(np.empty(n, np.float64) for _ in range(4)),
                   *((np.empty(n, np.int64), np.empty(n, np.int64)) if text else (None, None)))

    @classmethod
    def load(cls, store_a, store_b, *, window: int | None = None) -> PairData:
        n = pair_length(store_a, store_b)
        out = cls.empty(n, has_text(store_a))
        window = window or max(store_a.chunk_size, 4 * kernels.BLOCK)
        for lo in range(0, n, window):
            prepare_range(store_a, store_b, lo, min(n, lo + window), out, lo)
        return out


def pair_length(store_a, store_b) -> int:
    """Positions of a pair (the readable ones of A); a TargetMismatchError when the stores differ in length."""
    if store_b.n != store_a.n:
        raise TargetMismatchError(f"{store_a.path} has {store_a.n} positions but {store_b.path} has {store_b.n}; "
                                  "pair only stores of one token stream", field="n_positions",
                                  value_a=store_a.n, value_b=store_b.n)
    return store_a.n_valid if hasattr(store_a, "n_valid") else store_a.n


def has_text(store) -> bool:
    """Whether the primary store has n_chars and n_bytes (BPC / BPB defined)."""
    return all(_has(store, name) for name in SIDE_NAMES)


def prepare_range(store_a, store_b, lo: int, hi: int, out: PairData, at: int) -> None:
    """Phase 1 of positions [lo, hi) of a pair into ``out`` from index ``at`` on (both engines call this: the
    in-memory `PairData.load` over the whole pair, `analysis.engines.dask` per chunk group). Raises the typed
    errors of a damaged pair (targets that differ, NaN, ids outside the vocabulary) naming the position."""
    side = list(SIDE_NAMES) if out.has_text else []
    lut_lo, lut_hi = float16_tables()
    n_vocab = max(store_a.n_classes, store_b.n_classes)
    ra = store_a.read(list(NAMES) + side, lo, hi)
    rb = store_b.read(list(NAMES), lo, hi)
    bits_a, f32_a, is16_a = _lists(ra)
    bits_b, f32_b, is16_b = _lists(rb)
    sl = slice(at, at + hi - lo)
    n_nan, first, n_bad = kernels.prepare_pair(
        ra["targets"], rb["targets"], n_vocab, TAIL_WIDEN, lut_lo, lut_hi,
        ra["target_logprob"], ra["target_rank"], ra["target_ties"], ra["topk_ids"], bits_a, f32_a,
        is16_a, ra["tail_logmass"], store_a.n_classes,
        rb["target_logprob"], rb["target_rank"], rb["target_ties"], rb["topk_ids"], bits_b, f32_b,
        is16_b, rb["tail_logmass"], store_b.n_classes,
        out.a[sl], out.b[sl], out.code[sl], out.l1[sl], out.u1[sl], out.l2[sl], out.u2[sl])
    if first >= 0:
        s = lo + int(first)
        raise TargetMismatchError(
            f"targets differ at position {s}: {ra['targets'][first]} in {store_a.path} vs "
            f"{rb['targets'][first]} in {store_b.path}, although the stores claim one token stream; "
            "re-extract one of them (or run `python -m pipeline.stores verify`)",
            field="targets", value_a=int(ra["targets"][first]), value_b=int(rb["targets"][first]))
    if n_nan or n_bad:
        _raise_bad(store_a, store_b, ra, rb, lo, n_nan, n_bad, n_vocab)
    if side:
        out.n_chars[sl] = ra["n_chars"]
        out.n_bytes[sl] = ra["n_bytes"]


def _has(store, name: str) -> bool:
    """Whether a store holds position array ``name`` (an object without `has` is assumed to hold it)."""
    return bool(store.has(name)) if hasattr(store, "has") else True


def _raise_bad(store_a, store_b, ra, rb, lo, n_nan, n_bad, n_vocab):
    for store, r in ((store_a, ra), (store_b, rb)):
        for name in ("target_logprob", "tail_logmass", "topk_logprobs"):
            x = r[name]
            rows = np.flatnonzero(np.isnan(x.reshape(len(x), -1)).any(axis=1))
            if rows.size:
                raise NonFiniteStoreError(
                    f"{store.path}: {name} is NaN at position {lo + int(rows[0])} ({n_nan} positions with NaN in "
                    "this window); the extraction is broken: re-extract this store")
        ids = r["topk_ids"]
        rows = np.flatnonzero(((ids < 0) | (ids >= n_vocab)).any(axis=1))
        if rows.size:
            raise NonFiniteStoreError(
                f"{store.path}: topk_ids outside [0, {n_vocab}) at position {lo + int(rows[0])} "
                f"({n_bad} such positions in this window); the store is damaged: re-extract it")
    raise NonFiniteStoreError(f"{n_nan} positions with NaN and {n_bad} with bad ids near position {lo}")
