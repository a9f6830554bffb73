"""Is a store whole? The checks every open runs: metadata parses and agrees with the arrays, and every chunk the
metadata promises has a file.

Zarr reads a chunk without a file as fill values, silently, so a deleted chunk file would otherwise turn into
zeros in the analysis. These checks list files (one stat per chunk), they read no data: corrupt bytes are found
by the checksums when read, and swapped or altered chunks by `verify` against the recorded digests.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import CorruptStoreError, MetadataMismatchError, MisplacedChunkError, MissingChunkError
from .schema import LOGPROB_DTYPES, POSITION_ARRAYS, STORE_KINDS, array_dtype, required_arrays, store_kind_of

DIGESTS_ATTR = "chunk_digests"
TAILS_ATTR = "chunk_crc32c"  # the crc32c each chunk file ended with at completion: a cheap identity, checked at open
_POSITIVE_INTS = ("n_positions", "top_k", "n_classes", "chunk_size")


class UrlPath:
    """A file or folder in an fsspec filesystem (``memory://...``, ``s3://...``), with the few pathlib methods the
    checks use (``/``, is_file, open, read_text, name), so a store at a URL gets the same checks as one on disk."""

    def __init__(self, url: str, fs=None, path: str | None = None):
        import fsspec

        if fs is None:
            fs, path = fsspec.core.url_to_fs(url)
        self.url, self.fs, self._path = url.rstrip("/"), fs, path.rstrip("/")

    def __truediv__(self, other) -> UrlPath:
        return UrlPath(f"{self.url}/{other}", self.fs, f"{self._path}/{other}")

    def __str__(self) -> str:
        return self.url

    __repr__ = __str__

    def __eq__(self, other) -> bool:
        return isinstance(other, UrlPath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    @property
    def name(self) -> str:
        return self._path.rsplit("/", 1)[-1]

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(p for p in self._path.split("/") if p)

    def is_file(self) -> bool:
        return self.fs.isfile(self._path)

    def is_dir(self) -> bool:
        return self.fs.isdir(self._path)

    def open(self, mode: str = "rb"):
        return self.fs.open(self._path, mode)

    def read_text(self) -> str:
        with self.fs.open(self._path, "rb") as f:
            return f.read().decode()


def location(path) -> Path | UrlPath:
    """A store's place: a local Path (also for ``file://`` URLs) or a `UrlPath` for any other fsspec URL."""
    if isinstance(path, (Path, UrlPath)):
        return path
    s = str(path)
    if s.startswith("file://"):
        return Path(s[len("file://"):])
    return UrlPath(s) if "://" in s else Path(s)


def chunk_file(store_dir, name: str, arr, coords) -> Path | UrlPath:
    """The file holding the chunk at grid ``coords`` of array ``name``."""
    return location(store_dir) / name / arr.metadata.encode_chunk_key(tuple(int(c) for c in coords))


def chunk_grid(arr, rows: int | None = None) -> Iterator[tuple[int, ...]]:
    """Grid coordinates of the chunks of ``arr`` (C order); with ``rows``, only those holding rows < rows."""
    shape = list(arr.cdata_shape)
    if rows is not None and shape:
        shape[0] = min(shape[0], math.ceil(rows / arr.chunks[0]))
    return np.ndindex(*shape)


def chunk_slices(arr, coords) -> tuple[slice, ...]:
    return tuple(slice(c * n, min((c + 1) * n, s)) for c, n, s in zip(coords, arr.chunks, arr.shape))


def open_array(path: Path, group, name: str):
    """``group[name]``, with a typed error naming the file when its metadata is absent or unparsable."""
    meta = location(path) / name / "zarr.json"
    try:
        return group[name]
    except KeyError:
        raise MetadataMismatchError(f"{path}: array {name!r} is listed in the store's attributes but has no "
                                    f"metadata ({meta} missing); the store is damaged: re-extract it",
                                    array=name, file=meta) from None
    except Exception as e:  # JSONDecodeError, a bad dtype or codec: any failure to parse is damage
        raise CorruptStoreError(f"{path}: cannot parse {meta} ({type(e).__name__}: {e}); the store is damaged: "
                                "re-extract it", array=name, file=meta) from e


def attr_problems(path: Path, attrs: dict) -> list[CorruptStoreError]:
    """Header attributes of the wrong type (an edited zarr.json): n_positions, top_k, ... must be positive ints."""
    problems = []
    for key in _POSITIVE_INTS:
        v = attrs[key]
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            problems.append(MetadataMismatchError(f"{path}: attribute {key!r} is {v!r}, not a positive integer; "
                                                  "the metadata is damaged: re-extract the store", file=path / "zarr.json"))
    if attrs["logprob_dtype"] not in LOGPROB_DTYPES:
        problems.append(MetadataMismatchError(f"{path}: attribute 'logprob_dtype' is {attrs['logprob_dtype']!r}, "
                                              f"not one of {LOGPROB_DTYPES}", file=path / "zarr.json"))
    if not isinstance(attrs["arrays"], list) or not all(isinstance(n, str) for n in attrs["arrays"]):
        problems.append(MetadataMismatchError(f"{path}: attribute 'arrays' is {attrs['arrays']!r}, not a list of names",
                                              file=path / "zarr.json"))
    return problems


def layout_problems(path: Path, group, attrs: dict, n_valid: int) -> list[CorruptStoreError]:
    """Every disagreement between the metadata and the arrays, and every missing chunk file, as typed errors.

    Position arrays must have shape (n_positions,) or (n_positions, top_k), the schema's dtype, chunks of
    chunk_size rows, and a file for each chunk holding one of the first ``n_valid`` positions. A table's chunk
    must have a file when the digests recorded at completion say it had one (an all-fill table chunk is not
    stored by Zarr, so older stores cannot tell).
    """
    path = location(path)
    problems = attr_problems(path, attrs)
    if problems:
        return problems
    n, k, cs = attrs["n_positions"], attrs["top_k"], attrs["chunk_size"]
    names = list(attrs["arrays"])
    kind = store_kind_of(attrs)
    if kind not in STORE_KINDS:
        problems.append(MetadataMismatchError(f"{path}: unknown store kind {kind!r} (known: {list(STORE_KINDS)}); "
                                              "a newer version of this project may have written it"))
        return problems
    for name in required_arrays(kind):
        if name not in names:
            problems.append(MetadataMismatchError(f"{path}: required array {name!r} of a {kind} store is not listed "
                                                  "in the store's attributes", array=name))
    for name in names:
        spec = POSITION_ARRAYS.get(name)
        if spec is None:
            problems.append(MetadataMismatchError(f"{path}: unknown position array {name!r} listed", array=name))
            continue
        try:
            arr = open_array(path, group, name)
        except CorruptStoreError as e:
            problems.append(e)
            continue
        wrong = _array_problems(path, name, arr, spec, n, k, cs, attrs["logprob_dtype"])
        problems += wrong if wrong else missing_chunks(path, name, arr, n_valid, tails=_tails(attrs, name))
    digests = attrs.get(DIGESTS_ATTR)
    for name in attrs.get("tables", []) if isinstance(attrs.get("tables"), list) else []:
        try:
            arr = open_array(path, group, name)
        except CorruptStoreError as e:
            problems.append(e)
            continue
        recorded = digests.get(name) if isinstance(digests, dict) else None
        if isinstance(recorded, list):
            problems += missing_chunks(path, name, arr, None, only={i for i, d in enumerate(recorded) if d is not None},
                                       tails=_tails(attrs, name))
    return problems


def _tails(attrs: dict, name: str) -> list | None:
    tails = attrs.get(TAILS_ATTR)
    rec = tails.get(name) if isinstance(tails, dict) else None
    return rec if isinstance(rec, list) else None


def _array_problems(path, name, arr, spec, n, k, cs, logprob_dtype) -> list[CorruptStoreError]:
    want_shape = (n, k) if spec.per_class else (n,)
    want_chunks = (cs, k) if spec.per_class else (cs,)
    want_dtype = np.dtype(array_dtype(spec, logprob_dtype))
    out = []
    if spec.per_class and len(arr.shape) == 2 and arr.shape[0] == n and arr.shape[1] != k:
        out.append(MetadataMismatchError(f"{path}: attribute top_k = {k} but {name!r} holds lists of width "
                                         f"{arr.shape[1]}; the metadata was edited or damaged: re-extract the store",
                                         array=name))
    elif arr.shape != want_shape:
        out.append(MetadataMismatchError(f"{path}: array {name!r} has shape {arr.shape}, but n_positions = {n} and "
                                         f"top_k = {k} make it {want_shape}", array=name))
    if arr.dtype != want_dtype:
        out.append(MetadataMismatchError(f"{path}: array {name!r} has dtype {arr.dtype}, the schema (logprob_dtype = "
                                         f"{logprob_dtype}) says {want_dtype}; its metadata was edited or damaged",
                                         array=name))
    if tuple(arr.chunks) != want_chunks and not out:
        out.append(MetadataMismatchError(f"{path}: array {name!r} has chunks {arr.chunks}, but chunk_size = {cs} "
                                         f"makes them {want_chunks}", array=name))
    return out


def file_tail(f: Path) -> str | None:
    """The last 4 bytes of a chunk file as hex: the crc32c Zarr's Crc32cCodec appended (None if unreadable)."""
    try:
        with f.open("rb") as fh:
            fh.seek(-4, 2)
            return fh.read(4).hex()
    except OSError:
        return None


def has_crc32c(arr) -> bool:
    return type(arr.metadata.codecs[-1]).__name__ == "Crc32cCodec" if arr.metadata.codecs else False


def chunk_tails(group) -> dict[str, list[str | None]]:
    """Array name -> the crc32c each chunk file ends with (None: no file, or no crc32c codec), for every array and
    table the store lists. Recorded at completion; `missing_chunks` compares them at every open, so two swapped
    chunk files, or a chunk copied in from elsewhere, are caught before any analysis reads them (reading 4 bytes a
    chunk, not the data; `verify` checks the full sha256 digests)."""
    root = Path(group.store.root) / group.path
    out: dict[str, list[str | None]] = {}
    for name in list(group.attrs.get("arrays", [])) + list(group.attrs.get("tables", [])):
        arr = group[name]
        crc = has_crc32c(arr)
        out[name] = [file_tail(f) if crc and f.is_file() else None
                     for f in (chunk_file(root, name, arr, c) for c in chunk_grid(arr))]
    return out


def missing_chunks(path, name: str, arr, rows: int | None, only=None, tails=None) -> list[CorruptStoreError]:
    """A MissingChunkError per chunk (rows < ``rows``; of flat indices ``only`` if given) without a file, and a
    MisplacedChunkError per chunk whose file does not end with the crc32c recorded in ``tails`` at completion."""
    out: list[CorruptStoreError] = []
    for i, coords in enumerate(chunk_grid(arr, rows)):
        if only is not None and i not in only:
            continue
        f = chunk_file(path, name, arr, coords)
        if not f.is_file():
            out.append(MissingChunkError(describe_missing(path, name, arr, coords, f), array=name, chunk=i, file=f))
        elif tails is not None and i < len(tails) and tails[i] is not None and file_tail(f) != tails[i]:
            rows_ = chunk_slices(arr, coords)[0] if coords else slice(0, 0)
            out.append(MisplacedChunkError(
                f"{path}: array {name!r} chunk {i} (rows {rows_.start}..{rows_.stop}, file {f}) is not the chunk "
                "recorded when the store completed (its crc32c differs): chunk files were swapped, replaced or "
                f"altered. Run `python -m pipeline.stores verify {path}`; re-extract the store", array=name, chunk=i,
                file=f))
    return out


def describe_missing(path, name: str, arr, coords, f: Path) -> str:
    rows = chunk_slices(arr, coords)[0] if coords else slice(0, 0)
    along_rows = all(n == 1 for n in arr.cdata_shape[1:])  # position arrays: chunk i holds rows i*chunk_size..
    label = coords[0] if along_rows and coords else tuple(int(c) for c in coords)
    return (f"{path}: array {name!r} lacks chunk {label} (rows "
            f"{rows.start}..{rows.stop}, file {f} missing); it would read as fill values. The store is damaged: "
            "re-extract it")


def raise_first(problems: list[CorruptStoreError], path) -> None:
    """Raise the first problem, saying how many more there are."""
    if not problems:
        return
    first = problems[0]
    if len(problems) > 1:
        msg = f"{first} (and {len(problems) - 1} more problems: run `python -m pipeline.stores verify {path}`)"
        raise type(first)(msg, array=first.array, chunk=first.chunk, file=first.file) from first
    raise first
