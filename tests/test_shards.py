"""One store written in shards (DESIGN section 9): bit-identical to one writer, also after a SIGKILL and a rerun,
with shards racing to create the store; finalize refuses what is unfinished; leases that survive a move to another
host; the status of a sweep's stores.

Run as a script (`python tests/test_shards.py PATH SHARD NUM_SHARDS DELAY`), it writes one shard of a synthetic
store slowly, for the kill and race tests (no torch import: it starts in a fraction of a second)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))

from pipeline.store import StoreWriter, open_store, verify_store  # noqa: E402
from pipeline.store.synthetic import arrays_from_logprobs, random_distributions, synthetic_attrs  # noqa: E402

N, V, K, CHUNK, BATCH = 150, 30, 6, 16, 7  # 10 chunks, the last one partial; batches straddle chunk borders


def synthetic():
    targets, (lp,) = random_distributions(N, V, np.random.default_rng(11), n_models=1, tie_grid=0.5)
    rng = np.random.default_rng(3)
    return arrays_from_logprobs(lp, targets, K, "float16", doc_id=np.arange(N) // 40,
                                n_chars=rng.integers(1, 9, N), n_bytes=rng.integers(1, 12, N))


def write(path, shard=None, delay: float = 0.0, stop_after: int | None = None):
    """Write the synthetic store (or one shard of it) in batches of BATCH rows, as the extraction loop does."""
    arrays = synthetic()
    w = StoreWriter(path, n_positions=N, top_k=K, n_classes=V, attrs=synthetic_attrs("shards"), setting_hash="h1",
                    chunk_size=CHUNK, shard=shard)
    b0 = w.n_done // BATCH  # the batch holding the resume point
    written = 0
    for lo in range(b0 * BATCH, N, BATCH):
        if lo >= w.stop:
            break
        w.write(lo, **{k: v[lo:lo + BATCH] for k, v in arrays.items()})
        written += 1
        if stop_after is not None and written >= stop_after:
            w.abort()
            return w
        time.sleep(delay)
    if shard is None:
        from pipeline.store.shards import store_metrics

        w._stop_worker()
        return w.close(extra_attrs={"metrics": store_metrics(open_store(path, allow_partial=True))})
    w.close()
    return w


if __name__ == "__main__":
    path, shard, num, delay = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    print("started", flush=True)
    write(path, (shard, num), delay)
    sys.exit(0)

import pytest  # noqa: E402

from pipeline import stores as cli  # noqa: E402
from pipeline.store.errors import SettingMismatchError, StoreLockedError  # noqa: E402
from pipeline.store.lock import Lease, lease_file, read_lease  # noqa: E402
from pipeline.store.shards import NotShardedError, ShardsIncompleteError, finalize, shard_status  # noqa: E402
from pipeline.store.writer import read_progress, shard_chunks  # noqa: E402

ARRAYS = ("targets", "target_logprob", "target_rank", "target_ties", "topk_ids", "topk_logprobs", "tail_logmass",
          "entropy", "n_chars", "n_bytes", "doc_id")


def assert_identical(a, b, timing_free_metrics: bool = True):
    """Every array, the stream hash, every chunk's digest and crc32c, the tables, the metrics (but for the
    per-run timing keys) equal."""
    assert a.complete and b.complete
    assert a.names == b.names and a.tables == b.tables
    x, y = a.read(a.names), b.read(b.names)
    for name in a.names:
        assert x[name].dtype == y[name].dtype
        np.testing.assert_array_equal(x[name], y[name], err_msg=name)
    for t in a.tables:
        np.testing.assert_array_equal(a.table(t), b.table(t), err_msg=t)
    for key in ("stream_hash", "chunk_digests", "chunk_crc32c", "n_positions", "top_k", "chunk_size", "setting_hash"):
        assert a.attrs[key] == b.attrs[key], key
    timing = ("elapsed_s_this_run", "tokens_per_s_this_run", "resumed_from")
    ma = {k: v for k, v in a.attrs["metrics"].items() if k not in timing}
    mb = {k: v for k, v in b.attrs["metrics"].items() if k not in timing}
    assert ma == mb


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return write(tmp_path_factory.mktemp("single") / "one.zarr")


# ------------------------------------------------------------------ ownership, progress, finalize
def test_shards_own_contiguous_whole_chunks_that_cover_the_store_once():
    for n, cs in ((150, 16), (16, 16), (1, 4), (1000, 7)):
        n_chunks = -(-n // cs)
        for S in (1, 2, 3, 5, n_chunks + 2):
            owned = [list(shard_chunks(n, cs, S, i)) for i in range(S)]
            assert sum(owned, []) == list(range(n_chunks))
            sizes = [len(o) for o in owned]
            assert max(sizes) - min(sizes) <= 1


def test_shards_in_any_order_equal_one_writer(tmp_path, single):
    path, order = tmp_path / "sharded.zarr", (2, 0, 1)
    S = len(order)
    for i in order[:-1]:
        write(path, (i, S))
    prog = read_progress(path)
    assert prog["num_shards"] == S and prog["n_written"] < N
    with pytest.raises(ShardsIncompleteError, match=rf"shard {order[-1]} lacks chunk\(s\)"):
        finalize(path)
    write(path, (order[-1], S))
    with pytest.raises(Exception, match="incomplete"):
        open_store(path)  # no shard finalizes by itself at the store level: finalize does
    store = finalize(path)
    assert_identical(store, single)
    assert store.attrs["num_shards"] == S and len(store.attrs["sharding"]["shards"]) == S
    assert verify_store(path).ok
    assert not list(path.glob(".arcache-progress.shard-*")) and not list(path.glob(".arcache-lock*"))
    assert finalize(path).complete  # again: already complete, nothing changes


def test_finalize_names_missing_shards_and_the_cli_says_it_in_one_line(tmp_path, capsys):
    path = tmp_path / "s.zarr"
    write(path, (1, 4))
    write(path, (0, 4), stop_after=3)  # shard 0 wrote its first chunk only
    with pytest.raises(ShardsIncompleteError) as e:
        finalize(path)
    msg = str(e.value)
    assert "shard 0 lacks chunk(s) 1" in msg and "shard 2 lacks chunk(s) 5..6" in msg and "shard 3" in msg
    assert "shard 1" not in msg and "extract.num_shards=4 extract.shard=0,2,3" in msg
    assert cli.main(["finalize", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ShardsIncompleteError:")
    st = shard_status(path)
    assert [s["n_done"] for s in st["shards"]] == [1, 3, 0, 0]
    # a missing chunk file of a shard marked done is damage, found before anything is written
    for i in (0, 2, 3):
        write(path, (i, 4))
    (path / "target_logprob" / "c" / "4").unlink()
    with pytest.raises(Exception, match="lacks chunk 4"):
        finalize(path)
    assert json.loads((path / "zarr.json").read_text())["attributes"]["complete"] is False


def test_single_writer_store_is_not_finalized_and_shard_counts_do_not_mix(tmp_path, single):
    with pytest.raises(NotShardedError, match="one writer"):
        partial = tmp_path / "p.zarr"
        write(partial, stop_after=2)
        finalize(partial)
    with pytest.raises(SettingMismatchError, match="by one writer, not in 2 shards"):
        write(partial, (0, 2))
    sharded = tmp_path / "s.zarr"
    write(sharded, (0, 3))
    with pytest.raises(SettingMismatchError, match="in 3 shards, not in 2 shards.*extract.num_shards=3"):
        write(sharded, (1, 2))
    with pytest.raises(SettingMismatchError, match="in 3 shards, not by one writer"):
        write(sharded)


# ------------------------------------------------------------------ processes: kill and race
def _shard_proc(path, shard, num, delay):
    p = subprocess.Popen([sys.executable, __file__, str(path), str(shard), str(num), str(delay)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    assert p.stdout.readline().strip() == "started"
    return p


def test_shard_sigkilled_mid_write_and_rerun_is_bit_identical(tmp_path, single):
    path = tmp_path / "k.zarr"
    write(path, (0, 2))
    proc = _shard_proc(path, 1, 2, 0.08)
    t0 = time.time()
    while time.time() - t0 < 60:
        if len(read_progress(path).get("chunks_done", [])) >= 7:  # shard 1 wrote 2 of its 5 chunks
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    rec = read_lease(lease_file(path, "shard-1"))
    assert rec is not None and rec["pid"] == proc.pid  # the killed shard's lease stays behind
    done_before = len(read_progress(path)["chunks_done"])
    assert 7 <= done_before < 10
    with pytest.raises(ShardsIncompleteError, match="shard 1 lacks"):
        finalize(path)
    w = write(path, (1, 2))  # same host, holder gone: its lease is taken over at once
    assert w.n_done == N
    store = finalize(path)
    assert_identical(store, single)
    assert verify_store(path).ok


def test_two_shard_processes_at_once_race_to_create_the_store(tmp_path, single):
    path = tmp_path / "race.zarr"
    procs = [_shard_proc(path, i, 2, 0.0) for i in (0, 1)]
    for p in procs:
        assert p.wait(timeout=60) == 0, p.stderr.read()[-2000:]
    store = finalize(path)
    assert_identical(store, single)


# ------------------------------------------------------------------ leases
def _fake_lease(path, host="other-host", expires_in=60.0, **extra):
    path.parent.mkdir(parents=True, exist_ok=True)
    rec = {"token": "f" * 32, "host": host, "pid": 12345, "job": None, "restart": 0, "expires": time.time() + expires_in,
           **extra}
    path.write_text(json.dumps(rec))
    return rec


def test_a_live_lease_on_another_host_is_refused_and_an_expired_one_taken_over(tmp_path):
    f = lease_file(tmp_path / "s.zarr", "shard-0")
    _fake_lease(f, expires_in=60)
    t0 = time.perf_counter()
    with pytest.raises(StoreLockedError, match="pid 12345 on host 'other-host'.*s from now"):
        write(tmp_path / "s.zarr", (0, 2))
    assert time.perf_counter() - t0 < 5
    assert read_lease(f)["token"] == "f" * 32  # untouched
    _fake_lease(f, expires_in=-1)  # its holder stopped renewing (host lost, job killed)
    w = write(tmp_path / "s.zarr", (0, 2))
    assert w.n_done == w.stop and read_lease(f) is None  # taken over, written, released


def test_a_requeued_slurm_job_takes_over_its_own_lease_at_once(tmp_path, monkeypatch):
    f = lease_file(tmp_path, "shard-3")
    _fake_lease(f, job="777", restart=0)
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    with pytest.raises(StoreLockedError):  # the same attempt of the job: another task of it, alive
        Lease(f).acquire()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # requeued (on whatever host): the old attempt is over
    with Lease(f) as lease:
        assert read_lease(f)["token"] == lease.token and read_lease(f)["restart"] == 1
    monkeypatch.setenv("SLURM_JOB_ID", "778")
    _fake_lease(f, job="777", restart=0)
    with pytest.raises(StoreLockedError):  # another job's live lease
        Lease(f).acquire()


def test_lease_heartbeat_renews_and_a_lost_lease_stops_the_writer(tmp_path):
    f = lease_file(tmp_path, "shard-0")
    lease = Lease(f, ttl_s=0.3)
    lease.acquire()
    first = read_lease(f)["expires"]
    time.sleep(0.5)
    assert read_lease(f)["expires"] > first and read_lease(f)["host"] == socket.gethostname()
    lease.check()
    _fake_lease(f, expires_in=60)  # someone took it over while this process stalled
    with pytest.raises(StoreLockedError, match="taken over"):
        lease.check()
    lease.release()
    assert read_lease(f)["token"] == "f" * 32  # the new holder's lease is left alone
    # waiting: a lease its holder releases within wait_s is taken
    f2 = lease_file(tmp_path, "store")
    holder = Lease(f2, ttl_s=5)
    holder.acquire()
    threading.Timer(0.3, holder.release).start()
    waiter = Lease(f2)
    waiter.acquire(wait_s=10)
    assert read_lease(f2)["token"] == waiter.token
    waiter.release()


def test_a_single_writer_and_shards_exclude_each_other(tmp_path):
    path = tmp_path / "x.zarr"
    _fake_lease(lease_file(path, "shard-1"), host=socket.gethostname(), pid=os.getpid(),
                pid_start=None)  # a live shard of this host
    with pytest.raises(StoreLockedError, match=r"shard-1"):
        write(path)
    lease_file(path, "shard-1").unlink()
    w = StoreWriter(path, n_positions=N, top_k=K, n_classes=V, attrs=synthetic_attrs("shards"), setting_hash="h1",
                    chunk_size=CHUNK)
    try:
        with pytest.raises(StoreLockedError, match="writer lock"):
            write(path, (0, 2))
    finally:
        w.abort()


# ------------------------------------------------------------------ a tiny model, through the extraction loop
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from extract_helpers import CORPUS, make_model, write_jsonl

    from pipeline.extraction.models import load_model

    root = tmp_path_factory.mktemp("tiny")
    model_dir = make_model(root / "gpt2", "gpt2", max_len=64)
    data = write_jsonl(root / "d.jsonl", CORPUS[:2])
    spec = _spec(model_dir, data, root / "x.zarr")
    return {"dir": model_dir, "data": data, "lm": load_model(spec.model)}


def _spec(model_dir, data, out, **ex):
    from pipeline.extraction.config import DatasetSpec, ExtractSpec, ModelSpec, RunSpec

    # overlapping windows (L 16, stride 8) in batches of 3: windows and batches straddle the 16-position chunks
    return RunSpec(model=ModelSpec(name="g", name_or_path=str(model_dir), device="cpu", batch_size=3),
                   dataset=DatasetSpec(name="docs", split="test", loader="text_file", path=str(data)),
                   extract=ExtractSpec(top_k=8, context_length=16, stride=8, progress=False, chunk_size=16, **ex),
                   store=str(out), stores_root=str(Path(out).parent), overwrite=False, resolved={})


@pytest.mark.slow
def test_extraction_in_three_shards_equals_one_writer(tiny, tmp_path):
    from pipeline.extraction.errors import ConfigError
    from pipeline.extraction.run import extract

    one = extract(_spec(tiny["dir"], tiny["data"], tmp_path / "one.zarr"), tiny["lm"])
    assert one.n > 3 * 16  # every shard owns chunks
    out = tmp_path / "sharded.zarr"
    for i in (1, 2):
        s = extract(_spec(tiny["dir"], tiny["data"], out, num_shards=3, shard=i), tiny["lm"])
        assert not s.complete
    with pytest.raises(ShardsIncompleteError, match="shard 0 lacks"):
        finalize(out)
    store = extract(_spec(tiny["dir"], tiny["data"], out, num_shards=3, shard=0), tiny["lm"])  # the last: finalizes
    assert store.complete and store.attrs["metrics"]["ppl"] == one.attrs["metrics"]["ppl"]
    assert_identical(store, one)  # arrays, stream hash, digests, crc32c, vocab table, metrics
    differ = sorted(k for k in set(one.attrs) | set(store.attrs) if one.attrs.get(k) != store.attrs.get(k))
    assert differ == ["metrics", "num_shards", "sharding"]  # metrics: only the per-run timing keys
    runs = store.attrs["sharding"]["shards"]
    assert [r["shard"] for r in runs] == [0, 1, 2] and all(r["runs"][0]["positions"] > 0 for r in runs)
    # a shard of a complete store: refused, or reused with skip_existing
    with pytest.raises(Exception, match="complete store"):
        extract(_spec(tiny["dir"], tiny["data"], out, num_shards=3, shard=1))
    with pytest.raises(ConfigError, match="overwrite"):
        from dataclasses import replace

        extract(replace(_spec(tiny["dir"], tiny["data"], tmp_path / "o.zarr", num_shards=2, shard=1), overwrite=True),
                tiny["lm"])


# ------------------------------------------------------------------ sweep-status
def test_sweep_status_lists_complete_partial_and_missing_stores(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ARCACHE_STORES", str(tmp_path / "stores"))
    for m in ("a", "b", "c"):  # what the store path needs: the model's config.json (vocab size, context)
        (tmp_path / m).mkdir()
        (tmp_path / m / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": V, "n_positions": 64}))
    data = tmp_path / "d.txt"
    data.write_text("some text")
    common = ["dataset=text_file", f"dataset.path={data}", "extract.top_k=4", "extract.context_length=32",
              "model.device=cpu"]
    sweep = ["-m", f"model.name_or_path={tmp_path / 'a'},{tmp_path / 'b'},{tmp_path / 'c'}", *common]
    jobs = list(cli.sweep_jobs(sweep))
    assert len(jobs) == 3
    paths = [cli.store_candidates(spec, prefer_gpu=False)[0] for _, spec in jobs]
    assert paths[0] == tmp_path / "stores" / "text_file" / "test" / "a" / "L32-S32-K4-lp16-float32.zarr"
    write(paths[0])  # complete
    write(paths[1], stop_after=5)  # partial: 2 chunks written
    assert cli.main(["sweep-status", *sweep]) == 1
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln for ln in out.splitlines()[1:4]}
    assert f"{N}/{N}" in lines["complete"] and "32/150" in lines["partial"] and "c" in lines["missing"]
    assert "3 jobs: 1 complete, 1 partial, 1 missing" in out
    assert "python -m pipeline.extract -m model.name_or_path=" in out and "skip_existing=true" in out
    # shards of one store are jobs too
    sharded = ["-m", f"model.name_or_path={tmp_path / 'c'}", *common, "extract.num_shards=3", "extract.shard=0,1,2"]
    path = cli.store_candidates(list(cli.sweep_jobs(sharded))[0][1], prefer_gpu=False)[0]
    write(path, (0, 3))
    write(path, (2, 3), stop_after=3)
    assert cli.main(["sweep-status", *sharded]) == 1
    out = capsys.readouterr().out
    assert "done" in out and "shard 0: 3/3 chunks, store not finalized" in out
    assert "shard 1: 0/3 chunks" in out and "shard 2: 1/4 chunks" in out
    for i in (1, 2):
        write(path, (i, 3))
    finalize(path)
    write(paths[1])
    assert cli.main(["sweep-status", *sharded]) == 0
    assert "3 jobs: 3 complete" in capsys.readouterr().out
    assert cli.main(["sweep-status", "-m", "model=no-such-model"]) == 1
    assert capsys.readouterr().err.startswith("ConfigError:")
