"""Store CLI: ``python -m pipeline.stores ls|info|verify|rm``.

  ls [ROOT]                 list stores under ROOT (default: $ARCACHE_STORES or ./stores)
  info PATH                 provenance and arrays of one store
  verify PATH|ROOT...       schema, complete flag, every chunk's checksum, NaN, token-stream hash
  rm PATH... [--partial]    remove stores (with --partial: only the unfinished ones under the paths)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from .store import StoreError, find_stores, open_store, verify_store
from .store.lock import lock_is_live, read_lock
from .store.schema import LOCK_FILE

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


def _status(path: Path) -> tuple[str, object]:
    lock = read_lock(path / LOCK_FILE)
    try:
        store = open_store(path, allow_partial=True)
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
    for p in paths:
        state, s = _status(p)
        if s is None:
            rows.append(("?", "?", "?", "?", "?", _human(_size(p)), state, str(p)))
            continue
        rows.append((str(s.model.get("name")), str(s.dataset.get("name")), str(s.dataset.get("split")),
                     str(s.k), str(s.n), _human(_size(p)), state, str(p)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def cmd_info(args) -> int:
    state, s = _status(Path(args.path))
    if s is None:
        print(f"{args.path}: {state}", file=sys.stderr)
        return 1
    print(f"{s.path}  [{state}]")
    print(f"N={s.n}  K={s.k}  n_classes={s.n_classes}  logprob_dtype={s.logprob_dtype}  chunk={s.chunk_size}  "
          f"size={_human(_size(s.path))}")
    print("arrays:")
    for name in s.names + s.tables:
        a = s.group[name]
        print(f"  {name:16s} {str(a.shape):18s} {str(a.dtype):10s} chunks={a.chunks}")
    attrs = {k: v for k, v in s.attrs.items() if k not in ("arrays",)}
    print(json.dumps(attrs, indent=2, sort_keys=True, default=str))
    return 0


def cmd_verify(args) -> int:
    paths = [p for arg in args.paths for p in find_stores(arg)]
    if not paths:
        print(f"no stores under {args.paths}", file=sys.stderr)
        return 1
    bad = 0
    for p in paths:
        report = verify_store(p)
        if report.ok:
            print(f"ok       {p}  ({report.checked_chunks} chunks checked)")
        else:
            bad += 1
            print(f"FAILED   {p}")
            for problem in report.problems:
                print(f"    - {problem}")
    print(f"{len(paths) - bad} of {len(paths)} stores ok")
    return 1 if bad else 0


def cmd_rm(args) -> int:
    removed = 0
    for arg in args.paths:
        for p in find_stores(arg):
            state, s = _status(p)
            if args.partial and state == "complete":
                continue
            lock = read_lock(p / LOCK_FILE)
            if lock is not None and lock_is_live(lock):
                print(f"skipped  {p}: locked by pid {lock.get('pid')} on {lock.get('host')}", file=sys.stderr)
                continue
            if args.dry_run:
                print(f"would remove {p}  [{state}]")
            else:
                shutil.rmtree(p)
                print(f"removed  {p}  [{state}]")
            removed += 1
    if not removed:
        print("nothing to remove")
    return 0


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
