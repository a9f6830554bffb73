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

A store may also be written in shards (``shard=(i, S)``, see `shards.py`): each shard writes its own whole
chunks, records them in its own progress file, holds a lease instead of the flock, and `shards.finalize`
completes the store through the same `finish_store` as close().

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

from .errors import (
    NotAStoreError,
    SchemaError,
    SettingMismatchError,
    StoreError,
    StoreExistsError,
    StoreLockedError,
)
from .hashing import stream_hash
from .lock import LEASE_PREFIX, Lease, WriterLock, lease_file, live_holders
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
    """The writer's progress: ``n_done``, the positions from 0 on that are durably written (what a partial store
    may be read up to). A store written in shards also gets ``chunks_done`` (sorted chunk indices, merged from
    its shards' progress files) and ``n_written`` (the positions in them), ``n_done`` being their prefix."""
    try:
        prog = json.loads((Path(path) / PROGRESS_FILE).read_text())
    except FileNotFoundError:
        return {"n_done": 0}
    if isinstance(prog, dict) and int(prog.get("num_shards") or 1) > 1:
        n, cs = int(prog["n_positions"]), int(prog["chunk_size"])
        done = set()
        for i in range(int(prog["num_shards"])):
            done |= set(read_shard_progress(path, i).get("chunks", []))
        n_chunks = -(-n // cs)
        done = sorted(c for c in done if 0 <= c < n_chunks)
        prefix = 0
        while prefix < n_chunks and prefix in done:
            prefix += 1
        prog = {**prog, "chunks_done": done, "n_done": min(prefix * cs, n),
                "n_written": sum(min(cs, n - c * cs) for c in done)}
    return prog


SHARD_PROGRESS = ".arcache-progress.shard-{}.json"


def read_shard_progress(path, shard: int) -> dict:
    """The progress file of one shard ({} if it has none): ``chunks`` it wrote, ``finished``, its runs."""
    try:
        prog = json.loads((Path(path) / SHARD_PROGRESS.format(shard)).read_text())
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return {}
    return prog if isinstance(prog, dict) else {}


def shard_chunks(n_positions: int, chunk_size: int, num_shards: int, shard: int) -> range:
    """The chunks shard `shard` of `num_shards` owns: a contiguous range, the shards' sizes differing by at most
    one chunk (contiguous, so each shard scores at most one batch of windows twice at each end of its range)."""
    n_chunks = -(-int(n_positions) // int(chunk_size))
    return range(shard * n_chunks // num_shards, (shard + 1) * n_chunks // num_shards)


# ------------------------------------------------------------------ what a directory provably is
# Zarr's LocalStore writes `<name>.<uuid4 hex>.partial` and renames it; the writer's own temp is `<file>.tmp`.
_TEMP_FILE = re.compile(r"(\.[0-9a-f]{32}\.partial|^\.arcache-.*\.(tmp|stale))$")
# The writer lock and the leases belong to their holders, never to the store.
_LOCK_ENTRY = re.compile(r"^\.arcache-lock(\.json|\.[\w-]+\.json(\.[0-9a-f]{32}\.(tmp|stale))?)$")
_SHARD_PROGRESS = re.compile(r"^\.arcache-progress\.shard-\d+\.json$")
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
    if all(_LOCK_ENTRY.match(e) for e in entries):
        return "empty"
    if _group_attrs(path) is not None or _our_progress(path) is not None:
        return "store"
    shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
    raise NotAStoreError(f"{path} is not a store of this project (it holds {shown}) and is not empty; nothing was "
                         "deleted: choose another store= path, or move those files away yourself")


def remove_temp_files(path: Path, chunks=None, own: tuple[str, ...] = ()) -> list[Path]:
    """Delete temp files a killed writer left inside the store (Zarr's `*.partial` chunk files, `.tmp`).

    ``chunks``: only the chunk temp files of these chunk indices along the position axis, and of the writer's
    files only those starting with a name in ``own`` (a shard, while other shards may be writing theirs).
    """
    path = Path(path)
    found = [p for p in path.rglob("*") if _TEMP_FILE.search(p.name) and not _LOCK_ENTRY.match(p.name) and p.is_file()]
    if chunks is not None:
        def mine(p: Path) -> bool:
            rel = p.relative_to(path).parts
            if len(rel) == 1:
                return any(p.name.startswith(o) for o in own)
            # <array>/c/<i>.<uuid>.partial (1-d) or <array>/c/<i>/<j>.<uuid>.partial (2-d)
            if len(rel) >= 3 and rel[1] == "c":
                head = rel[2].split(".")[0]
                return head.isdigit() and int(head) in chunks
            return False

        found = [p for p in found if mine(p)]
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
        if _LOCK_ENTRY.match(p.name):
            continue
        if p.name in ("zarr.json", PROGRESS_FILE) or _TEMP_FILE.search(p.name) or _SHARD_PROGRESS.match(p.name):
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
    kept = [p for p in path.iterdir() if not _LOCK_ENTRY.match(p.name)]
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
        lock: the store's WriterLock (or its `Lease` 'writer'; a shard's: its `Lease` 'shard-<i>'), already held
            by the caller (taken before slow loads); the caller releases it. Without it the writer takes and
            releases the lock itself.
        shard: ``(i, S)``: write only shard i of S (`shard_chunks`: a contiguous range of whole chunks). Rows
            outside the shard's positions are dropped; progress is per chunk, in the shard's own progress file;
            the lock is a lease (it survives a move to another host, see `lock.Lease`); ``close()`` finishes the
            shard, and `shards.finalize` the store once every shard is done. Creating the store and writing its
            tables happen under the store's lease 'store', so shards may start together.
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
        lock: WriterLock | Lease | None = None,
        shard: tuple[int, int] | None = None,
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
        if shard is not None and int(shard[1]) == 1 and int(shard[0]) == 0:
            shard = None
        if shard is not None:
            i, S = int(shard[0]), int(shard[1])
            if not 0 <= i < S:
                raise SchemaError(f"shard {i} of {S}: need 0 <= shard < num_shards")
            if overwrite:
                raise SchemaError("overwrite is not allowed for a shard (it would delete the other shards' chunks); "
                                  f"remove the store with `python -m pipeline.stores rm {self.path}` first")
            shard = (i, S)
        self.shard = shard
        own_file = lease_file(self.path, f"shard-{shard[0]}") if shard else None

        store_kind(self.path)  # refuse a foreign path before creating anything in it
        if lock is None:
            self._lock = Lease(own_file, what=f"{self.path} shard {shard[0]}") if shard else WriterLock.for_store(self.path)
            self._own_lock = True
            self._lock.acquire()
        else:
            allowed = (own_file,) if shard else (WriterLock.for_store(self.path).lock_file, lease_file(self.path, "writer"))
            if not lock.held or lock.lock_file not in allowed:
                raise StoreError(f"the lock given to the writer of {self.path} is not this store's held "
                                 f"{'shard lease' if shard else 'lock'}")
            self._lock, self._own_lock = lock, False
        try:
            # a shard may write beside other shards (and the store lease, taken below); nothing else may write
            ignore = (tuple(f.name for f in _lease_names(self.path) if f.name.startswith(LEASE_PREFIX + "shard-")) +
                      (lease_file(self.path, "store").name,)) if shard else (self._lock.lock_file.name,)
            busy = live_holders(self.path, ignore=ignore)
            if busy:
                raise StoreLockedError(f"{self.path} is being written by {'; '.join(busy)}; "
                                       f"{'a shard' if shard else 'a writer'} cannot write it at the same time")
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
            if shard:
                header["num_shards"] = shard[1]
                with self._store_lease():
                    self._group, _ = self._open_or_create(header, _jsonable(attrs), overwrite)
                self.n_done = self._shard_resume_point()
            else:
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
            if self.shard:
                remove_temp_files(self.path, chunks=set(self.owned),
                                  own=(SHARD_PROGRESS.format(self.shard[0]), PROGRESS_FILE + ".tmp"))
            else:
                remove_temp_files(self.path)
            existing = _group_attrs(self.path)
            if overwrite:
                # mark the directory as a fresh partial store of this setting before deleting anything
                _write_json_atomic(self.path / PROGRESS_FILE, self._main_progress(0))
                clear_store(self.path)
            elif existing is None:
                prog = read_progress(self.path)
                n_done = int(prog.get("n_written", prog["n_done"]))
                if n_done > 0:
                    raise StoreExistsError(
                        f"{self.path}: its zarr.json is missing or unreadable but {n_done} positions were written; "
                        f"pass overwrite=true to replace it, or remove it with `python -m pipeline.stores rm {self.path}`")
                clear_store(self.path)  # killed while being created: nothing was written yet
            else:
                return self._resume(header, attrs, existing)
        _write_json_atomic(self.path / PROGRESS_FILE, self._main_progress(0))
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
        theirs, mine = int(existing.get("num_shards") or 1), int(header.get("num_shards") or 1)
        if theirs != mine:
            how = (f"run its missing shards with extract.num_shards={theirs} extract.shard=<i>, then "
                   f"`python -m pipeline.stores finalize {self.path}`" if theirs > 1 else
                   "resume it without extract.num_shards")
            raise SettingMismatchError(
                f"{self.path} is a partial store written {f'in {theirs} shards' if theirs > 1 else 'by one writer'}, "
                f"not {f'in {mine} shards' if mine > 1 else 'by one writer'}: {how}; or {fix}")
        diff = [k for k in header if k != "complete" and existing.get(k) != header[k]]
        if diff:
            raise SettingMismatchError(f"{self.path} is a partial store of another setting (differs in {diff}); {fix}")
        if self.shard:
            return zarr.open_group(self.path, mode="r+"), 0  # the shard's resume point: _shard_resume_point
        n_done = int(read_progress(self.path)["n_done"])
        log.info("resuming %s at position %d of %d", self.path, n_done, self.n)
        return zarr.open_group(self.path, mode="r+"), n_done

    # ------------------------------------------------------------------ shards
    @property
    def owned(self) -> range:
        """The chunks this writer writes (all of them for a single writer)."""
        if not self.shard:
            return range(-(-self.n // self.chunk_size))
        return shard_chunks(self.n, self.chunk_size, self.shard[1], self.shard[0])

    @property
    def stop(self) -> int:
        """One past the last position this writer writes (N for a single writer)."""
        return min(self.owned.stop * self.chunk_size, self.n) if self.shard else self.n

    @property
    def start(self) -> int:
        """The first position this writer writes (0 for a single writer)."""
        return min(self.owned.start * self.chunk_size, self.n) if self.shard else 0

    def _main_progress(self, n_done: int) -> dict:
        prog = {"n_done": n_done, "setting_hash": self.setting_hash}
        if self.shard:
            prog.update(num_shards=self.shard[1], chunk_size=self.chunk_size, n_positions=self.n)
        return prog

    def _store_lease(self) -> Lease:
        lease = Lease(lease_file(self.path, "store"), what=f"{self.path} (store lease)")
        lease.acquire(wait_s=STORE_LEASE_WAIT_S)
        return lease

    def _shard_resume_point(self) -> int:
        i, S = self.shard
        prog = read_shard_progress(self.path, i)
        if prog and (prog.get("setting_hash") != self.setting_hash or prog.get("num_shards") != S):
            raise SettingMismatchError(f"{self.path}: the progress file of shard {i} belongs to another setting "
                                       f"or shard count ({prog.get('setting_hash')}, {prog.get('num_shards')} shards); "
                                       f"remove the store with `python -m pipeline.stores rm {self.path}`")
        self._done = {c for c in prog.get("chunks", []) if c in self.owned}
        self._runs = list(prog.get("runs", []))
        first = next((c for c in self.owned if c not in self._done), None)
        at = self.stop if first is None else first * self.chunk_size
        if self._done:
            log.info("resuming %s shard %d of %d at position %d (its positions %d..%d)", self.path, i, S, at,
                     self.start, self.stop)
        return at

    def _write_shard_progress(self, **extra) -> None:
        i, S = self.shard
        _write_json_atomic(self.path / SHARD_PROGRESS.format(i),
                           {"setting_hash": self.setting_hash, "num_shards": S, "shard": i,
                            "owned": [self.owned.start, self.owned.stop], "chunks": sorted(self._done),
                            "finished": self._done >= set(self.owned), "runs": self._runs, **extra})

    def write_table(self, name: str, data: np.ndarray, chunks: int | None = None) -> None:
        """Write a non-position array (vocabulary strings, embeddings, an items table) whole.

        A shard writes a table only if no shard has yet (the tables of one setting are the same in every
        shard), under the store lease."""
        if name in POSITION_ARRAYS:
            raise SchemaError(f"{name!r} is a position array; write it with write()")
        if not self.shard:
            return self._write_table(self._group, name, data, chunks)
        with self._store_lease():
            group = zarr.open_group(self.path, mode="r+")  # the tables other shards wrote meanwhile
            if name not in group.attrs.get("tables", []):
                self._write_table(group, name, data, chunks)

    @staticmethod
    def _write_table(group, name: str, data: np.ndarray, chunks: int | None) -> None:
        data = np.asarray(data)
        # strings too: their crc32c is checked before the string decoder reads a (possibly damaged) item count
        arr = group.create_array(name, shape=data.shape, dtype=str if data.dtype.kind in "UO" else data.dtype,
                                       chunks=data.shape if chunks is None else (chunks,) + data.shape[1:],
                                       overwrite=True, compressors=compressors(),
                                       dimension_names=table_dims(name, data.ndim))
        arr[...] = data
        tables = [t for t in group.attrs.get("tables", []) if t != name] + [name]
        group.attrs["tables"] = tables

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
        if start >= self.stop and self.shard:
            return  # a batch entirely past this shard's positions
        if start > self.cursor:
            raise SchemaError(f"gap: write() at position {start} but positions {self.cursor}..{start} were never written")
        if start + n > self.n:
            raise SchemaError(f"write() of positions {start}..{start + n} beyond n_positions={self.n}")
        for name, a in arrays.items():
            expect = self._shape(name, n)
            if np.shape(a) != expect:
                raise SchemaError(f"array {name!r} has shape {np.shape(a)}, expected {expect}")
        n = min(n, self.stop - start)  # rows past a shard's positions belong to the next shard
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
        if self.shard and self._lock.lost:
            self._lock.check()  # a shard whose lease was taken over stops

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
                if self.shard:
                    self._lock.check()  # never write a chunk another holder of this shard's lease may write
                for name, data in payload.items():
                    self._arrays[name][lo:hi] = data
                self.n_done = hi
                if self.shard:
                    self._done.add(lo // self.chunk_size)
                    self._write_shard_progress()
                else:
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
            return open_store(self.path, allow_partial=bool(self.shard))
        try:
            self._stop_worker()
            self._raise_worker_error()
            if self.n_done != self.stop:
                what = f"shard {self.shard[0]}'s positions {self.start}..{self.stop}" if self.shard else "positions"
                raise StoreError(f"{self.path}: close() after writing {self.n_done - self.start} of "
                                 f"{self.stop - self.start} {what}; the store stays partial and can be resumed")
            if self.shard:  # the shard is done; `shards.finalize` finishes the store once every shard is
                self._lock.check()
                self._runs.append(_jsonable(extra_attrs or {}))
                self._write_shard_progress()
            else:
                finish_store(self.path, self._group, extra_attrs or {}, self.setting_hash)
        finally:
            self._closed = True
            self._release_lock()
        return open_store(self.path, allow_partial=bool(self.shard))

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


STORE_LEASE_WAIT_S = 600.0  # how long a shard waits for the store lease (another shard creating the store)


def _lease_names(path: Path) -> list[Path]:
    from .lock import lease_files

    return lease_files(path)


def finish_store(path, group, extra_attrs: dict, setting_hash: str) -> None:
    """Complete a store whose every position is written: hash the token stream, record every chunk's digest and
    crc32c, write ``extra_attrs`` (provenance, metrics), then ``complete = True`` (last), then the progress file.
    One function for the single writer's close() and for finalising a store written in shards."""
    from .digests import chunk_digests
    from .integrity import chunk_tails
    from .reader import open_store

    path = Path(path)
    partial = open_store(path, allow_partial=True)
    if partial.n_valid != partial.n:
        raise StoreError(f"{path}: only {partial.n_valid} of {partial.n} positions are written; it cannot complete")
    attrs = _jsonable(extra_attrs)
    attrs["stream_hash"] = stream_hash(partial)
    attrs["chunk_digests"] = chunk_digests(group)  # what `verify` checks every chunk against
    attrs["chunk_crc32c"] = chunk_tails(group)  # what every open checks each chunk file's identity by
    group.attrs.update(attrs)
    group.attrs["complete"] = True  # last
    _write_json_atomic(path / PROGRESS_FILE, {"n_done": partial.n, "setting_hash": setting_hash})


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
