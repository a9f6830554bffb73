"""StoreWriter: buffers whole chunks, writes them from a background thread, resumes partial stores.

Life of a store on disk:
  0. the path must be missing, an empty directory or a store of this project (`store_kind`); anything else
     is refused with NotAStoreError before anything is created or deleted;
  1. the directory and a lock file are created and the file is locked (flock: released by the kernel when the
     writer dies); a live lock makes a second writer fail fast;
  2. the progress file is written first (it marks the directory as this project's), then the Zarr group and
     empty arrays with `complete = False`;
  3. whole chunks are written in order; after each, `.arcache-progress.json` is replaced atomically with
     the number of positions durably written (`n_done`);
  4. `close()` writes the last partial chunk, recomputes the token-stream hash from what is on disk,
     writes provenance, and only then `complete = True`.
A killed writer leaves a store whose first `n_done` positions are final; a writer started again with the
same `setting_hash` continues from there, and since it rewrites whole chunks, the arrays end
bit-identical to an uninterrupted run given the same inputs. Temp files a killed writer left (Zarr's
`*.<uuid>.partial` chunk files, the progress file's `.tmp`) are removed on resume.

Overwrite removes only the store's own entries (its metadata, its arrays and tables, the writer's files);
anything else found in the directory is left in place and named in a warning.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from .errors import NotAStoreError, SchemaError, SettingMismatchError, StoreError, StoreExistsError
from .hashing import stream_hash
from .lock import WriterLock
from .schema import (
    DEFAULT_CHUNK_SIZE,
    LOCK_FILE,
    LOGPROB_DTYPES,
    PER_CLASS_DIMS,
    POSITION_ARRAYS,
    POSITION_DIMS,
    PROGRESS_FILE,
    SCHEMA_VERSION,
    SUPPORTED_SCHEMA_VERSIONS,
    TASK_TABLES,
    WRITER_ATTRS,
    array_dtype,
    required_arrays,
    table_dims,
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


# ------------------------------------------------------------------ what a directory provably is
# Zarr's LocalStore writes `<name>.<uuid4 hex>.partial` and renames it; the writer's own temp is `<file>.tmp`.
_TEMP_FILE = re.compile(r"(\.[0-9a-f]{32}\.partial|^\.arcache-.*\.tmp)$")
# Tables a writer of this project may add (besides the ones named in the `tables` attribute).
_KNOWN_TABLES = ("vocab", "embedding", *TASK_TABLES)


def _group_attrs(path: Path) -> dict | None:
    """The attributes of `path/zarr.json` if it is a Zarr group written by this project, else None."""
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    attrs = meta.get("attributes") if isinstance(meta, dict) and meta.get("node_type") == "group" else None
    if (isinstance(attrs, dict) and attrs.get("schema_version") in SUPPORTED_SCHEMA_VERSIONS
            and "setting_hash" in attrs and "arrays" in attrs):
        return attrs
    return None


def _our_progress(path: Path) -> dict | None:
    try:
        prog = json.loads((path / PROGRESS_FILE).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return prog if isinstance(prog, dict) and "n_done" in prog and "setting_hash" in prog else None


def store_kind(path) -> str:
    """'missing', 'empty' (a directory holding nothing, or only a writer lock file) or 'store' (its zarr.json
    carries this project's schema attributes, or it holds this project's progress file).

    Raises NotAStoreError for anything else: a file, a foreign Zarr group, an ordinary folder. Only these
    three kinds may ever be written into or deleted by this project.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return "missing"
    if path.is_symlink() or not path.is_dir():
        raise NotAStoreError(f"{path} is not a directory; a store path must be a new or empty directory, or a "
                             "store of this project. Nothing was changed")
    entries = [p.name for p in path.iterdir()]
    if not entries or entries == [LOCK_FILE]:
        return "empty"
    if _group_attrs(path) is not None or _our_progress(path) is not None:
        return "store"
    shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
    raise NotAStoreError(f"{path} is not a store of this project (it holds {shown}) and is not empty; nothing was "
                         "deleted: choose another store= path, or move those files away yourself")


def remove_temp_files(path: Path) -> list[Path]:
    """Delete temp files a killed writer left inside the store (Zarr's `*.partial` chunk files, `.tmp`)."""
    found = [p for p in Path(path).rglob("*") if _TEMP_FILE.search(p.name) and p.is_file()]
    for p in found:
        p.unlink(missing_ok=True)
    if found:
        log.info("%s: removed %d temp file(s) a killed writer left", path, len(found))
    return found


def _own_entries(path: Path) -> list[Path]:
    """The entries of a store directory that belong to the store (never the lock file, which its holder owns)."""
    attrs = _group_attrs(path) or {}
    names = set(POSITION_ARRAYS) | set(_KNOWN_TABLES) | set(attrs.get("arrays") or []) | set(attrs.get("tables") or [])
    own = []
    for p in path.iterdir():
        if p.name in ("zarr.json", PROGRESS_FILE) or _TEMP_FILE.search(p.name):
            own.append(p)
        elif p.name in names and p.is_dir() and not p.is_symlink():
            own.append(p)
    return own


def clear_store(path, *, remove_dir: bool = False) -> list[Path]:
    """Delete a store of this project: only its own entries. Returns what was left because it is not the store's.

    The Zarr metadata goes first and the progress file last, so a kill midway leaves a directory that is still
    recognisably this project's (and is not mistaken for a complete store).
    """
    path = Path(path)
    if store_kind(path) == "missing":
        return []
    own = _own_entries(path)
    order = sorted(own, key=lambda p: (p.name != "zarr.json", p.name == PROGRESS_FILE))
    for p in order:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    kept = [p for p in path.iterdir() if p.name != LOCK_FILE]
    if kept:
        log.warning("%s: left %s in place (not part of the store)", path, ", ".join(p.name for p in kept))
    elif remove_dir:
        (path / LOCK_FILE).unlink(missing_ok=True)
        try:
            path.rmdir()
        except OSError:
            pass
    return kept


def _setting_diff(existing: dict, new: dict) -> list[str]:
    """Provenance fields (model, tokenizer, dataset, protocol, task) whose values differ, flattened."""
    def flat(d, prefix):
        if isinstance(d, dict):
            out = {}
            for k, v in d.items():
                out.update(flat(v, f"{prefix}.{k}"))
            return out
        return {prefix: d}

    diff = []
    for section in ("model", "tokenizer", "dataset", "protocol", "task"):
        a, b = flat(existing.get(section), section), flat(new.get(section), section)
        diff += [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return diff


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
        kind: what the positions are (``schema.KIND_ARRAYS``): "text", "task", "classification" or "masked";
            it decides which arrays besides the always-required ones must be written, and is recorded.
        overwrite: replace an existing store of this project, complete or not (only its own entries are
            deleted; a path that is not a store of this project is refused with NotAStoreError).
        lock: the store's WriterLock, already held by the caller (taken before slow loads); the caller
            releases it. Without it the writer takes and releases the lock itself.
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
        kind: str = "text",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        overwrite: bool = False,
        lock: WriterLock | None = None,
    ):
        if logprob_dtype not in LOGPROB_DTYPES:
            raise SchemaError(f"logprob_dtype must be one of {LOGPROB_DTYPES}; got {logprob_dtype!r}")
        if n_positions <= 0:
            raise SchemaError(f"n_positions must be positive; got {n_positions} (is the dataset empty?)")
        if n_classes <= 0 or top_k <= 0 or chunk_size <= 0:
            raise SchemaError(f"need n_classes, top_k, chunk_size > 0; got {n_classes}, {top_k}, {chunk_size}")
        required = required_arrays(kind)
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
        self.kind = kind
        self.names = [n for n in POSITION_ARRAYS if n in required or n in optional]
        self.dtypes = {n: np.dtype(array_dtype(POSITION_ARRAYS[n], logprob_dtype)) for n in self.names}
        self._closed = False
        self._error: BaseException | None = None

        store_kind(self.path)  # refuse a foreign path before creating anything in it
        if lock is None:
            self._lock, self._own_lock = WriterLock.for_store(self.path), True
            self._lock.acquire()
        else:
            if not lock.held or lock.lock_file != WriterLock.for_store(self.path).lock_file:
                raise StoreError(f"the lock given to the writer of {self.path} is not this store's held lock")
            self._lock, self._own_lock = lock, False
        try:
            header = {
                "schema_version": SCHEMA_VERSION,
                "kind": kind,
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
            self._group, self.n_done = self._open_or_create(header, _jsonable(attrs), overwrite)
        except BaseException:
            self._release_lock()
            raise
        self._lock.keep_directories()
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
        kind = store_kind(self.path)  # again, now under the lock
        if kind == "store":
            remove_temp_files(self.path)
            existing = _group_attrs(self.path)
            if overwrite:
                # mark the directory as a fresh partial store of this setting before deleting anything
                _write_json_atomic(self.path / PROGRESS_FILE, {"n_done": 0, "setting_hash": self.setting_hash})
                clear_store(self.path)
            elif existing is None:
                n_done = int(_our_progress(self.path)["n_done"])
                if n_done > 0:
                    raise StoreExistsError(
                        f"{self.path}: its zarr.json is missing or unreadable but {n_done} positions were written; "
                        f"pass overwrite=true to replace it, or remove it with `python -m pipeline.stores rm {self.path}`")
                clear_store(self.path)  # killed while being created: nothing was written yet
            else:
                return self._resume(header, attrs, existing)
        _write_json_atomic(self.path / PROGRESS_FILE, {"n_done": 0, "setting_hash": self.setting_hash})
        group = zarr.open_group(self.path, mode="a")  # "w" would delete the lock file
        for name in self.names:
            group.create_array(
                name,
                shape=self._shape(name, self.n),
                chunks=self._shape(name, self.chunk_size),
                dtype=self.dtypes[name],
                compressors=compressors(),
                fill_value=0,
                dimension_names=PER_CLASS_DIMS if POSITION_ARRAYS[name].per_class else POSITION_DIMS,
            )
        group.attrs.update({**header, **attrs})
        return group, 0

    def _resume(self, header: dict, attrs: dict, existing: dict):
        fix = (f"pass overwrite=true to replace it, or remove it with `python -m pipeline.stores rm {self.path}`")
        if existing.get("complete"):
            raise StoreExistsError(f"{self.path} is a complete store; {fix}")
        if existing.get("setting_hash") != self.setting_hash:
            fields = _setting_diff(existing, attrs)
            shown = ", ".join(fields[:6]) + (", ..." if len(fields) > 6 else "") if fields else "setting_hash only"
            raise SettingMismatchError(
                f"{self.path} is a partial store of another setting (setting_hash {existing.get('setting_hash')} != "
                f"{self.setting_hash}; differs in {shown}): resuming it would mix two settings; {fix}")
        diff = [k for k in header if k != "complete" and existing.get(k) != header[k]]
        if diff:
            raise SettingMismatchError(f"{self.path} is a partial store of another setting (differs in {diff}); {fix}")
        n_done = int(read_progress(self.path)["n_done"])
        log.info("resuming %s at position %d of %d", self.path, n_done, self.n)
        return zarr.open_group(self.path, mode="r+"), n_done

    def write_table(self, name: str, data: np.ndarray, chunks: int | None = None) -> None:
        """Write a non-position array (vocabulary strings, embeddings, an items table) whole."""
        if name in POSITION_ARRAYS:
            raise SchemaError(f"{name!r} is a position array; write it with write()")
        data = np.asarray(data)
        # strings too: their crc32c is checked before the string decoder reads a (possibly damaged) item count
        arr = self._group.create_array(name, shape=data.shape, dtype=str if data.dtype.kind in "UO" else data.dtype,
                                       chunks=data.shape if chunks is None else (chunks,) + data.shape[1:],
                                       overwrite=True, compressors=compressors(),
                                       dimension_names=table_dims(name, data.ndim))
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
        from .digests import chunk_digests
        from .integrity import chunk_tails
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
            attrs["chunk_digests"] = chunk_digests(self._group)  # what `verify` checks every chunk against
            attrs["chunk_crc32c"] = chunk_tails(self._group)  # what every open checks each chunk file's identity by
            self._group.attrs.update(attrs)
            self._group.attrs["complete"] = True  # last
            _write_json_atomic(self.path / PROGRESS_FILE, {"n_done": self.n, "setting_hash": self.setting_hash})
        finally:
            self._closed = True
            self._release_lock()
        return open_store(self.path)

    def abort(self) -> None:
        """Stop writing: whole chunks already queued are written, the rest is dropped; the store stays partial."""
        if self._closed:
            return
        self._closed = True
        try:
            self._stop_worker()
        finally:
            self._release_lock()

    def _release_lock(self) -> None:
        if self._own_lock:
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
