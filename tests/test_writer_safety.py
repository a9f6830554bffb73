"""Nothing lost, nothing silently wrong, on the writer's side (issue #11): what overwrite and `stores rm` may
delete, the OS writer lock under races and SIGKILL, temp files left by a killed writer."""

import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from test_store import _hold_lock

from pipeline import stores as cli
from pipeline.store import StoreLockedError, StoreWriter, open_store, verify_store
from pipeline.store.errors import NotAStoreError, SettingMismatchError, StoreExistsError
from pipeline.store.lock import WriterLock, lock_is_live, read_lock
from pipeline.store.schema import LOCK_FILE, PROGRESS_FILE
from pipeline.store.synthetic import (
    arrays_from_logprobs,
    random_distributions,
    synthetic_attrs,
    write_store_from_logprobs,
)
from pipeline.store.writer import clear_store, store_kind

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def dists():
    return random_distributions(200, 40, np.random.default_rng(0), n_models=2, tie_grid=0.5)


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file and directory under folder, with file contents: equal snapshots = nothing touched."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def ordinary_folder(path: Path) -> Path:
    (path / "thesis" / "figures").mkdir(parents=True)
    (path / "notes.txt").write_text("my notes")
    (path / "thesis" / "main.tex").write_text("\\documentclass{article}")
    (path / "thesis" / "figures" / "plot.png").write_bytes(b"\x89PNG...")
    return path


# ------------------------------------------------------------------ overwrite and rm delete only stores

def test_review_overwrite_of_an_ordinary_folder_deletes_nothing(tmp_path, dists):
    """Review case: `store=<an ordinary folder> overwrite=true` deleted everything in it and exited 0."""
    targets, (lp, _) = dists
    folder = ordinary_folder(tmp_path / "home")
    before = snapshot(folder)
    with pytest.raises(NotAStoreError, match=f"{folder}.*not a store of this project.*notes.txt"):
        write_store_from_logprobs(folder, lp, targets, 4, overwrite=True)
    assert snapshot(folder) == before  # not even a lock file was left in it


def test_overwrite_refuses_a_foreign_zarr_group_and_a_file(tmp_path, dists):
    targets, (lp, _) = dists
    foreign = tmp_path / "other.zarr"
    g = zarr.open_group(foreign, mode="w")
    g.attrs["schema_version"] = 1  # a look-alike attribute is not enough: the writer's own keys are missing
    g.create_array("data", shape=(4,), dtype="int32")[:] = np.arange(4)
    before = snapshot(foreign)
    with pytest.raises(NotAStoreError, match="other.zarr"):
        write_store_from_logprobs(foreign, lp, targets, 4, overwrite=True)
    assert snapshot(foreign) == before
    a_file = tmp_path / "file.zarr"
    a_file.write_text("x")
    with pytest.raises(NotAStoreError, match="not a directory"):
        write_store_from_logprobs(a_file, lp, targets, 4, overwrite=True)
    assert a_file.read_text() == "x"


def test_overwrite_of_a_store_replaces_only_the_stores_own_entries(tmp_path, dists, caplog):
    targets, (lp_a, lp_b) = dists
    path = tmp_path / "s.zarr"
    write_store_from_logprobs(path, lp_a, targets, 4, chunk_size=64)
    (path / "README-mine.txt").write_text("kept")
    (path / "my-subfolder").mkdir()
    (path / "my-subfolder" / "x").write_text("kept too")
    s = write_store_from_logprobs(path, lp_b, targets, 6, "float32", chunk_size=64, overwrite=True)
    assert s.k == 6 and s.logprob_dtype == "float32"
    np.testing.assert_array_equal(s.read(["target_logprob"])["target_logprob"],
                                  arrays_from_logprobs(lp_b, targets, 6)["target_logprob"])
    assert (path / "README-mine.txt").read_text() == "kept" and (path / "my-subfolder" / "x").read_text() == "kept too"
    assert "README-mine.txt" in caplog.text  # named in a warning
    assert verify_store(path).ok


def test_empty_directory_and_lock_only_directory_are_writable(tmp_path, dists):
    targets, (lp, _) = dists
    (tmp_path / "empty.zarr").mkdir()
    assert store_kind(tmp_path / "empty.zarr") == "empty"
    assert write_store_from_logprobs(tmp_path / "empty.zarr", lp, targets, 4).complete
    assert store_kind(tmp_path / "nothing.zarr") == "missing"


def test_killed_while_creating_is_recreated_but_a_damaged_store_with_data_is_not(tmp_path, dists):
    targets, (lp, _) = dists
    path = tmp_path / "s.zarr"
    path.mkdir()
    (path / PROGRESS_FILE).write_text(json.dumps({"n_done": 0, "setting_hash": "x"}))  # killed before zarr.json
    assert store_kind(path) == "store"
    assert write_store_from_logprobs(path, lp, targets, 4).complete
    (path / "zarr.json").write_text("{ not json")  # a complete store whose metadata got damaged
    with pytest.raises(StoreExistsError, match="zarr.json is missing or unreadable but 200 positions"):
        write_store_from_logprobs(path, lp, targets, 4)


def test_rm_refuses_anything_but_a_store_and_deletes_nothing(tmp_path, dists, capsys):
    targets, (lp, _) = dists
    folder = ordinary_folder(tmp_path / "home")
    foreign = tmp_path / "data" / "x.zarr"  # a foreign Zarr group where find_stores looks
    zarr.open_group(foreign, mode="w").create_array("v", shape=(3,), dtype="int8")
    write_store_from_logprobs(tmp_path / "data" / "mine.zarr", lp, targets, 4)
    (tmp_path / "data" / "mine.zarr" / "kept.txt").write_text("not the store's")
    before_home, before_foreign = snapshot(folder), snapshot(foreign)
    assert cli.main(["rm", str(folder)]) == 1  # a folder holding no store: refused by name, nothing removed
    assert "home is not a store of this project and holds none" in capsys.readouterr().err
    assert cli.main(["rm", str(tmp_path / "data")]) == 1  # the foreign group is refused by name
    err = capsys.readouterr().err
    assert "x.zarr is not a store of this project" in err
    assert snapshot(folder) == before_home and snapshot(foreign) == before_foreign
    # the store went, except the file someone put inside it (and so its directory)
    assert sorted(p.name for p in (tmp_path / "data" / "mine.zarr").iterdir()) == ["kept.txt"]
    write_store_from_logprobs(tmp_path / "clean.zarr", lp, targets, 4)
    assert cli.main(["rm", str(tmp_path / "clean.zarr")]) == 0 and not (tmp_path / "clean.zarr").exists()
    assert cli.main(["rm", str(tmp_path / "missing.zarr")]) == 1


def test_rm_of_a_store_killed_before_its_zarr_json_and_of_a_locked_store(tmp_path, dists, capsys):
    targets, (lp, _) = dists
    early = tmp_path / "early.zarr"
    early.mkdir()
    (early / PROGRESS_FILE).write_text(json.dumps({"n_done": 0, "setting_hash": "x"}))
    assert cli.main(["rm", str(early)]) == 0 and not early.exists()
    write_store_from_logprobs(tmp_path / "busy.zarr", lp, targets, 4)
    holder = _hold_lock(tmp_path / "busy.zarr")
    try:
        assert cli.main(["rm", str(tmp_path / "busy.zarr")]) == 1
        assert f"pid {holder.pid}" in capsys.readouterr().err
        assert open_store(tmp_path / "busy.zarr").complete
    finally:
        holder.kill()
        holder.wait()


def test_clear_store_refuses_a_foreign_directory(tmp_path):
    folder = ordinary_folder(tmp_path / "home")
    before = snapshot(folder)
    with pytest.raises(NotAStoreError):
        clear_store(folder, remove_dir=True)
    assert snapshot(folder) == before


# ------------------------------------------------------------------ resume: setting, temp files

def test_partial_store_of_another_setting_names_what_differs(tmp_path, dists):
    targets, (lp, _) = dists
    arrays = arrays_from_logprobs(lp, targets, 4)
    kw = dict(n_positions=200, top_k=4, n_classes=40, chunk_size=64)
    attrs = synthetic_attrs("m")
    w = StoreWriter(tmp_path / "p.zarr", setting_hash="one", attrs=attrs, **kw)
    w.write(0, **{k: v[:100] for k, v in arrays.items()})
    w.abort()
    other = {**attrs, "model": {**attrs["model"], "fingerprint": "sha256:other-weights"}}
    with pytest.raises(SettingMismatchError, match="setting_hash one != two.*model.fingerprint"):
        StoreWriter(tmp_path / "p.zarr", setting_hash="two", attrs=other, **kw)
    assert open_store(tmp_path / "p.zarr", allow_partial=True).n_valid == 64  # untouched


def test_review_leftover_partial_temp_files_are_removed_on_resume(tmp_path, dists):
    """Review case: a leftover `*.partial` chunk temp file stayed in a resumed store forever."""
    targets, (lp, _) = dists
    arrays = arrays_from_logprobs(lp, targets, 4)
    kw = dict(n_positions=200, top_k=4, n_classes=40, attrs=synthetic_attrs("m"), setting_hash="h", chunk_size=64)
    path = tmp_path / "p.zarr"
    w = StoreWriter(path, **kw)
    w.write(0, **{k: v[:100] for k, v in arrays.items()})
    w.abort()
    # what a writer killed inside Zarr's write (temp file, then rename) or inside the progress update leaves
    left = [path / "topk_ids" / "c" / "1" / f"0.{'ab' * 16}.partial", path / f"zarr.{'0f' * 16}.partial",
            path / (PROGRESS_FILE + ".tmp")]
    for p in left:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half a chunk")
    w = StoreWriter(path, **kw)
    assert not any(p.exists() for p in left)
    assert not [p for p in path.rglob("*") if p.name.endswith((".partial", ".tmp"))]
    w.write(0, **arrays)
    s = w.close()
    np.testing.assert_array_equal(s.read(["topk_ids"])["topk_ids"], arrays["topk_ids"])
    assert verify_store(path).ok


# ------------------------------------------------------------------ the OS lock



def _racer(path: str, trials: int, start, done, results) -> None:
    for t in range(trials):
        start.wait()
        lock = WriterLock.for_store(f"{path}/{t}.zarr")
        try:
            lock.acquire()
            got = True
        except StoreLockedError:
            got = False
        results.put((t, os.getpid(), got))
        done.wait()  # hold it until every racer has tried
        lock.release()


@pytest.mark.parametrize("stale", [False, True], ids=["fresh", "stale-record"])
def test_review_concurrent_takeovers_leave_exactly_one_holder(tmp_path, stale):
    """Review case: in 18 of 40 trials two or more processes believed they held a stale lock."""
    n_procs, trials = 8, 20
    if stale:  # the record a SIGKILLed writer leaves: a pid that is gone, no OS lock
        for t in range(trials):
            (tmp_path / f"{t}.zarr").mkdir()
            (tmp_path / f"{t}.zarr" / LOCK_FILE).write_text(json.dumps({"pid": 999_999_999, "host": "h"}))
    ctx = mp.get_context("fork")
    start, done, results = ctx.Barrier(n_procs), ctx.Barrier(n_procs), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(str(tmp_path), trials, start, done, results)) for _ in range(n_procs)]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in range(n_procs * trials)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    holders = {t: sum(g for tt, _, g in got if tt == t) for t in range(trials)}
    assert holders == {t: 1 for t in range(trials)}
    assert all(not (tmp_path / f"{t}.zarr" / LOCK_FILE).exists() for t in range(trials))  # released: removed


def _churn(path: str, rounds: int, inside, clashes) -> None:
    for _ in range(rounds):
        lock = WriterLock.for_store(path)
        while True:
            try:
                lock.acquire()
                break
            except StoreLockedError:
                time.sleep(0.001)
        with inside.get_lock():
            inside.value += 1
            if inside.value != 1:
                clashes.value += 1
        time.sleep(0.001)
        with inside.get_lock():
            inside.value -= 1
        lock.release()  # unlinks the file and removes the directory while others wait on the old inode


def test_lock_stays_exclusive_while_holders_release_and_remove_it(tmp_path):
    ctx = mp.get_context("fork")
    inside, clashes = ctx.Value("i", 0), ctx.Value("i", 0)
    path = str(tmp_path / "churn.zarr")
    procs = [ctx.Process(target=_churn, args=(path, 25, inside, clashes)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert clashes.value == 0


def test_lock_record_and_probe(tmp_path):
    path = tmp_path / "s.zarr"
    assert read_lock(path / LOCK_FILE) is None
    with WriterLock.for_store(path) as lock:
        info = read_lock(lock.lock_file)
        assert info["pid"] == os.getpid() and lock_is_live(info)
        with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}"):
            WriterLock.for_store(path).acquire()  # a second lock in the same process is refused too
    assert not path.exists()  # the lock made the directory for nothing: removed with it
    holder = _hold_lock(path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    info = read_lock(path / LOCK_FILE)
    assert info["pid"] == holder.pid and not lock_is_live(info)  # the record stays, the lock is gone
    t0 = time.perf_counter()
    with WriterLock.for_store(path):
        assert time.perf_counter() - t0 < 2


def test_a_lock_on_a_file_its_holder_just_removed_is_not_a_lock(tmp_path, monkeypatch):
    """The race behind two holders: B opens the lock file, A releases (unlinks it), C locks a new file at the
    path, B's flock on the old, unlinked file then succeeds. B must notice and contend for the current file."""
    import pipeline.store.lock as lock_mod

    path = tmp_path / "s.zarr"
    a = WriterLock.for_store(path)
    a.acquire()
    stale_fd = os.open(a.lock_file, os.O_RDWR)  # B opened the file while A held it
    a.release()
    c = WriterLock.for_store(path)
    c.acquire()
    real_open, calls = os.open, []

    def open_once_stale(p, flags, *mode):
        calls.append(p)
        return stale_fd if len(calls) == 1 else real_open(p, flags, *mode)

    monkeypatch.setattr(lock_mod.os, "open", open_once_stale)
    monkeypatch.setattr(lock_mod, "_BUSY_RETRY_S", 0.0)
    b = WriterLock.for_store(path)
    with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}"):
        b.acquire()
    assert len(calls) >= 2 and not b.held  # it looked again at the file now at the path
    c.release()


def test_rm_partial_keeps_a_damaged_store(tmp_path, dists, capsys):
    """A store whose zarr.json no longer parses may be complete: `rm --partial` must not take it for unfinished."""
    targets, (lp, _) = dists
    path = tmp_path / "root" / "done.zarr"
    write_store_from_logprobs(path, lp, targets, 4)
    (path / "zarr.json").write_text("{ damaged")
    before = snapshot(path)
    assert cli.main(["rm", "--partial", str(tmp_path / "root")]) == 0
    assert "damaged, not unfinished" in capsys.readouterr().err
    assert snapshot(path) == before
