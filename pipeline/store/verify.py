"""Checking stores on disk: schema, completeness, chunk integrity and the token-stream hash."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import StoreError
from .hashing import stream_hash
from .reader import open_store
from .schema import POSITION_ARRAYS, REQUIRED_SECTIONS, array_dtype

log = logging.getLogger(__name__)


@dataclass
class VerifyReport:
    path: Path
    problems: list[str] = field(default_factory=list)
    complete: bool = False
    checked_chunks: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(path, check_data: bool = True) -> VerifyReport:
    """Every problem found, not just the first. ``check_data`` reads every chunk (checksums, NaN) and rehashes."""
    report = VerifyReport(Path(path))
    try:
        store = open_store(path, allow_partial=True)
    except StoreError as e:
        report.problems.append(str(e))
        return report
    report.complete = store.complete
    if not store.complete:
        report.problems.append(f"incomplete: {store.n_valid} of {store.n} positions written")
    for section, keys in REQUIRED_SECTIONS.items():
        value = store.attrs.get(section)
        if not isinstance(value, dict) or any(k not in value for k in keys):
            report.problems.append(f"attribute {section!r} missing or lacks {list(keys)}")
    for name, spec in POSITION_ARRAYS.items():
        if spec.required and name not in store.names:
            report.problems.append(f"required array {name!r} missing")
    for name in store.names:
        try:
            arr = store.group[name]
        except KeyError:
            report.problems.append(f"array {name!r} listed in attrs but absent")
            continue
        spec = POSITION_ARRAYS[name]
        want_shape = (store.n, store.k) if spec.per_class else (store.n,)
        want_dtype = np.dtype(array_dtype(spec, store.logprob_dtype))
        if arr.shape != want_shape or arr.dtype != want_dtype:
            report.problems.append(f"array {name!r} is {arr.shape} {arr.dtype}, expected {want_shape} {want_dtype}")
            continue
        expected = math.ceil(store.n_valid / store.chunk_size)
        have = arr.nchunks_initialized
        if have < expected:
            report.problems.append(f"array {name!r}: {expected - have} of its {expected} written chunks are missing")
    if not check_data or any("missing" in p or "expected" in p for p in report.problems):
        return report
    for name in store.names:
        arr = store.group[name]
        for lo in range(0, store.n_valid, store.chunk_size):
            hi = min(store.n_valid, lo + store.chunk_size)
            try:
                data = arr[lo:hi]
            except Exception as e:  # checksum or decompression failure
                report.problems.append(f"array {name!r} chunk at positions {lo}..{hi} is corrupt: {e}")
                continue
            report.checked_chunks += 1
            if data.dtype.kind == "f" and np.isnan(data).any():
                report.problems.append(f"array {name!r} has NaN in positions {lo}..{hi}")
    if store.complete and not any("corrupt" in p for p in report.problems):
        h = stream_hash(store)
        if h != store.stream_hash:
            report.problems.append(f"token-stream hash mismatch: stored {store.stream_hash}, computed {h}")
    return report


def find_stores(root) -> list[Path]:
    """Every store directory (``*.zarr`` holding zarr.json) under root, sorted."""
    root = Path(root)
    if (root / "zarr.json").is_file() and root.suffix == ".zarr":
        return [root]
    found = []
    for p in sorted(root.rglob("*.zarr")):
        if (p / "zarr.json").is_file() and not any(q.suffix == ".zarr" for q in p.parents):
            found.append(p)
    return found
