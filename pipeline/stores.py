"""Store CLI: ``python -m pipeline.stores ls|info|verify|rm|finalize|sweep-status``.

  ls [ROOT]                 list stores under ROOT (default: $ARCACHE_STORES or ./stores); damaged ones are
                            named with the reason (exit 1 if any)
  info PATH                 provenance and arrays of one store
  verify PATH|ROOT...       schema, complete flag, metadata against arrays, chunk files, every chunk's checksum
                            and recorded digest, NaN, id ranges, token-stream hash (exit 1 if any store fails)
  rm PATH... [--partial]    remove stores (with --partial: only the unfinished ones under the paths)
  finalize PATH...          finish a store written in shards (extract.num_shards=S extract.shard=i): check that
                            every chunk is there, write the metrics, hashes, digests and `complete`
  sweep-status OVERRIDES... for the jobs of `python -m pipeline.extract -m OVERRIDES...`: which stores (or
                            shards) are complete, partial or missing; exit 1 unless all are complete. Hydra
                            reports a job that failed as done and cannot resume a sweep: rerun it with
                            skip_existing=true and only these jobs do work (complete stores are reused, partial
                            ones resume)
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
from .store.lock import WriterLock, lease_files, lease_is_live, live_holders, read_lease, read_lock
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
    if int(store.attrs.get("num_shards") or 1) > 1:
        from .store.shards import store_progress

        _, written, n, _ = store_progress(path)
        state = f"partial {written}/{n} in {store.attrs['num_shards']} shards"
    if live_holders(path):
        state += ", being written"
    elif lock is not None or lease_files(path):
        state += ", stale lock"
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
                    busy = live_holders(p, ignore=(LOCK_FILE,))  # nor a shard or a job holding a lease
                    if busy:
                        raise StoreLockedError(f"{p} is being written by {'; '.join(busy)}")
                    kept = clear_store(p)
                    for f in lease_files(p):  # leases nobody renews any more
                        if not lease_is_live(read_lease(f)):
                            f.unlink(missing_ok=True)
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


def cmd_finalize(args) -> int:
    from .store.shards import finalize

    for path in args.paths:
        store = finalize(Path(path))
        m = store.attrs.get("metrics", {})
        shown = "  ".join(f"{k} {m[k]:.4f}" for k in ("ppl", "acc") if isinstance(m.get(k), float))
        print(f"complete  {store.path}  ({store.n} positions, "
              f"{store.attrs.get('num_shards', 1)} shards)  {shown}".rstrip())
    return 0


# ------------------------------------------------------------------ sweep-status
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def sweep_jobs(overrides: list[str]):
    """The jobs of `python -m pipeline.extract -m OVERRIDES`: (job's overrides, its RunSpec), composed with
    Hydra's compose API the way the sweep composes them (hydra.* overrides, such as the launcher, ignored)."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from . import rundir
    from .extraction.config import run_spec_from_dict
    from .extraction.errors import ConfigError

    args = [o for o in overrides if o not in ("-m", "--multirun")]
    flags = [o for o in args if o.startswith("-")]
    if flags:
        raise ConfigError(f"sweep-status takes the sweep's overrides only, not {flags}")
    job_args = [o for o in args if not o.lstrip("+~").startswith("hydra")]
    try:
        parsed = OverridesParser.create().parse_overrides(job_args)
    except Exception as e:  # Hydra's OverrideParseException: a typo in the overrides
        raise ConfigError(f"cannot parse the overrides {job_args}: {' '.join(str(e).split())}") from None
    jobs = BasicSweeper.split_arguments(parsed, None)[0] if parsed else [[]]
    rundir.register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="sweep_status"):
        for job in jobs:
            try:
                cfg = compose(config_name="extract", overrides=job)
            except Exception as e:  # an unknown config group option or key: Hydra's own message, one line
                raise ConfigError(f"job {' '.join(job)}: {' '.join(str(e).split())}") from None
            yield job, run_spec_from_dict(OmegaConf.to_container(cfg, resolve=True))


def store_candidates(spec, prefer_gpu: bool) -> list[Path]:
    """Where the job of `spec` writes its store: store= itself, else the default path computed from the model's
    config.json (without loading the model; [] when it is not on disk). model.dtype=auto gives bfloat16 on a
    GPU and float32 on a CPU, so both paths are candidates, the launcher's kind of machine first."""
    if spec.store:
        return [Path(spec.store)]
    from .extraction.run import _peek_model, default_store, resolve_protocol

    peek = _peek_model(spec)
    if peek is None:
        return []
    max_length, vocab = peek
    protocol = resolve_protocol(spec, max_length)
    device = spec.model.device
    if spec.model.dtype != "auto":
        dtypes = [spec.model.dtype]
    elif device.startswith("cuda"):
        dtypes = ["bfloat16"]
    elif device == "cpu":
        dtypes = ["float32"]
    else:
        dtypes = ["bfloat16", "float32"] if prefer_gpu else ["float32", "bfloat16"]
    return [default_store(spec, dt, protocol, min(spec.extract.top_k, vocab)) for dt in dtypes]


def job_status(spec, paths: list[Path]) -> tuple[str, str, Path | None]:
    """(state, progress, path) of one sweep job: state complete | partial | missing | unknown (its store path
    cannot be computed: the model's config.json is not on disk), for a shard job its shard's own state."""
    from .store.shards import shard_status, store_progress

    if not paths:
        return "unknown", "model config not on disk", None
    found = [p for p in paths if p.exists()]
    path = found[0] if found else paths[0]
    state, written, n, detail = store_progress(path)
    ex = spec.extract
    if state == "partial" and ex.num_shards > 1:
        try:
            sh = shard_status(path)["shards"][ex.shard]
        except (StoreError, KeyError, IndexError):  # a store written by one writer, or another shard count
            return "partial", f"{written}/{n} (not written in {ex.num_shards} shards)", path
        if not sh["missing"]:
            return "done", f"shard {ex.shard}: {sh['n_done']}/{sh['n_chunks']} chunks, store not finalized", path
        return "partial", f"shard {ex.shard}: {sh['n_done']}/{sh['n_chunks']} chunks" + \
            (" (being written)" if sh["writing"] else ""), path
    if state == "partial":
        busy = ", being written" if live_holders(path) else ""
        return "partial", (f"{written}/{n}" if n else detail) + busy, path
    if state == "complete":
        return "complete", f"{n}/{n}", path
    return state, detail, path


def sweep_status(overrides: list[str]) -> int:
    prefer_gpu = any(o.startswith("hydra/launcher=") and not o.endswith(("submitit_local", "local_submitit"))
                     for o in overrides)
    rows, counts, finalize_paths = [], {}, set()
    for job, spec in sweep_jobs(overrides):
        state, progress, path = job_status(spec, store_candidates(spec, prefer_gpu))
        counts[state] = counts.get(state, 0) + 1
        if state == "done":
            finalize_paths.add(path)
        rows.append((state, progress, " ".join(job) or "(no overrides)", str(path) if path else "?"))
    table = [("state", "progress", "job", "store")] + rows
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
    order = ("complete", "done", "partial", "missing", "unknown", "damaged")
    print(f"{len(rows)} jobs: " + ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k)))
    todo = sum(v for k, v in counts.items() if k not in ("complete", "done"))
    if todo:
        args = " ".join(o for o in overrides if o not in ("-m", "--multirun", "skip_existing=true"))
        print(f"to finish them, run the sweep again (complete stores are reused, partial ones resume):\n"
              f"  python -m pipeline.extract -m {args} skip_existing=true")
    for p in sorted(finalize_paths):
        print(f"every shard of {p} is done: python -m pipeline.stores finalize {p}")
    return 0 if todo == 0 and not finalize_paths else 1


def cmd_sweep_status(args) -> int:
    return sweep_status(args.overrides)


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
    p = sub.add_parser("finalize", help="finish stores written in shards")
    p.add_argument("paths", nargs="+")
    p.set_defaults(fn=cmd_finalize)
    p = sub.add_parser("sweep-status", help="complete / partial / missing stores of an extraction sweep",
                       description="the same overrides as `python -m pipeline.extract -m ...` (-m optional)")
    p.add_argument("overrides", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_sweep_status)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["sweep-status"] and not {"-h", "--help"} & set(argv[1:]):
        return sweep_status(argv[1:])  # the sweep's own arguments, -m included, as given
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
