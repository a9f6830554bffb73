"""StoreWriter: buffers whole chunks, writes them from a background thread, resumes partial stores.

Life of a store on disk:
  1. the directory and a lock file (pid, host) are created; a live lock makes a second writer fail fast;
  2. the Zarr group and empty arrays are created with `complete = False`;
  3. whole chunks are written in order; after each, `.arcache-progress.json` is replaced atomically with
     the number of positions durably written (`n_done`);
  4. `close()` writes the last partial chunk, recomputes the token-stream hash from what is on disk,
     writes provenance, and only then `complete = True`.
A killed writer leaves a store whose first `n_done` positions are final; a writer started again with the
same `setting_hash` continues from there, and since it rewrites whole chunks, the arrays end
bit-identical to an uninterrupted run given the same inputs.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import threading
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from .errors import SchemaError, StoreError, StoreExistsError
from .hashing import stream_hash
from .lock import WriterLock
from .schema import (
    DEFAULT_CHUNK_SIZE,
    LOCK_FILE,
    LOGPROB_DTYPES,
    POSITION_ARRAYS,
    PROGRESS_FILE,
    SCHEMA_VERSION,
    WRITER_ATTRS,
    array_dtype,
    validate_sections,
)

log = logging.getLogger(__name__)


def compressors():
    # zstd level 5 with byte shuffle: ~72 B/position for K=64 float16 (DESIGN section 6); level 9 is too slow.
    # crc32c makes every chunk self-checking, so `verify` finds corrupted chunk files.
    return [BloscCodec(cname="zstd", clevel=5, shuffle="shuffle"), Crc32cCodec()]


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_progress(path: Path) -> dict:
    try:
        return json.loads((Path(path) / PROGRESS_FILE).read_text())
    except FileNotFoundError:
        return {"n_done": 0}


class StoreWriter:
    """Write (or resume) one store.

    Args:
        path: the store directory (``.../name.zarr``).
        n_positions: N, known before writing (the number of scored targets).
        top_k: K; clamped to n_classes (the request is recorded as ``top_k_requested``).
        n_classes: the model's logit width.
        logprob_dtype: "float16" or "float32" for ``topk_logprobs``.
        attrs: provenance; must hold the sections of ``schema.REQUIRED_SECTIONS``.
        setting_hash: identifies everything that determines the arrays; a partial store is resumed only
            when it matches.
        optional: optional position arrays to write besides the required ones (default: entropy).
        overwrite: replace an existing store, complete or not.
    """

    def __init__(
        self,
        path,
        *,
        n_positions: int,
        top_k: int,
        n_classes: int,
        logprob_dtype: str = "float16",
        attrs: dict,
        setting_hash: str,
        optional: tuple[str, ...] = ("entropy",),
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        overwrite: bool = False,
    ):
        if logprob_dtype not in LOGPROB_DTYPES:
            raise SchemaError(f"logprob_dtype must be one of {LOGPROB_DTYPES}; got {logprob_dtype!r}")
        if n_positions <= 0:
            raise SchemaError(f"n_positions must be positive; got {n_positions} (is the dataset empty?)")
        if n_classes <= 0 or top_k <= 0 or chunk_size <= 0:
            raise SchemaError(f"need n_classes, top_k, chunk_size > 0; got {n_classes}, {top_k}, {chunk_size}")
        unknown = [n for n in optional if n not in POSITION_ARRAYS or POSITION_ARRAYS[n].required]
        if unknown:
            raise SchemaError(f"unknown optional arrays {unknown}; optional ones are "
                              f"{[n for n, s in POSITION_ARRAYS.items() if not s.required]}")
        validate_sections(attrs)
        reserved = set(WRITER_ATTRS) & set(attrs)
        if reserved:
            raise SchemaError(f"attrs may not set writer-owned keys {sorted(reserved)}")

        self.path = Path(path)
        self.n = int(n_positions)
        self.k = int(min(top_k, n_classes))
        self.n_classes = int(n_classes)
        self.logprob_dtype = logprob_dtype
        self.chunk_size = int(chunk_size)
        self.setting_hash = str(setting_hash)
        self.names = [n for n, s in POSITION_ARRAYS.items() if s.required or n in optional]
        self.dtypes = {n: np.dtype(array_dtype(POSITION_ARRAYS[n], logprob_dtype)) for n in self.names}
        self._closed = False
        self._error: BaseException | None = None

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.mkdir(exist_ok=True)
        self._lock = WriterLock(self.path / LOCK_FILE)
        self._lock.acquire()
        try:
            header = {
                "schema_version": SCHEMA_VERSION,
                "complete": False,
                "n_positions": self.n,
                "top_k": self.k,
                "top_k_requested": int(top_k),
                "n_classes": self.n_classes,
                "logprob_dtype": logprob_dtype,
                "chunk_size": self.chunk_size,
                "setting_hash": self.setting_hash,
                "arrays": self.names,
            }
            self._group, self.n_done = self._open_or_create(header, attrs, overwrite)
        except BaseException:
            self._lock.release()
            raise
        self.cursor = self.n_done
        # Store every chunk, even one equal to the fill value, so that a missing chunk file means damage.
        self._arrays = {n: self._group[n].with_config({"write_empty_chunks": True}) for n in self.names}
        self._buffers = {n: np.empty(self._shape(n, self.chunk_size), self.dtypes[n]) for n in self.names}
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._thread = threading.Thread(target=self._drain, name=f"store-writer:{self.path.name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ setup
    def _shape(self, name: str, rows: int) -> tuple[int, ...]:
        return (rows, self.k) if POSITION_ARRAYS[name].per_class else (rows,)

    def _open_or_create(self, header: dict, attrs: dict, overwrite: bool):
        zarr_json = self.path / "zarr.json"
        if zarr_json.exists() and not overwrite:
            group = zarr.open_group(self.path, mode="r+")
            existing = dict(group.attrs)
            if existing.get("complete"):
                raise StoreExistsError(
                    f"{self.path} is a complete store; pass overwrite=true to replace it, or remove it with "
                    f"`python -m pipeline.stores rm {self.path}`"
                )
            diff = [k for k in header if k != "complete" and existing.get(k) != header[k]]
            if diff:
                raise StoreExistsError(
                    f"{self.path} is a partial store of another setting (differs in {diff}); pass "
                    f"overwrite=true to replace it, or remove it with `python -m pipeline.stores rm {self.path}`"
                )
            n_done = int(read_progress(self.path)["n_done"])
            log.info("resuming %s at position %d of %d", self.path, n_done, self.n)
            return group, n_done
        if any(p.name != LOCK_FILE for p in self.path.iterdir()):
            if not overwrite:
                raise StoreExistsError(f"{self.path} exists and is not a store; choose another path or remove it")
            for p in self.path.iterdir():
                if p.name != LOCK_FILE:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        group = zarr.open_group(self.path, mode="a")  # "w" would delete the lock file
        for name in self.names:
            group.create_array(
                name,
                shape=self._shape(name, self.n),
                chunks=self._shape(name, self.chunk_size),
                dtype=self.dtypes[name],
                compressors=compressors(),
                fill_value=0,
            )
        group.attrs.update({**header, **_jsonable(attrs)})
        _write_json_atomic(self.path / PROGRESS_FILE, {"n_done": 0, "setting_hash": self.setting_hash})
        return group, 0

    def write_table(self, name: str, data: np.ndarray, chunks: int | None = None) -> None:
        """Write a non-position array (vocabulary strings, embeddings, an items table) whole."""
        if name in POSITION_ARRAYS:
            raise SchemaError(f"{name!r} is a position array; write it with write()")
        data = np.asarray(data)
        kwargs = {} if data.dtype.kind in "UO" else {"compressors": compressors()}
        arr = self._group.create_array(name, shape=data.shape, dtype=str if data.dtype.kind in "UO" else data.dtype,
                                       chunks=data.shape if chunks is None else (chunks,) + data.shape[1:],
                                       overwrite=True, **kwargs)
        arr[...] = data
        tables = [t for t in self._group.attrs.get("tables", []) if t != name] + [name]
        self._group.attrs["tables"] = tables

    # ------------------------------------------------------------------ writing
    def write(self, start: int, **arrays: np.ndarray) -> None:
        """Write the rows for positions [start, start + n). Rows already written are skipped, gaps refused."""
        self._raise_worker_error()
        if self._closed:
            raise StoreError(f"{self.path}: write() after close()")
        if set(arrays) != set(self.names):
            raise SchemaError(f"write() needs exactly the arrays {self.names}; missing "
                              f"{sorted(set(self.names) - set(arrays))}, unexpected {sorted(set(arrays) - set(self.names))}")
        rows = {len(a) for a in arrays.values()}
        if len(rows) != 1:
            raise SchemaError(f"arrays of one write() differ in length: { {n: len(a) for n, a in arrays.items()} }")
        n = rows.pop()
        if start > self.cursor:
            raise SchemaError(f"gap: write() at position {start} but positions {self.cursor}..{start} were never written")
        if start + n > self.n:
            raise SchemaError(f"write() of positions {start}..{start + n} beyond n_positions={self.n}")
        for name, a in arrays.items():
            expect = self._shape(name, n)
            if np.shape(a) != expect:
                raise SchemaError(f"array {name!r} has shape {np.shape(a)}, expected {expect}")
        skip = self.cursor - start
        if skip >= n:
            return
        pos = skip
        while pos < n:
            in_chunk = self.cursor % self.chunk_size
            take = min(n - pos, self.chunk_size - in_chunk)
            for name, a in arrays.items():
                src = np.asarray(a[pos:pos + take])
                if not np.can_cast(src.dtype, self.dtypes[name], casting="same_kind"):
                    raise SchemaError(f"array {name!r} has dtype {src.dtype}, expected {self.dtypes[name]}")
                self._buffers[name][in_chunk:in_chunk + take] = src
            self.cursor += take
            pos += take
            if self.cursor % self.chunk_size == 0 or self.cursor == self.n:
                self._submit_chunk()

    def _submit_chunk(self) -> None:
        lo = ((self.cursor - 1) // self.chunk_size) * self.chunk_size
        hi = self.cursor
        rows = hi - lo
        payload = {name: buf[:rows].copy() for name, buf in self._buffers.items()}
        while True:
            self._raise_worker_error()
            try:
                self._queue.put((lo, hi, payload), timeout=0.5)
                return
            except queue.Full:
                continue

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is not None:
                    continue
                lo, hi, payload = item
                for name, data in payload.items():
                    self._arrays[name][lo:hi] = data
                self.n_done = hi
                _write_json_atomic(self.path / PROGRESS_FILE, {"n_done": hi, "setting_hash": self.setting_hash})
            except BaseException as e:  # surfaced in the caller's thread
                self._error = e
            finally:
                self._queue.task_done()

    def _raise_worker_error(self) -> None:
        if self._error is not None:
            raise StoreError(f"background write to {self.path} failed: {self._error!r}") from self._error

    def _stop_worker(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    # ------------------------------------------------------------------ finishing
    def close(self, extra_attrs: dict | None = None):
        """Finish the store: flush, hash the token stream, write provenance, then ``complete = True``."""
        from .reader import open_store

        if self._closed:
            return open_store(self.path)
        try:
            self._stop_worker()
            self._raise_worker_error()
            if self.n_done != self.n:
                raise StoreError(f"{self.path}: close() after writing {self.n_done} of {self.n} positions; "
                                 "the store stays partial and can be resumed")
            partial = open_store(self.path, allow_partial=True)
            attrs = _jsonable(extra_attrs or {})
            attrs["stream_hash"] = stream_hash(partial)
            self._group.attrs.update(attrs)
            self._group.attrs["complete"] = True  # last
            _write_json_atomic(self.path / PROGRESS_FILE, {"n_done": self.n, "setting_hash": self.setting_hash})
        finally:
            self._closed = True
            self._lock.release()
        return open_store(self.path)

    def abort(self) -> None:
        """Stop writing: whole chunks already queued are written, the rest is dropped; the store stays partial."""
        if self._closed:
            return
        self._closed = True
        try:
            self._stop_worker()
        finally:
            self._lock.release()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None and not self._closed:
            self.close()
        else:
            self.abort()
        return False


def _jsonable(obj):
    """Plain JSON types for Zarr attributes (numpy scalars, tuples, paths)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)
