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
        # text stores only (required for kinds "text" and "task", see KIND_ARRAYS)
        ArraySpec("n_chars", "int32", False, False, "characters from the end of the previous target's span to the end of this one"),
        ArraySpec("n_bytes", "int32", False, False, "UTF-8 bytes, likewise"),
        ArraySpec("doc_id", "int32", False, True, "document / item index"),
        # Task arrays (multiple choice, LAMBADA): item and option of each scored position.
        ArraySpec("item_id", "int32", False, False, "task item index of the position"),
        ArraySpec("option_id", "int32", False, False, "option (candidate) index within the item"),
        # Word-level fusion across tokenizers (DESIGN section 7).
        ArraySpec("bow_logmass", "float32", False, False,
                  "log of the probability mass of the tokens whose text begins with a space (a new word)"),
        ArraySpec("word_start", "uint8", False, False, "1 where the target token starts at a word boundary"),
        # Masked models (DESIGN section 8): the residue's index in its sequence (doc_id).
        ArraySpec("token_index", "int32", False, False, "index of the masked token in its sequence"),
    )
}

# What a store's positions are (attribute `kind`; stores written before it existed are "text", or "task" when
# they have a `task` attribute). Each kind requires these arrays besides the always-required ones.
KIND_ARRAYS: dict[str, tuple[str, ...]] = {
    "text": ("n_chars", "n_bytes"),            # one position per scored token of a text
    "task": ("n_chars", "n_bytes", "item_id", "option_id"),  # LAMBADA / multiple choice continuations
    "classification": (),                      # one position per example; targets are labels; no text
    "masked": ("token_index",),                # one position per masked token; doc_id is the sequence
}
STORE_KINDS = tuple(KIND_ARRAYS)


def store_kind_of(attrs: dict) -> str:
    """The kind of a store from its attributes (older stores have no `kind`)."""
    kind = attrs.get("kind")
    if kind is None:
        return "task" if "task" in attrs else "text"
    return kind


def required_arrays(kind: str) -> tuple[str, ...]:
    if kind not in KIND_ARRAYS:
        raise SchemaError(f"unknown store kind {kind!r}; known kinds are {list(STORE_KINDS)}")
    return tuple(n for n, s in POSITION_ARRAYS.items() if s.required) + KIND_ARRAYS[kind]


# Zarr dimension names (so xarray.open_zarr can open a store): per-position arrays and per-class arrays.
POSITION_DIMS = ("position",)
PER_CLASS_DIMS = ("position", "k")
_TABLE_DIMS = {"vocab": ("class",), "embedding": ("class", "embedding_dim")}


def table_dims(name: str, ndim: int) -> tuple[str, ...]:
    """Dimension names of a table: the class axis for vocab/embedding, items and options for task tables,
    else names of the table's own (tables of different lengths must not share a dimension name)."""
    if name in _TABLE_DIMS and len(_TABLE_DIMS[name]) == ndim:
        return _TABLE_DIMS[name]
    if name.startswith("item_") and ndim == 1:
        return ("item",)
    if name.startswith("option_") and ndim == 1:
        return ("option",)
    return tuple(f"{name}_dim{i}" for i in range(ndim))

# The token-stream hash covers these arrays (those present), in this order.
STREAM_HASH_ARRAYS = ("targets", "doc_id", "n_chars", "n_bytes", "item_id", "option_id", "token_index")

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
WRITER_ATTRS = ("schema_version", "kind", "complete", "n_positions", "top_k", "n_classes", "logprob_dtype",
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

