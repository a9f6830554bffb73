"""Extraction fan-out through Hydra launchers (DESIGN section 9): the presets compose, each job of a multi-GPU box
claims a GPU of its own, and sweeps run by joblib (two jobs at once) and by submitit's local executor write
stores that are complete and bit-identical to a sequential run; a rerun with skip_existing reuses them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import stores as cli
from pipeline.extraction.placement import GpuSlot

ROOT = Path(__file__).resolve().parents[1]


def run(args, tmp, module="pipeline.extract", timeout=900, **env):
    env = {**os.environ, "ARCACHE_STORES": str(tmp / "stores"), "HYDRA_FULL_ERROR": "1", **env}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_launcher_presets_compose(tmp_path):
    r = run(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra", "-p", "hydra.launcher"],
            tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    assert "SlurmLauncher" in out and "gpus_per_node: 1" in out and "partition: gpu" in out
    assert "max_num_timeout: 20" in out and "tasks_per_node: 1" in out
    r = run(["hydra/launcher=local_gpus", "--cfg", "hydra", "-p", "hydra.launcher", "--resolve"], tmp_path,
            ARCACHE_N_GPUS="4")
    assert r.returncode == 0 and "JoblibLauncher" in r.stdout and "n_jobs: 4" in r.stdout, r.stderr[-2000:]
    r = run(["hydra/launcher=local_submitit", "--cfg", "hydra", "-p", "hydra.launcher"], tmp_path)
    assert r.returncode == 0 and "LocalLauncher" in r.stdout, r.stderr[-2000:]


def test_gpu_slots_give_each_job_its_own_gpu(tmp_path):
    a, b, c = GpuSlot(2, tmp_path), GpuSlot(2, tmp_path), GpuSlot(2, tmp_path)
    assert a.acquire(first=1) == 1 and b.acquire(first=1) == 0  # job.num 1 and 3 of two GPUs: both placed
    with pytest.raises(TimeoutError):
        c.acquire(timeout_s=0.2, poll_s=0.05)  # never two jobs on one GPU
    a.release()
    assert c.acquire(timeout_s=1) == 1
    # a job killed on its GPU frees it (the kernel drops its lock)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
                               "from pipeline.extraction.placement import GpuSlot; "
                               "s = GpuSlot(1, sys.argv[2]); print(s.acquire()); sys.stdout.flush(); time.sleep(60)",
                               str(ROOT), str(tmp_path / "one")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "0"
    assert GpuSlot(1, tmp_path / "one").try_acquire() is None
    holder.kill()
    holder.wait()
    assert GpuSlot(1, tmp_path / "one").try_acquire() == 0


# ------------------------------------------------------------------ whole sweeps (slow: a process per job)
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from extract_helpers import CORPUS, make_model, write_jsonl

    root = tmp_path_factory.mktemp("launch")
    return {"a": make_model(root / "a", "gpt2", max_len=64, seed=0), "b": make_model(root / "b", "llama", max_len=64),
            "data": write_jsonl(root / "d.jsonl", CORPUS[:2])}


def sweep_args(models, *extra):
    return ["-m", f"model.name_or_path={models['a']},{models['b']}", "dataset=text_file",
            f"dataset.path={models['data']}", "extract.top_k=8", "extract.context_length=16", "extract.stride=8",
            "extract.chunk_size=16", "model.device=cpu", "model.batch_size=3", "extract.progress=false", *extra]


def sequential(models, tmp_path, monkeypatch, args):
    """The sweep's jobs run one after the other in this process (single writers), into other store paths."""
    from pipeline.extraction.run import extract

    monkeypatch.setenv("ARCACHE_STORES", str(tmp_path / "seq"))
    out = {}
    for _job, spec in cli.sweep_jobs([a for a in args if not a.startswith("extract.shard")
                                     and not a.startswith("extract.num_shards")]):
        out[spec.model.name_or_path] = extract(spec)
    return out


def check_sweep(models, tmp_path, monkeypatch, args):
    from test_shards import assert_identical

    from pipeline.store import open_store

    monkeypatch.setenv("ARCACHE_STORES", str(tmp_path / "stores"))
    assert cli.main(["sweep-status", *args]) == 0  # every store complete
    got = {}
    for _, spec in cli.sweep_jobs(args):
        got[spec.model.name_or_path] = open_store(cli.store_candidates(spec, prefer_gpu=False)[0])
    ref = sequential(models, tmp_path, monkeypatch, args)
    assert sorted(got) == sorted(ref) and len(got) == 2
    for name in got:
        assert_identical(got[name], ref[name])
    return got


@pytest.mark.slow
def test_joblib_two_jobs_at_once_in_shards_equal_a_sequential_run(models, tmp_path, monkeypatch):
    # two models x two shards: four jobs, two at a time; the last shard of each store finalizes it
    args = sweep_args(models, "hydra/launcher=local_gpus", "hydra.launcher.n_jobs=2", "extract.num_shards=2",
                      "extract.shard=0,1")
    r = run(args, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got = check_sweep(models, tmp_path, monkeypatch, args)
    assert all(s.attrs["num_shards"] == 2 for s in got.values())
    # the sweep again with skip_existing: complete stores are reused as they are
    stamps = {p: (s.path / "zarr.json").stat().st_mtime_ns for p, s in got.items()}
    r = run([*args, "skip_existing=true"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert stamps == {p: (s.path / "zarr.json").stat().st_mtime_ns for p, s in got.items()}


@pytest.mark.slow
def test_submitit_local_executor_sweep_equals_a_sequential_run(models, tmp_path, monkeypatch):
    args = sweep_args(models, "hydra/launcher=local_submitit")
    r = run(args, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    check_sweep(models, tmp_path, monkeypatch, args)
