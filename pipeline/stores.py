"""Store CLI: ``python -m pipeline.stores ls|info|verify|rm``.

  ls [ROOT]                 list stores under ROOT (default: $ARCACHE_STORES or ./stores); damaged ones are
                            named with the reason (exit 1 if any)
  info PATH                 provenance and arrays of one store
  verify PATH|ROOT...       schema, complete flag, metadata against arrays, chunk files, every chunk's checksum
                            and recorded digest, NaN, id ranges, token-stream hash (exit 1 if any store fails)
  rm PATH... [--partial]    remove stores (with --partial: only the unfinished ones under the paths)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .cli import one_line_errors
from .store import StoreError, VerifyReport, find_stores, open_store, verify_store
from .store.errors import NotAStoreError, StoreLockedError
from .store.integrity import open_array
from .store.lock import WriterLock, lock_is_live, read_lock
from .store.schema import LOCK_FILE
from .store.writer import clear_store, store_kind

log = logging.getLogger("pipeline.stores")


def _default_root() -> Path:
    return Path(os.environ.get("ARCACHE_STORES", "stores"))


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _status(path: Path, check: bool = False) -> tuple[str, object]:
    """(state, store or None). ``check`` also runs the chunk and layout checks of `open_store` (a damaged store
    then reads 'unreadable'); without it only the metadata must parse."""
    lock = read_lock(path / LOCK_FILE)
    try:
        store = open_store(path, allow_partial=True, check=check)
    except StoreError as e:
        return f"unreadable ({type(e).__name__})", None
    if store.complete:
        return "complete", store
    state = f"partial {store.n_valid}/{store.n}"
    if lock is not None:
        state += ", being written" if lock_is_live(lock) else ", stale lock"
    return state, store


def cmd_ls(args) -> int:
    root = Path(args.root) if args.root else _default_root()
    paths = find_stores(root) if root.exists() else []
    if not paths:
        print(f"no stores under {root}")
        return 0
    rows = [("model", "dataset", "split", "K", "N", "size", "status", "path")]
    damaged = []
    for p in paths:
        try:
            state, s = _status(p, check=True)
        except Exception as e:  # anything unforeseen in one store must not hide the others
            state, s = f"unreadable ({type(e).__name__})", None
        if s is None:
            damaged.append((p, _reason(p)))
            rows.append(("?", "?", "?", "?", "?", _human(_size(p)), state, str(p)))
            continue
        rows.append((str(s.model.get("name")), str(s.dataset.get("name")), str(s.dataset.get("split")),
                     str(s.k), str(s.n), _human(_size(p)), state, str(p)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    for p, reason in damaged:
        print(f"damaged  {p}: {reason}", file=sys.stderr)
    if damaged:
        print(f"{len(damaged)} of {len(paths)} stores unreadable; details: python -m pipeline.stores verify {root}",
              file=sys.stderr)
    return 1 if damaged else 0


def _reason(path: Path) -> str:
    try:
        open_store(path, allow_partial=True)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return "unknown"


def cmd_info(args) -> int:
    state, s = _status(Path(args.path))
    if s is None:
        print(f"{args.path}: {state}", file=sys.stderr)
        return 1
    print(f"{s.path}  [{state}]")
    print(f"N={s.n}  K={s.k}  n_classes={s.n_classes}  logprob_dtype={s.logprob_dtype}  chunk={s.chunk_size}  "
          f"size={_human(_size(s.path))}")
    print("arrays:")
    damaged = 0
    for name in s.names + s.tables:
        try:
            a = open_array(s.path, s.group, name)
        except StoreError as e:  # an array whose own metadata is damaged: say so, show the rest
            print(f"  {name:16s} damaged: {e}")
            damaged += 1
            continue
        print(f"  {name:16s} {str(a.shape):18s} {str(a.dtype):10s} chunks={a.chunks}")
    attrs = {k: v for k, v in s.attrs.items() if k not in ("arrays", "chunk_digests", "chunk_crc32c")}
    digests = s.attrs.get("chunk_digests")
    print(f"chunk digests: {sum(len(v) for v in digests.values()) if isinstance(digests, dict) else 'none'} recorded")
    print(json.dumps(attrs, indent=2, sort_keys=True, default=str))
    return 1 if damaged else 0


def cmd_verify(args) -> int:
    paths = [p for arg in args.paths for p in find_stores(arg)]
    if not paths:
        print(f"no stores under {args.paths}", file=sys.stderr)
        return 1
    bad = warned = 0
    for p in paths:
        try:
            report = verify_store(p)
        except Exception as e:  # report it and go on with the other stores
            report = VerifyReport(p, problems=[f"verify stopped: {type(e).__name__}: {e}"])
        if report.ok:
            print(f"ok       {p}  ({report.checked_chunks} chunks checked)")
        else:
            bad += 1
            print(f"FAILED   {p}")
            for problem in report.problems:
                print(f"    - {problem}")
        warned += bool(report.warnings)
        for warning in report.warnings:
            print(f"    warning: {warning}")
    print(f"{len(paths) - bad} of {len(paths)} stores ok" + (f" ({warned} with warnings)" if warned else ""))
    return 1 if bad else 0


def cmd_rm(args) -> int:
    """Remove stores: only directories that are provably stores of this project, and of each only its own
    entries (a file someone put inside stays, with the directory). Anything else is refused by name."""
    removed = failed = 0
    for arg in map(Path, args.paths):
        if not arg.exists():
            print(f"error    {arg}: no such file or directory", file=sys.stderr)
            failed += 1
            continue
        candidates = _rm_candidates(arg)
        if not candidates and arg.is_dir() and any(arg.iterdir()):
            print(f"error    {arg} is not a store of this project and holds none; nothing removed", file=sys.stderr)
            failed += 1
        for p in candidates:
            try:
                store_kind(p)
            except NotAStoreError as e:
                print(f"error    {e}", file=sys.stderr)
                failed += 1
                continue
            state, _ = _status(p)
            if args.partial and state == "complete":
                continue
            if args.partial and state.startswith("unreadable") and (p / "zarr.json").exists():
                # damaged, perhaps a complete store: not provably unfinished, so --partial keeps it
                print(f"kept     {p}  [{state}]: damaged, not unfinished; see `python -m pipeline.stores verify`",
                      file=sys.stderr)
                continue
            if args.dry_run:
                print(f"would remove {p}  [{state}]")
                removed += 1
                continue
            try:
                with WriterLock.for_store(p):  # no writer may be running in it (kernel lock, fails at once)
                    kept = clear_store(p)
            except StoreLockedError as e:
                print(f"skipped  {p}: {e}", file=sys.stderr)
                failed += 1
                continue
            if kept:
                print(f"removed  {p}  [{state}] but kept {', '.join(k.name for k in kept)} (not part of the store)")
            else:
                p.rmdir()
                print(f"removed  {p}  [{state}]")
            removed += 1
    if not removed and not failed:
        print("nothing to remove")
    return 1 if failed else 0


def _rm_candidates(arg: Path) -> list[Path]:
    """The stores under `arg`, and `arg` itself if it is a store (also one killed before its zarr.json was
    written, which find_stores cannot see) or a directory named like one (so that it is refused by name)."""
    found = find_stores(arg) if arg.is_dir() else []
    if arg not in found:
        try:
            own = store_kind(arg) == "store"
        except NotAStoreError:
            own = arg.suffix == ".zarr" or not arg.is_dir()
        if own:
            found.insert(0, arg)
    return found


@one_line_errors  # a project error: one line on stderr, exit status 1 (HYDRA_FULL_ERROR=1: the traceback)
def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m pipeline.stores", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ls", help="list stores")
    p.add_argument("root", nargs="?")
    p.set_defaults(fn=cmd_ls)
    p = sub.add_parser("info", help="show one store")
    p.add_argument("path")
    p.set_defaults(fn=cmd_info)
    p = sub.add_parser("verify", help="check stores")
    p.add_argument("paths", nargs="+")
    p.set_defaults(fn=cmd_verify)
    p = sub.add_parser("rm", help="remove stores")
    p.add_argument("paths", nargs="+")
    p.add_argument("--partial", action="store_true", help="only unfinished stores")
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(fn=cmd_rm)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
