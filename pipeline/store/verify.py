"""Checking stores on disk: schema, completeness, metadata against arrays, chunk files, checksums, recorded
per-chunk digests and the token-stream hash."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .digests import DigestChecker, chunk_digest, has_digests, scan
from .errors import MisplacedChunkError, MissingChunkError, StoreError
from .hashing import stream_hash
from .integrity import layout_problems
from .reader import open_store
from .schema import REQUIRED_SECTIONS

log = logging.getLogger(__name__)

ID_ARRAYS = ("targets", "topk_ids")  # class ids: must lie in [0, n_classes)


@dataclass
class VerifyReport:
    path: Path
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # worth saying, not a failure (e.g. no digests recorded)
    complete: bool = False
    checked_chunks: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(path, check_data: bool = True) -> VerifyReport:
    """Every problem found, not just the first. ``check_data`` reads every chunk once (checksums, NaN, id ranges,
    recorded digests) and rehashes the token stream."""
    report = VerifyReport(Path(path))
    try:
        store = open_store(path, allow_partial=True, check=False)
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
    layout = layout_problems(store.path, store.group, store.attrs, store.n_valid)
    if check_data and has_digests(store):  # the chunk scan names a misplaced chunk better (swapped with which)
        layout = [p for p in layout if not isinstance(p, MisplacedChunkError)]
    report.problems += _summarize(layout, store)
    if not check_data:
        return report
    damaged = {p.array for p in layout if not isinstance(p, MissingChunkError)}
    names = [n for n in store.names + store.tables if n not in damaged]
    if any(p.array is None for p in layout if not isinstance(p, MissingChunkError)):
        return report  # the header itself is wrong: reading would only repeat it
    _check_chunks(store, names, report)
    if store.complete and not has_digests(store):
        report.warnings.append("no digests recorded (a store from before per-chunk digests): swapped or altered "
                               "chunks cannot be detected; re-extract it to record them")
    if store.complete and not layout and not any("corrupt" in p for p in report.problems):
        try:
            h = stream_hash(store)
        except StoreError as e:
            report.problems.append(str(e))
        else:
            if h != store.stream_hash:
                report.problems.append(f"token-stream hash mismatch: stored {store.stream_hash}, computed {h}")
    return report


def _summarize(layout, store) -> list[str]:
    """One line per problem, missing chunks grouped by array."""
    out, missing = [], {}
    for p in layout:
        if isinstance(p, MissingChunkError):
            missing.setdefault(p.array, []).append(p)
        else:
            out.append(str(p))
    for name, ps in missing.items():
        chunks = [p.chunk for p in ps]
        if name in store.names:
            written = math.ceil(store.n_valid / store.chunk_size)
            out.append(f"array {name!r}: {len(ps)} of its {written} written chunks are missing: chunks {chunks} "
                       f"(first file {ps[0].file}); they would read as fill values")
        else:
            out.append(f"table {name!r}: chunks {chunks} are missing (first file {ps[0].file})")
    return out


def _check_chunks(store, names, report: VerifyReport) -> None:
    """One pass over every chunk: checksums, NaN, id ranges, recorded digests."""
    checker = DigestChecker(store.attrs, names) if store.complete else None
    for c in scan(store.group, names):
        if c.error is not None:
            report.problems.append(f"array {c.name!r} chunk {c.index} at positions {c.rows.start}..{c.rows.stop} "
                                   f"is corrupt: {c.error}")
        elif c.present:
            report.checked_chunks += 1
            if c.name in store.names:
                _check_values(store, c, report)
        if checker is not None:
            checker.add(c, chunk_digest(c.data) if c.data is not None else None)
    if checker is not None:
        report.problems += checker.finish()


def _check_values(store, c, report: VerifyReport) -> None:
    data = c.data[: max(0, store.n_valid - c.rows.start)]
    where = f"array {c.name!r} positions {c.rows.start}..{c.rows.stop}"
    if data.dtype.kind == "f" and np.isnan(data).any():
        report.problems.append(f"{where} hold NaN")
    if c.name in ID_ARRAYS and data.size and (data.min() < 0 or data.max() >= store.n_classes):
        report.problems.append(f"{where} hold ids outside [0, n_classes = {store.n_classes}): "
                               f"{int(data.min())}..{int(data.max())}")


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
