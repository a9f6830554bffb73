"""One store written by several writers (shards) at once, and the metrics every extraction records.

Shard i of S owns a contiguous range of whole chunks (`writer.shard_chunks`), so no two shards ever write one
chunk (Zarr does not support concurrent writes to one chunk). Each shard records the chunks it has durably
written in its own progress file (`.arcache-progress.shard-<i>.json`, replaced atomically), holds its own lease
(`.arcache-lock.shard-<i>.json`, see `lock.Lease`: it survives a job requeued onto another host), and creates the
store or writes its tables only under the store lease (`.arcache-lock.store.json`), so shards may start together.

`finalize(path)` then checks that every chunk of every position array is there, computes the metrics from the
stored arrays (the same function, over the same values, as a single writer: so they are bit-identical), hashes
the token stream, records every chunk's digest and crc32c (`writer.finish_store`, shared with the single writer),
and writes ``complete = True``. The arrays, stream hash, digests and metrics equal a single writer's; what
differs is provenance of the run: the timing keys of ``metrics`` (``elapsed_s_this_run``,
``tokens_per_s_this_run``, ``resumed_from``: None, the per-shard runs being under ``sharding``), the attribute
``num_shards``, and the recorded command line (``config.extract.num_shards`` / ``shard``, the runtime section of
the shard that created the store).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import zarr

from .errors import IncompleteStoreError, StoreError, StoreLockedError, StoreNotFoundError
from .integrity import missing_chunks, open_array, raise_first
from .lock import Lease, describe_lease, lease_file, lease_is_live, live_holders, read_lease
from .schema import TASK_TABLES
from .writer import (
    SHARD_PROGRESS,
    _group_attrs,
    finish_store,
    read_progress,
    read_shard_progress,
    shard_chunks,
)

log = logging.getLogger(__name__)

METRIC_BLOCK = 4096  # float64 sums over fixed blocks, in order (DESIGN section 3)
RUN_TIMING_KEYS = ("elapsed_s_this_run", "tokens_per_s_this_run", "resumed_from")


class ShardsIncompleteError(IncompleteStoreError):
    """A store written in shards lacks chunks: some shards have not finished."""


class NotShardedError(StoreError):
    """`finalize` was given a store that a single writer writes (it completes the store itself)."""


# ------------------------------------------------------------------ metrics (single writer and finalize alike)
def position_metrics(tlp: np.ndarray, correct: np.ndarray, n_chars: np.ndarray, n_bytes: np.ndarray) -> dict:
    """NLL, PPL, BPC, BPB and accuracy of one store's positions, float64 sums over fixed blocks in order."""
    def blocked(x):
        x = np.asarray(x, np.float64)
        return float(sum(np.add.reduceat(x, np.arange(0, len(x), METRIC_BLOCK)).tolist())) if len(x) else 0.0

    nll = blocked(-np.asarray(tlp).astype(np.float64))
    n = len(tlp)
    chars, nbytes = blocked(n_chars), blocked(n_bytes)
    return {"n_positions": n, "nll_sum_nats": nll, "nll_mean": nll / n, "ppl": math.exp(nll / n),
            "bpc": nll / math.log(2) / chars if chars else None,
            "bpb": nll / math.log(2) / nbytes if nbytes else None,
            "acc": blocked(correct) / n, "n_chars": int(chars), "n_bytes": int(nbytes)}


def store_metrics(store) -> dict:
    """The metrics of a text or task store computed from its stored arrays (what `finalize` records)."""
    from .tasks import task_metrics

    names = ["target_logprob", "target_rank", "target_ties", "n_chars", "n_bytes"]
    if store.kind not in ("text", "task"):
        raise StoreError(f"{store.path}: metrics of a {store.kind} store are not computed from the store here; "
                         "only text and task stores are written in shards")
    got = store.read(names + (["item_id", "option_id"] if store.kind == "task" else []))
    correct = (got["target_rank"] == 0) & (got["target_ties"] == 0)
    metrics = position_metrics(got["target_logprob"], correct, got["n_chars"], got["n_bytes"])
    if store.kind == "task":
        tables = {t: store.table(t) for t in TASK_TABLES if t in store.tables}
        metrics = {**task_metrics(store.attrs["task"]["kind"], got, tables), "token_metrics": metrics}
    return metrics


# ------------------------------------------------------------------ where a sharded store stands
def _ranges(chunks) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0..2, 5, 7..8'."""
    chunks = sorted(chunks)
    out, i = [], 0
    while i < len(chunks):
        j = i
        while j + 1 < len(chunks) and chunks[j + 1] == chunks[j] + 1:
            j += 1
        out.append(str(chunks[i]) if i == j else f"{chunks[i]}..{chunks[j]}")
        i = j + 1
    return ", ".join(out)


def shard_status(path) -> dict:
    """Where a store written in shards stands: per shard its chunks, how many are done, whether its lease is
    live; the missing chunks overall. Reads only the small progress and lease files."""
    path = Path(path)
    prog = read_progress(path)
    S = int(prog.get("num_shards") or 1)
    if S <= 1:
        raise NotShardedError(f"{path} is not written in shards")
    n, cs = int(prog["n_positions"]), int(prog["chunk_size"])
    done = set(prog.get("chunks_done", []))
    shards = []
    for i in range(S):
        owned = shard_chunks(n, cs, S, i)
        own_done = sorted(c for c in owned if c in done)
        rec = read_lease(lease_file(path, f"shard-{i}"))
        shards.append({"shard": i, "chunks": (owned.start, owned.stop), "n_chunks": len(owned),
                       "n_done": len(own_done), "missing": [c for c in owned if c not in done],
                       "writing": describe_lease(rec) if lease_is_live(rec) else None,
                       "runs": read_shard_progress(path, i).get("runs", [])})
    missing = [c for s in shards for c in s["missing"]]
    return {"num_shards": S, "n_positions": n, "chunk_size": cs, "n_chunks": -(-n // cs),
            "n_written": int(prog.get("n_written", 0)), "shards": shards, "missing": missing}


def store_progress(path) -> tuple[str, int, int, str]:
    """(state, positions written, N, detail) of the store at ``path``: state 'complete', 'partial' or
    'missing' ('damaged' when its metadata cannot be read); detail names the shards still to run."""
    path = Path(path)
    attrs = _group_attrs(path) if path.is_dir() else None
    if attrs is None:
        if path.is_dir() and (path / ".arcache-progress.json").exists():
            return "partial", 0, 0, "created, nothing written yet"
        if path.is_dir() and (path / "zarr.json").exists():
            return "damaged", 0, 0, "its zarr.json is not a store's"
        return "missing", 0, 0, ""
    n = int(attrs.get("n_positions", 0))
    if attrs.get("complete"):
        return "complete", n, n, ""
    if int(attrs.get("num_shards") or 1) > 1:
        st = shard_status(path)
        todo = [s for s in st["shards"] if s["missing"]]
        detail = "; ".join(f"shard {s['shard']}: {s['n_done']}/{s['n_chunks']} chunks"
                           + (" (being written)" if s["writing"] else "") for s in todo)
        if not todo:
            detail = "every shard is done: finalize it"
        return "partial", st["n_written"], n, detail
    return "partial", int(read_progress(path).get("n_done", 0)), n, ""


# ------------------------------------------------------------------ finalize
def check_shards_done(path, st: dict | None = None) -> None:
    """Raise ShardsIncompleteError naming each unfinished shard, its missing chunks and the command to run."""
    path = Path(path)
    st = st or shard_status(path)
    todo = [s for s in st["shards"] if s["missing"]]
    if not todo:
        return
    S = st["num_shards"]
    parts = [f"shard {s['shard']} lacks chunk(s) {_ranges(s['missing'])} of {s['chunks'][0]}..{s['chunks'][1] - 1}"
             + (" (being written now)" if s["writing"] else "") for s in todo]
    shards = ",".join(str(s["shard"]) for s in todo)
    raise ShardsIncompleteError(
        f"{path} is not finished: {'; '.join(parts)}. Run the extraction again with extract.num_shards={S} "
        f"extract.shard={shards} (the same other settings; each shard resumes from its progress), then finalize")


def finalize(path) -> object:
    """Finish a store written in shards; returns the opened complete Store (also when it already was complete).

    Refuses (typed, one line) a store that is not sharded (NotShardedError), one with a shard being written
    (StoreLockedError), one lacking chunks (ShardsIncompleteError naming them) or a damaged one (the chunk
    checks of `open_store`)."""
    from .reader import open_store

    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise StoreNotFoundError(f"no store at {path} (no zarr.json); run the shards of the extraction first")
    attrs = _group_attrs(path)
    if attrs is None:
        open_store(path, allow_partial=True)  # raises the precise damage
        raise StoreError(f"{path}: its zarr.json is not a store's")
    if attrs.get("complete"):
        log.info("%s is already complete", path)
        return open_store(path)
    if int(attrs.get("num_shards") or 1) <= 1:
        raise NotShardedError(f"{path} is written by one writer, not in shards; that writer completes it: resume the "
                              "extraction with the same config")
    with Lease(lease_file(path, "store"), what=f"{path} (store lease)") as lease:
        busy = live_holders(path, ignore=(lease.lock_file.name,))
        if busy:
            raise StoreLockedError(f"{path} is being written by {'; '.join(busy)}; finalize it once they are done")
        st = shard_status(path)
        check_shards_done(path, st)
        store = open_store(path, allow_partial=True, check=False)
        problems = []
        for name in store.names:
            problems += missing_chunks(path, name, open_array(path, store.group, name), store.n)
        raise_first(problems, path)  # a chunk recorded as done whose file is gone
        store = open_store(path, allow_partial=True)
        metrics = {**store_metrics(store), **{k: None for k in RUN_TIMING_KEYS}}
        sharding = {"num_shards": st["num_shards"],
                    "shards": [{"shard": s["shard"], "chunks": list(s["chunks"]), "runs": s["runs"]}
                               for s in st["shards"]]}
        group = zarr.open_group(path, mode="r+")
        finish_store(path, group, {"metrics": metrics, "sharding": sharding}, attrs["setting_hash"])
        for i in range(st["num_shards"]):
            (path / SHARD_PROGRESS.format(i)).unlink(missing_ok=True)
    done = open_store(path)
    log.info("%s: finalized from %d shards (%d positions)", path, st["num_shards"], done.n)
    return done


def finalize_if_ready(path):
    """After a shard finished: finalize the store if every shard is done and none is being written; None if
    not (yet), or if another process is finalizing it. Never raises for those ordinary cases."""
    path = Path(path)
    st = shard_status(path)
    todo = [s["shard"] for s in st["shards"] if s["missing"]]
    if todo:
        log.info("%s: shard(s) %s not finished yet; the last shard to finish finalizes the store (or run "
                 "`python -m pipeline.stores finalize %s`)", path, ",".join(map(str, todo)), path)
        return None
    try:
        return finalize(path)
    except StoreLockedError as e:
        log.info("%s: not finalized here (%s)", path, e)
        return None
