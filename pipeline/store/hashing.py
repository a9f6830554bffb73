"""Hashes that identify what a store scored: the token stream and the extraction setting."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from .schema import STREAM_HASH_ARRAYS, STREAM_HASH_TABLES


def stream_hash(store) -> str:
    """sha256 over the stream arrays present (name, then little-endian bytes), read chunk by chunk, then the
    task tables present (item labels, option counts and lengths).

    Two stores are a pair iff this matches: same targets, documents, character/byte spans and task items.
    """
    names = [n for n in STREAM_HASH_ARRAYS if store.has(n)]
    hashers = {n: hashlib.sha256() for n in names}
    for _, _, arrays in store.iter_chunks(names):
        for n in names:
            hashers[n].update(np.ascontiguousarray(arrays[n], dtype="<i4").tobytes())
    h = hashlib.sha256()
    for n in names:
        h.update(n.encode())
        h.update(hashers[n].digest())
    for n in (t for t in STREAM_HASH_TABLES if t in store.tables):
        h.update(n.encode())
        h.update(hashlib.sha256(np.ascontiguousarray(store.table(n), dtype="<i4").tobytes()).digest())
    return h.hexdigest()


def config_hash(obj) -> str:
    """Stable short hash of a JSON-able object (sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
