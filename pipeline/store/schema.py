"""The store format as data (DESIGN.md section 2).

A store is a Zarr v3 group. Position arrays share the leading axis N (one row per scored prediction, in
stream order) and are chunked along it only; table arrays (vocabulary, embeddings, items) are small and
written whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SchemaError

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
DEFAULT_CHUNK_SIZE = 65_536

LOGPROB_DTYPES = ("float16", "float32")

# Files the writer keeps beside the Zarr metadata (ignored by Zarr itself).
LOCK_FILE = ".arcache-lock.json"
PROGRESS_FILE = ".arcache-progress.json"


@dataclass(frozen=True)
class ArraySpec:
    name: str
    dtype: str  # numpy dtype name; "logprob" means the store's logprob_dtype
    per_class: bool  # shape (N, K) instead of (N,)
    required: bool
    doc: str


POSITION_ARRAYS: dict[str, ArraySpec] = {
    s.name: s
    for s in (
        ArraySpec("targets", "int32", False, True, "the true next class/token id"),
        ArraySpec("target_logprob", "float32", False, True, "exact log q(target), float32 from the full distribution"),
        ArraySpec("target_rank", "int32", False, True, "number of classes with a strictly larger logit than the target"),
        ArraySpec("target_ties", "int32", False, True, "number of OTHER classes whose logit equals the target's"),
        ArraySpec("topk_ids", "int32", True, True, "the K most probable ids, most probable first"),
        ArraySpec("topk_logprobs", "logprob", True, True, "normalised log-probs of topk_ids"),
        ArraySpec("tail_logmass", "float32", False, True, "log of the probability mass outside the top K (-inf if none)"),
        ArraySpec("entropy", "float32", False, False, "entropy of the full distribution (nats)"),
        ArraySpec("n_chars", "int32", False, True, "characters from the end of the previous target's span to the end of this one"),
        ArraySpec("n_bytes", "int32", False, True, "UTF-8 bytes, likewise"),
        ArraySpec("doc_id", "int32", False, True, "document / item index"),
        # Task arrays (multiple choice, LAMBADA): item and option of each scored position.
        ArraySpec("item_id", "int32", False, False, "task item index of the position"),
        ArraySpec("option_id", "int32", False, False, "option (candidate) index within the item"),
    )
}

# The token-stream hash covers these arrays (those present), in this order.
STREAM_HASH_ARRAYS = ("targets", "doc_id", "n_chars", "n_bytes", "item_id", "option_id")

# Task stores (LAMBADA last word, multiple choice) hold these int32 tables; the stream hash covers those present.
TASK_TABLES: dict[str, str] = {
    "item_label": "(n_items,) index of the correct option of each item (0 for LAMBADA's single option)",
    "item_n_options": "(n_items,) number of options of each item",
    "item_source_index": "(n_items,) index of the item in the source dataset (skipped items leave gaps)",
    "option_n_chars": "(n_options_total,) characters of each option's text, rows in (item, option) order",
    "option_n_bytes": "(n_options_total,) UTF-8 bytes of each option's text",
}
STREAM_HASH_TABLES = tuple(TASK_TABLES)

# Top-level attributes every store has. The writer fills the first group itself.
WRITER_ATTRS = ("schema_version", "complete", "n_positions", "top_k", "n_classes", "logprob_dtype",
                "chunk_size", "setting_hash", "arrays", "stream_hash", "chunk_digests", "chunk_crc32c")
# Provenance sections the caller must give, each a dict with at least these keys.
REQUIRED_SECTIONS: dict[str, tuple[str, ...]] = {
    "model": ("name",),
    "tokenizer": ("name", "vocab_hash"),
    "dataset": ("name", "split"),
    "protocol": ("context_length", "stride"),
}


def array_dtype(spec: ArraySpec, logprob_dtype: str) -> str:
    return logprob_dtype if spec.dtype == "logprob" else spec.dtype


def validate_sections(attrs: dict) -> None:
    for section, keys in REQUIRED_SECTIONS.items():
        value = attrs.get(section)
        if not isinstance(value, dict):
            raise SchemaError(f"store attribute {section!r} must be a dict with keys {list(keys)}; got {value!r}")
        missing = [k for k in keys if k not in value]
        if missing:
            raise SchemaError(f"store attribute {section!r} lacks {missing}; it has {sorted(value)}")

