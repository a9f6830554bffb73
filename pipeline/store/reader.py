"""Reading stores: lazy Zarr arrays, chunk-aligned iteration, and a K-truncated view."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import zarr

from .errors import (
    CorruptStoreError,
    IncompleteStoreError,
    MissingChunkError,
    SchemaError,
    StoreNotFoundError,
    UnknownSchemaError,
)
from .integrity import (
    DIGESTS_ATTR,
    attr_problems,
    chunk_file,
    describe_missing,
    layout_problems,
    location,
    missing_chunks,
    open_array,
    raise_first,
)
from .schema import POSITION_ARRAYS, PROGRESS_FILE, SUPPORTED_SCHEMA_VERSIONS, store_kind_of
from .writer import read_progress


class Store:
    """One model's predictions on one token stream. Open with :func:`open_store`.

    ``n`` is the number of positions; of a partial store opened with ``allow_partial=True`` only the first
    ``n_valid`` are written, and reads are limited to them.
    """

    def __init__(self, path: Path, group: zarr.Group, attrs: dict, n_valid: int):
        self.path = location(path)  # a Path, or an fsspec URL (integrity.UrlPath)
        self.group = group
        self.attrs = attrs
        self.n = int(attrs["n_positions"])
        self.k = int(attrs["top_k"])
        self.n_classes = int(attrs["n_classes"])
        self.logprob_dtype = str(attrs["logprob_dtype"])
        self.chunk_size = int(attrs["chunk_size"])
        self.complete = bool(attrs.get("complete", False))
        self.n_valid = int(n_valid)
        self.names = [n for n in attrs["arrays"]]
        # On disk (not a MemoryStore's dict): every read first checks that the chunks it covers have files.
        self._on_disk = isinstance(group, zarr.Group)

    # ------------------------------------------------------------------ metadata
    @property
    def kind(self) -> str:
        """What the positions are: "text", "task", "classification" or "masked" (schema.KIND_ARRAYS)."""
        return store_kind_of(self.attrs)

    @property
    def stream_hash(self) -> str | None:
        return self.attrs.get("stream_hash")

    @property
    def model(self) -> dict:
        return self.attrs.get("model", {})

    @property
    def dataset(self) -> dict:
        return self.attrs.get("dataset", {})

    @property
    def protocol(self) -> dict:
        return self.attrs.get("protocol", {})

    @property
    def tables(self) -> list[str]:
        return list(self.attrs.get("tables", []))

    def __repr__(self) -> str:
        state = "complete" if self.complete else f"partial {self.n_valid}/{self.n}"
        return (f"Store({self.model.get('name')!r} on {self.dataset.get('name')}/{self.dataset.get('split')}, "
                f"N={self.n}, K={self.k}, {self.logprob_dtype}, {state}, path={str(self.path)!r})")

    # ------------------------------------------------------------------ data
    def has(self, name: str) -> bool:
        return name in self.names

    def array(self, name: str) -> zarr.Array:
        """The lazy Zarr array (position array or table)."""
        if name not in self.names and name not in self.tables:
            raise KeyError(f"{self.path} has no array {name!r}; it has {self.names + self.tables}")
        return open_array(self.path, self.group, name) if self._on_disk else self.group[name]

    def table(self, name: str) -> np.ndarray:
        arr = self.array(name)
        if not self._on_disk:
            return np.asarray(arr[...])
        recorded = self.attrs.get(DIGESTS_ATTR, {}).get(name) if isinstance(self.attrs.get(DIGESTS_ATTR), dict) else None
        if isinstance(recorded, list):  # a table chunk that had a file at completion must still have one
            raise_first(missing_chunks(self.path, name, arr, None,
                                       only={i for i, d in enumerate(recorded) if d is not None}), self.path)
        return self._guarded(name, i_lo=0, i_hi=None, read=lambda: np.asarray(arr[...]))

    def _require_file(self, name: str, arr, coords, index: int) -> None:
        f = chunk_file(self.path, name, arr, coords)
        if not f.is_file():
            raise MissingChunkError(describe_missing(self.path, name, arr, coords, f), array=name, chunk=index, file=f)

    def _guarded(self, name: str, i_lo: int, i_hi: int | None, read):
        """``read()``, with a failure to decode (checksum, decompression) as a CorruptStoreError naming the chunks."""
        try:
            return read()
        except Exception as e:
            chunks = "its chunks" if i_hi is None else (f"chunk {i_lo}" if i_hi == i_lo + 1 else f"chunks {i_lo}..{i_hi - 1}")
            raise CorruptStoreError(f"{self.path}: array {name!r}, {chunks}: unreadable ({type(e).__name__}: {e}); "
                                    f"the store is damaged: check it with `python -m pipeline.stores verify {self.path}`",
                                    array=name, chunk=i_lo) from e

    def _read_array(self, name: str, start: int, stop: int) -> np.ndarray:
        if not self._on_disk or stop <= start:
            return np.ascontiguousarray(self.group[name][start:stop])
        arr = self.group[name]
        i_lo, i_hi = start // self.chunk_size, (stop - 1) // self.chunk_size + 1
        for i in range(i_lo, i_hi):  # Zarr would read a chunk without a file as fill values
            self._require_file(name, arr, (i,) + (0,) * (arr.ndim - 1), i)
        try:
            return np.ascontiguousarray(arr[start:stop])
        except Exception:
            pass
        for i in range(i_lo, i_hi):  # find the chunk that fails, to name it
            self._guarded(name, i, i + 1, lambda: arr[i * self.chunk_size:(i + 1) * self.chunk_size])  # noqa: B023
        return self._guarded(name, i_lo, i_hi, lambda: np.ascontiguousarray(arr[start:stop]))

    def _check_range(self, start: int, stop: int | None) -> tuple[int, int]:
        stop = self.n_valid if stop is None else stop
        if not 0 <= start <= stop <= self.n_valid:
            raise IndexError(f"positions {start}..{stop} outside the {self.n_valid} readable positions of {self.path}")
        return start, stop

    def read(self, names, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """Read position arrays for [start, stop) into C-contiguous numpy arrays."""
        if isinstance(names, str):
            names = [names]
        start, stop = self._check_range(start, stop)
        missing = [n for n in names if n not in self.names]
        if missing:
            raise KeyError(f"{self.path} has no arrays {missing}; it has {self.names}")
        return {n: self._read_array(n, start, stop) for n in names}

    def iter_chunks(self, names, start: int = 0, stop: int | None = None
                    ) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        """Yield (lo, hi, arrays) over [start, stop) in pieces aligned to the store's chunks."""
        start, stop = self._check_range(start, stop)
        lo = start
        while lo < stop:
            hi = min(stop, (lo // self.chunk_size + 1) * self.chunk_size)
            yield lo, hi, self.read(names, lo, hi)
            lo = hi

    def truncated(self, k: int) -> TruncatedStore:
        """This store read as if it had been written with top_k = k (k <= K)."""
        return TruncatedStore(self, k)


class TruncatedStore(Store):
    """A store seen with a smaller K.

    The top lists are cut to k. The tail mass gains the dropped entries: tail' = log(exp(tail) +
    sum exp(dropped)), computed in float64 and rounded up to float32, with float16 log-probs taken at the
    upper end of their +-1/2 ulp rounding interval, so tail' is an upper bound of the true mass outside
    the top k (exact up to float32 rounding for float32 stores). ``attrs['tail_logmass_bound']`` says so.
    """

    def __init__(self, base: Store, k: int):
        if not 1 <= k <= base.k:
            raise SchemaError(f"a truncated view needs 1 <= k <= K={base.k}; got k={k}")
        attrs = dict(base.attrs)
        attrs.update(top_k=int(k), truncated_from=base.k, tail_logmass_bound=True)
        super().__init__(base.path, base.group, attrs, base.n_valid)
        self.base = base

    def read(self, names, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        if isinstance(names, str):
            names = [names]
        need = set(names)
        if "tail_logmass" in need:
            need |= {"topk_logprobs"}
        raw = self.base.read(sorted(need), start, stop)
        out = {}
        for n in names:
            if n in ("topk_ids", "topk_logprobs"):
                out[n] = np.ascontiguousarray(raw[n][:, : self.k])
            elif n == "tail_logmass":
                out[n] = truncated_tail(raw["tail_logmass"], raw["topk_logprobs"], self.k)
            else:
                out[n] = raw[n]
        return out


def logprob_upper(lp: np.ndarray) -> np.ndarray:
    """Upper end of the reals a stored log-prob stands for, in float64 (the rule of `analysis.lut`).

    float16 v: every real that rounds to it, up to v + g/2, g the gap to its upper neighbour (at a power of
    two it differs from the gap below, so not np.spacing); the real rounding to -inf reach up to -65520 and to
    65504 up to 65520 (the overflow boundary). float32 values are exact. NaN stays NaN.
    """
    x = lp.astype(np.float64)
    if lp.dtype != np.float16:
        return x
    with np.errstate(invalid="ignore"):
        above = np.nextafter(lp, np.float16(np.inf)).astype(np.float64) - x
        up = np.where(x == 65504.0, 65520.0, x + 0.5 * above)
    return np.where(np.isfinite(x), up, np.where(x == -np.inf, -65520.0, x))


def truncated_tail(tail: np.ndarray, topk_logprobs: np.ndarray, k: int) -> np.ndarray:
    """Upper bound (float32) of the log mass outside the top k: the stored tail (float32 rounded to nearest:
    at most |x| 2^-24 below the truth) with the dropped entries at their `logprob_upper`, summed in float64
    with a margin for its rounding (relative 2^-52 per term, in log space an absolute error), rounded up."""
    dropped = logprob_upper(topk_logprobs[:, k:])
    t64 = tail.astype(np.float64)
    with np.errstate(invalid="ignore"):
        t64 = np.where(np.isfinite(t64), t64 + np.abs(t64) * 2.0 ** -24, t64)
    terms = np.concatenate([t64[:, None], dropped], axis=1)
    m = np.max(terms, axis=1)
    safe = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        total = safe + np.log(np.sum(np.exp(terms - safe[:, None]), axis=1))
        total = total + (terms.shape[1] + 4) * 2.0 ** -50 + np.abs(total) * 2.0 ** -50
    total = np.where(np.isfinite(m), total, m)  # not clipped at 0: float32 log-probs need not sum to 1
    out = total.astype(np.float32)
    low = out.astype(np.float64) < total  # float32 rounding went down: step up one ulp
    out[low] = np.nextafter(out[low], np.float32(np.inf))
    return np.ascontiguousarray(out)


def open_store(path, allow_partial: bool = False, check: bool = True) -> Store:
    """Open a store for reading.

    Raises StoreNotFoundError if there is none at ``path``, UnknownSchemaError for a schema version this
    code does not read, IncompleteStoreError for an unfinished store unless ``allow_partial``, and a
    CorruptStoreError naming the file, array or chunk when metadata is unparsable, disagrees with the arrays
    (MetadataMismatchError: K and the list width, dtypes, shapes, chunking) or a chunk file is missing
    (MissingChunkError). These checks list files and read no data; ``check=False`` skips the last two (for
    `verify`, which reports every problem instead of the first).
    """
    path = location(path)
    if not (path / "zarr.json").is_file():
        raise StoreNotFoundError(f"no store at {path} (no zarr.json); list stores with `python -m pipeline.stores ls`")
    try:
        group = zarr.open_group(path if isinstance(path, Path) else str(path), mode="r")
        attrs = dict(group.attrs)
    except Exception as e:  # JSONDecodeError, a node that is not a group, ...: the metadata is damaged
        raise CorruptStoreError(f"{path}: cannot parse {path / 'zarr.json'} ({type(e).__name__}: {e}); the store "
                                "is damaged: re-extract it", file=path / "zarr.json") from e
    version = attrs.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise UnknownSchemaError(
            f"{path} has schema_version {version!r}; this code reads {list(SUPPORTED_SCHEMA_VERSIONS)}. "
            "Upgrade the project, or re-extract the store."
        )
    for key in ("n_positions", "top_k", "n_classes", "logprob_dtype", "chunk_size", "arrays"):
        if key not in attrs:
            raise SchemaError(f"{path} lacks the attribute {key!r}; it is not a store of this project or is damaged")
    raise_first(attr_problems(path, attrs), path)
    unknown = [n for n in attrs["arrays"] if n not in POSITION_ARRAYS]
    if unknown:
        raise SchemaError(f"{path} lists unknown position arrays {unknown}")
    if attrs.get("complete"):
        n_valid = int(attrs["n_positions"])
    else:
        try:
            n_valid = int(read_progress(path)["n_done"] if isinstance(path, Path) else
                          (json.loads((path / PROGRESS_FILE).read_text()) if (path / PROGRESS_FILE).is_file()
                           else {"n_done": 0})["n_done"])
        except Exception as e:  # unparsable progress file
            raise CorruptStoreError(f"{path}: cannot read {path / PROGRESS_FILE} ({type(e).__name__}: {e}); remove "
                                    "the partial store with `python -m pipeline.stores rm --partial`",
                                    file=path / PROGRESS_FILE) from e
        if not allow_partial:
            raise IncompleteStoreError(
                f"{path} is incomplete ({n_valid} of {attrs['n_positions']} positions written); resume the "
                "extraction with the same config, remove it with `python -m pipeline.stores rm --partial`, or pass "
                "allow_partial=True"
            )
    if check:
        raise_first(layout_problems(path, group, attrs, n_valid), path)
    return Store(path, group, attrs, n_valid)
