"""The store format: round trip, resume after SIGKILL, locks, typed errors, truncated view, verify, CLI."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline import stores as cli
from pipeline.store import (
    IncompatiblePairError,
    IncompleteStoreError,
    SchemaError,
    StoreExistsError,
    StoreLockedError,
    StoreNotFoundError,
    StoreWriter,
    UnknownSchemaError,
    align,
    open_store,
    setting_tag,
    store_path,
    verify_store,
)
from pipeline.store.errors import NotAStoreError
from pipeline.store.schema import LOCK_FILE, PROGRESS_FILE, required_arrays
from pipeline.store.synthetic import (
    arrays_from_logprobs,
    random_distributions,
    synthetic_attrs,
    write_store_from_logprobs,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("store_writer_script.py")


@pytest.fixture
def dists():
    return random_distributions(200, 40, np.random.default_rng(0), n_models=2, tie_grid=0.5)


def all_arrays(store):
    return store.read(store.names)


def test_round_trip_every_array_and_attribute(tmp_path, dists):
    targets, (lp, _) = dists
    doc = np.arange(200) // 30
    chars = np.random.default_rng(1).integers(1, 9, 200)
    extra = {"model": {"revision": "abc123", "n_params": 12345}, "runtime": {"git_sha": "deadbeef"}}
    store = write_store_from_logprobs(tmp_path / "a.zarr", lp, targets, 8, "float32", model="m", doc_id=doc,
                                      n_chars=chars, n_bytes=chars + 1, attrs=extra, chunk_size=64)
    want = arrays_from_logprobs(lp, targets, 8, "float32", doc_id=doc, n_chars=chars, n_bytes=chars + 1)
    got = all_arrays(open_store(tmp_path / "a.zarr"))
    assert set(got) == set(required_arrays("text")) | {"entropy"}
    assert store.kind == "text" and store.attrs["kind"] == "text"
    for name, value in want.items():
        assert got[name].dtype == value.dtype, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    attrs = store.attrs
    assert attrs["complete"] is True and attrs["schema_version"] == 1
    assert attrs["model"]["revision"] == "abc123" and attrs["model"]["name"] == "m"
    assert attrs["runtime"] == {"git_sha": "deadbeef"}
    assert (store.n, store.k, store.n_classes, store.chunk_size) == (200, 8, 40, 64)
    assert len(store.stream_hash) == 64
    # chunk-aligned iteration covers every position once
    pieces = [(lo, hi) for lo, hi, _ in store.iter_chunks(["targets"], 10, 190)]
    assert pieces[0] == (10, 64) and pieces[-1] == (128, 190)
    assert sum(hi - lo for lo, hi in pieces) == 180


def test_tables_round_trip(tmp_path, dists):
    targets, (lp, _) = dists
    a = synthetic_attrs("m")
    arrays = arrays_from_logprobs(lp, targets, 4)
    vocab = np.array([f"tok{i}" if i % 7 else f"ü{i} " for i in range(40)])
    emb = np.random.default_rng(0).standard_normal((40, 3)).astype(np.float16)
    with StoreWriter(tmp_path / "t.zarr", n_positions=200, top_k=4, n_classes=40, attrs=a, setting_hash="x") as w:
        w.write_table("vocab", vocab)
        w.write_table("embedding", emb)
        w.write(0, **arrays)
    s = open_store(tmp_path / "t.zarr")
    assert s.tables == ["vocab", "embedding"]
    np.testing.assert_array_equal(s.table("vocab"), vocab)
    np.testing.assert_array_equal(s.table("embedding"), emb)
    assert verify_store(s.path).ok


def test_k_larger_than_classes_is_clamped_and_recorded(tmp_path, dists):
    targets, (lp, _) = dists
    s = write_store_from_logprobs(tmp_path / "c.zarr", lp[:, :10] - np.logaddexp.reduce(lp[:, :10], axis=1)[:, None],
                                  targets % 10, 64)
    assert s.k == 10 and s.attrs["top_k_requested"] == 64
    assert np.all(np.isneginf(s.read(["tail_logmass"])["tail_logmass"]))


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ref = tmp_path / "ref.zarr"
    subprocess.run([sys.executable, str(SCRIPT), str(ref), "0"], check=True, env=env)
    killed = tmp_path / "killed.zarr"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(killed), "0.3"], env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        prog = killed / PROGRESS_FILE
        if prog.exists() and json.loads(prog.read_text())["n_done"] >= 32:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (killed / LOCK_FILE).exists(), "the killed writer should have left its lock behind"
    with pytest.raises(IncompleteStoreError, match="incomplete"):
        open_store(killed)
    partial = open_store(killed, allow_partial=True)
    assert 32 <= partial.n_valid < partial.n
    # restart: takes over the stale lock and continues from the last complete chunk
    subprocess.run([sys.executable, str(SCRIPT), str(killed), "0"], check=True, env=env)
    a, b = open_store(ref), open_store(killed)
    for name in a.names:
        x, y = a.read([name])[name], b.read([name])[name]
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), name
    assert a.stream_hash == b.stream_hash
    assert not (killed / LOCK_FILE).exists()


HOLDER = ("import sys, time\n"
          "from pipeline.store.lock import WriterLock\n"
          "WriterLock.for_store(sys.argv[1]).acquire()\n"
          "print('held', flush=True)\n"
          "time.sleep(120)\n")


def _hold_lock(path: Path) -> subprocess.Popen:
    """A process holding the store's OS lock (as a running extraction does)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_live_lock_refused_and_a_sigkilled_holders_lock_taken_over_at_once(tmp_path, dists):
    targets, (lp, _) = dists
    holder = _hold_lock(tmp_path / "live.zarr")
    try:
        t0 = time.perf_counter()
        with pytest.raises(StoreLockedError, match=rf"pid {holder.pid} on host '{socket.gethostname()}'"):
            write_store_from_logprobs(tmp_path / "live.zarr", lp, targets, 4)
        assert time.perf_counter() - t0 < 5  # fails fast, no waiting for the holder
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the kernel released the lock with the process: taken over at once, though the pid/host record stays
    assert json.loads((tmp_path / "live.zarr" / LOCK_FILE).read_text())["pid"] == holder.pid
    write_store_from_logprobs(tmp_path / "live.zarr", lp, targets, 4)
    assert open_store(tmp_path / "live.zarr").complete
    assert not (tmp_path / "live.zarr" / LOCK_FILE).exists()


def test_a_lock_record_without_a_holder_is_not_a_lock(tmp_path, dists):
    """The pid/host text is for messages only: a record of a live pid (or another host) with no OS lock held
    (copied, or left by a killed process whose pid was reused) does not block a writer."""
    targets, (lp, _) = dists
    (tmp_path / "s.zarr").mkdir()
    (tmp_path / "s.zarr" / LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "host": "elsewhere", "since": 0}))
    assert write_store_from_logprobs(tmp_path / "s.zarr", lp, targets, 4).complete


def test_second_writer_in_process_fails_fast(tmp_path, dists):
    targets, (lp, _) = dists
    kw = dict(n_positions=200, top_k=4, n_classes=40, attrs=synthetic_attrs("m"), setting_hash="h")
    w = StoreWriter(tmp_path / "s.zarr", **kw)
    try:
        with pytest.raises(StoreLockedError):
            StoreWriter(tmp_path / "s.zarr", **kw)
    finally:
        w.abort()


def test_existing_stores_are_not_overwritten(tmp_path, dists):
    targets, (lp, lp_b) = dists
    write_store_from_logprobs(tmp_path / "a.zarr", lp, targets, 4)
    with pytest.raises(StoreExistsError, match="overwrite"):
        write_store_from_logprobs(tmp_path / "a.zarr", lp_b, targets, 4)
    s = write_store_from_logprobs(tmp_path / "a.zarr", lp_b, targets, 4, overwrite=True)
    np.testing.assert_array_equal(s.read(["target_logprob"])["target_logprob"],
                                  arrays_from_logprobs(lp_b, targets, 4)["target_logprob"])
    (tmp_path / "junk.zarr").mkdir()
    (tmp_path / "junk.zarr" / "notes.txt").write_text("mine")
    with pytest.raises(NotAStoreError, match="not a store"):
        write_store_from_logprobs(tmp_path / "junk.zarr", lp, targets, 4)
    assert sorted(p.name for p in (tmp_path / "junk.zarr").iterdir()) == ["notes.txt"]  # no lock file left in it


def test_partial_store_of_another_setting_is_refused(tmp_path, dists):
    targets, (lp, _) = dists
    arrays = arrays_from_logprobs(lp, targets, 4)
    kw = dict(n_positions=200, top_k=4, n_classes=40, attrs=synthetic_attrs("m"), chunk_size=64)
    w = StoreWriter(tmp_path / "p.zarr", setting_hash="one", **kw)
    w.write(0, **{k: v[:100] for k, v in arrays.items()})
    w.abort()
    assert open_store(tmp_path / "p.zarr", allow_partial=True).n_valid == 64  # whole chunks only
    with pytest.raises(StoreExistsError, match="setting_hash"):
        StoreWriter(tmp_path / "p.zarr", setting_hash="two", **kw)
    w = StoreWriter(tmp_path / "p.zarr", setting_hash="one", **kw)
    assert w.n_done == 64
    w.write(0, **arrays)  # rows before n_done are skipped
    s = w.close()
    np.testing.assert_array_equal(s.read(["topk_ids"])["topk_ids"], arrays["topk_ids"])


def test_write_errors_are_typed(tmp_path, dists):
    targets, (lp, _) = dists
    arrays = arrays_from_logprobs(lp, targets, 4)
    kw = dict(n_positions=200, top_k=4, n_classes=40, attrs=synthetic_attrs("m"), setting_hash="h", chunk_size=64)
    w = StoreWriter(tmp_path / "e.zarr", **kw)
    try:
        with pytest.raises(SchemaError, match="missing"):
            w.write(0, **{k: v for k, v in arrays.items() if k != "entropy"})
        with pytest.raises(SchemaError, match="gap"):
            w.write(10, **arrays)
        with pytest.raises(SchemaError, match="shape"):
            w.write(0, **{**arrays, "topk_ids": arrays["topk_ids"][:, :3]})
        with pytest.raises(SchemaError, match="dtype"):
            w.write(0, **{**arrays, "targets": arrays["targets"].astype(np.float32)})
        with pytest.raises(SchemaError, match="beyond"):
            w.write(0, **{k: np.concatenate([v, v[:1]]) for k, v in arrays.items()})
    finally:
        w.abort()
    with pytest.raises(SchemaError, match="tokenizer"):
        StoreWriter(tmp_path / "f.zarr", **{**kw, "attrs": {"model": {"name": "m"}}})
    with pytest.raises(SchemaError, match="empty"):
        StoreWriter(tmp_path / "g.zarr", **{**kw, "n_positions": 0})
    with pytest.raises(SchemaError, match="logprob_dtype"):
        StoreWriter(tmp_path / "h.zarr", **kw, logprob_dtype="bfloat16")


def test_reader_errors_are_typed(tmp_path, dists):
    targets, (lp, _) = dists
    with pytest.raises(StoreNotFoundError, match="no store"):
        open_store(tmp_path / "nothing.zarr")
    write_store_from_logprobs(tmp_path / "a.zarr", lp, targets, 4)
    g = zarr.open_group(tmp_path / "a.zarr", mode="r+")
    g.attrs["schema_version"] = 99
    with pytest.raises(UnknownSchemaError, match="99"):
        open_store(tmp_path / "a.zarr")


def test_align_reports_what_differs(tmp_path, dists):
    targets, (lp_a, lp_b) = dists
    a = write_store_from_logprobs(tmp_path / "a.zarr", lp_a, targets, 8, "float16", model="A")
    b = write_store_from_logprobs(tmp_path / "b.zarr", lp_b, targets, 4, "float32", model="B", context_length=512,
                                  stride=256)
    al = align(a, b)
    assert al.ok
    assert {f for f, _, _ in al.flagged} == {"protocol.context_length", "protocol.stride", "top_k", "logprob_dtype"}
    other_targets = targets.copy()
    other_targets[57] = (other_targets[57] + 1) % 40
    c = write_store_from_logprobs(tmp_path / "c.zarr", lp_b, other_targets, 8, model="C")
    al = align(a, c)
    assert not al.ok and "targets first differ at position 57" in al.differences[0][0]
    with pytest.raises(IncompatiblePairError, match="position 57") as e:
        al.raise_if_incompatible()
    assert e.value.field.startswith("stream_hash")
    d = write_store_from_logprobs(tmp_path / "d.zarr", lp_b, targets, 8, model="D", tokenizer="another-tokenizer")
    with pytest.raises(IncompatiblePairError, match="tokenizer.vocab_hash") as e:
        align(a, d).raise_if_incompatible()
    assert e.value.field == "tokenizer.vocab_hash"
    e2 = write_store_from_logprobs(tmp_path / "e.zarr", lp_b, targets, 8, model="E", split="validation")
    assert align(a, e2).differences[0][0] == "dataset.split"


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_truncated_view_matches_store_written_at_smaller_k(tmp_path, dists, dtype):
    targets, (lp, _) = dists
    big = write_store_from_logprobs(tmp_path / "k12.zarr", lp, targets, 12, dtype, chunk_size=64)
    small = write_store_from_logprobs(tmp_path / "k5.zarr", lp, targets, 5, dtype, chunk_size=64)
    view = big.truncated(5)
    assert view.k == 5 and view.attrs["truncated_from"] == 12
    got, want = view.read(view.names), small.read(small.names)
    for name in ("targets", "target_logprob", "target_rank", "target_ties", "topk_logprobs", "entropy", "doc_id"):
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    # ids: equal as sets per row (near-ties may reorder within equal values)
    for g_row, w_row in zip(got["topk_ids"], want["topk_ids"]):
        assert set(g_row) == set(w_row)
    tail_view = got["tail_logmass"].astype(np.float64)
    tail_true = want["tail_logmass"].astype(np.float64)
    assert np.all(tail_view >= tail_true - 1e-6)  # an upper bound (true tail rounded to float32 may sit 1/2 ulp up)
    tol = 1e-6 if dtype == "float32" else 5e-3
    np.testing.assert_allclose(tail_view, tail_true, rtol=0, atol=tol)
    # chunked reads of the view agree with whole reads
    pieces = np.concatenate([c["tail_logmass"] for _, _, c in view.iter_chunks(["tail_logmass"])])
    np.testing.assert_array_equal(pieces, got["tail_logmass"])
    with pytest.raises(SchemaError, match="k <= K"):
        big.truncated(13)


def test_verify_catches_corrupted_and_missing_chunks(tmp_path, dists):
    targets, (lp, _) = dists
    s = write_store_from_logprobs(tmp_path / "a.zarr", lp, targets, 4, chunk_size=64)
    assert verify_store(s.path).ok
    chunk = tmp_path / "a.zarr" / "topk_logprobs" / "c" / "1" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    report = verify_store(s.path)
    assert not report.ok and any("topk_logprobs" in p and "corrupt" in p and "64..128" in p for p in report.problems)
    (tmp_path / "a.zarr" / "targets" / "c" / "2").unlink()
    report = verify_store(s.path)
    assert any("'targets': 1 of its 4 written chunks are missing" in p for p in report.problems)


def test_verify_catches_a_wrong_stream_hash(tmp_path, dists):
    targets, (lp, _) = dists
    s = write_store_from_logprobs(tmp_path / "a.zarr", lp, targets, 4)
    zarr.open_group(s.path, mode="r+").attrs["stream_hash"] = "0" * 64
    assert any("hash mismatch" in p for p in verify_store(s.path).problems)


def test_store_path_encodes_setting():
    tag = setting_tag(1024, 512, 64, "float16", "bfloat16", quantization="4bit")
    assert tag == "L1024-S512-K64-lp16-bfloat16-q4bit"
    p = store_path("stores", "wikitext2", "test", "EleutherAI/pythia-70m", tag)
    assert p.as_posix() == "stores/wikitext2/test/EleutherAI--pythia-70m/L1024-S512-K64-lp16-bfloat16-q4bit.zarr"


def test_cli_ls_info_verify_rm(tmp_path, dists, capsys):
    targets, (lp, lp_b) = dists
    write_store_from_logprobs(tmp_path / "d/a.zarr", lp, targets, 4, model="modelA")
    arrays = arrays_from_logprobs(lp_b, targets, 4)
    w = StoreWriter(tmp_path / "d/b.zarr", n_positions=200, top_k=4, n_classes=40, attrs=synthetic_attrs("modelB"),
                    setting_hash="h", chunk_size=64)
    w.write(0, **{k: v[:70] for k, v in arrays.items()})
    w.abort()
    assert cli.main(["ls", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "modelA" in out and "complete" in out and "partial 64/200" in out
    assert cli.main(["info", str(tmp_path / "d/a.zarr")]) == 0
    assert '"name": "modelA"' in capsys.readouterr().out
    assert cli.main(["verify", str(tmp_path / "d/a.zarr")]) == 0
    assert cli.main(["verify", str(tmp_path)]) == 1
    assert "incomplete: 64 of 200" in capsys.readouterr().out
    assert cli.main(["rm", "--partial", str(tmp_path)]) == 0
    assert not (tmp_path / "d/b.zarr").exists() and (tmp_path / "d/a.zarr").exists()
    assert cli.main(["rm", str(tmp_path / "d/a.zarr")]) == 0
    assert not (tmp_path / "d/a.zarr").exists()


def test_store_module_is_torch_free():
    code = "import sys, pipeline.store, pipeline.store.synthetic, pipeline.stores; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"
