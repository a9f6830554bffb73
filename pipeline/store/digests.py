"""Per-chunk digests: what a complete store held, chunk by chunk.

A chunk's crc32c says only that its file is self-consistent: two swapped chunk files, or a chunk copied from
another store, pass it. The writer records, when a store completes, the sha256 of every chunk's decoded values
(position arrays and tables alike) in the attribute ``chunk_digests``; `verify` recomputes them. Digests are of
decoded values, so they do not depend on the compressor. A chunk without a file at completion (an all-fill table
chunk, which Zarr does not store) is recorded as None.

Both directions stream one chunk at a time, so memory stays at one chunk and the cost is one read of the store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .integrity import DIGESTS_ATTR, chunk_file, chunk_grid, chunk_slices

ALGORITHM = "sha256(dtype, shape, little-endian values; strings as 8-byte LE length + UTF-8) per chunk, C order"


def _store_dir(group) -> Path:
    return Path(group.store.root) / group.path


def chunk_digest(data: np.ndarray) -> str:
    """sha256 of one decoded chunk: its dtype kind and shape, then its values in a fixed byte order."""
    data = np.asarray(data)
    h = hashlib.sha256()
    if data.dtype.kind in "OUT":  # strings (Zarr's variable-length UTF-8 reads as StringDType or object)
        h.update(f"str{data.shape}".encode())
        for s in data.ravel():
            b = str(s).encode("utf-8")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
    else:
        le = data.dtype.newbyteorder("<") if data.dtype.byteorder not in "|" else data.dtype
        h.update(f"{le.str}{data.shape}".encode())
        h.update(np.ascontiguousarray(data, dtype=le).tobytes())
    return h.hexdigest()


@dataclass
class ChunkRead:
    """One chunk as read: ``data`` None when it has no file (``present`` False) or could not be read (``error``)."""

    name: str
    index: int  # flat index in the chunk grid (C order); for position arrays the chunk number along N
    rows: slice
    present: bool
    data: np.ndarray | None = None
    error: BaseException | None = None


def scan(group, names) -> Iterator[ChunkRead]:
    """Read the chunks of the arrays ``names`` of ``group`` one at a time (no fill values: a chunk without a
    file is reported absent, not read)."""
    root = _store_dir(group)
    for name in names:
        arr = group[name]
        for i, coords in enumerate(chunk_grid(arr)):
            sl = chunk_slices(arr, coords)
            rows = sl[0] if sl else slice(0, 1)
            if not chunk_file(root, name, arr, coords).is_file():
                yield ChunkRead(name, i, rows, False)
                continue
            try:
                yield ChunkRead(name, i, rows, True, data=np.asarray(arr[sl]))
            except Exception as e:  # checksum or decompression failure
                yield ChunkRead(name, i, rows, True, error=e)


def chunk_digests(group) -> dict[str, list[str | None]]:
    """Array name -> sha256 hex of each chunk's decoded values (None: no file), for every array the store lists
    (its position arrays and tables)."""
    attrs = group.attrs
    names = list(attrs.get("arrays", [])) + list(attrs.get("tables", []))
    out: dict[str, list[str | None]] = {}
    for c in scan(group, names):
        if c.error is not None:
            raise c.error
        out.setdefault(c.name, []).append(chunk_digest(c.data) if c.present else None)
    return out


class DigestChecker:
    """Compares chunks, as `scan` yields them, with the digests recorded in ``attrs``; collects problems."""

    def __init__(self, attrs: dict, names):
        self.recorded = attrs.get(DIGESTS_ATTR)
        self.names = list(names)
        self.problems: list[str] = []
        self._seen: dict[str, int] = {}
        if self.recorded is not None and not isinstance(self.recorded, dict):
            self.problems.append(f"attribute {DIGESTS_ATTR!r} is damaged (not a mapping of array -> digests)")
            self.recorded = {}

    @property
    def active(self) -> bool:
        return self.recorded is not None

    def add(self, c: ChunkRead, data_digest: str | None) -> None:
        if not self.active:
            return
        rec = self.recorded.get(c.name)
        self._seen[c.name] = max(self._seen.get(c.name, 0), c.index + 1)
        if not isinstance(rec, list):
            return  # reported by finish()
        where = f"array {c.name!r} chunk {c.index} (rows {c.rows.start}..{c.rows.stop})"
        if c.index >= len(rec):
            self.problems.append(f"{where} has no recorded digest ({len(rec)} recorded)")
            return
        want = rec[c.index]
        if c.error is not None or data_digest == want:
            return  # an unreadable chunk is reported by whoever read it
        if want is None:
            self.problems.append(f"{where} had no file when the store completed, but has one now")
        elif data_digest is None:
            self.problems.append(f"{where} file is missing (it would read as fill values)")
        elif data_digest in rec:
            j = rec.index(data_digest)
            self.problems.append(f"{where} holds the data recorded for chunk {j}: chunk files swapped or misplaced")
        else:
            self.problems.append(f"{where} differs from its recorded digest: the data was altered")

    def finish(self) -> list[str]:
        if not self.active:
            return self.problems
        for name in self.names:
            rec = self.recorded.get(name)
            if not isinstance(rec, list):
                self.problems.append(f"array {name!r} has no recorded digests")
            elif self._seen.get(name, 0) != len(rec):
                self.problems.append(f"array {name!r} has {self._seen.get(name, 0)} chunks but {len(rec)} recorded "
                                     "digests")
        for name in self.recorded:
            if name not in self.names:
                self.problems.append(f"digests are recorded for {name!r}, which the store does not list")
        return self.problems


def check_digests(store) -> list[str]:
    """Problems found comparing every chunk of ``store`` (position arrays and tables) with its recorded digest.

    Empty when all match, and also when the store records no digests (a store from before digests: the caller
    says so with `has_digests`). Unreadable chunks are listed too.
    """
    names = list(store.names) + list(store.tables)
    checker = DigestChecker(store.attrs, names)
    if not checker.active:
        return checker.problems
    problems = []
    for c in scan(store.group, names):
        if c.error is not None:
            problems.append(f"array {c.name!r} chunk {c.index} is unreadable: {c.error}")
        checker.add(c, chunk_digest(c.data) if c.data is not None else None)
    return problems + checker.finish()


def has_digests(store) -> bool:
    return DIGESTS_ATTR in store.attrs
