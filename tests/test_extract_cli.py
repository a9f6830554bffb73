"""The CLI contract of `python -m pipeline.extract`, a real SIGKILL-and-resume, and multirun."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from extract_helpers import make_model, write_jsonl

from pipeline.store import open_store

ROOT = Path(__file__).resolve().parents[1]
ARRAYS = ("targets", "target_logprob", "target_rank", "target_ties", "topk_ids", "topk_logprobs", "tail_logmass",
          "entropy", "n_chars", "n_bytes", "doc_id")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return {"gpt2": make_model(root / "gpt2", "gpt2", max_len=64), "llama": make_model(root / "llama", "llama", max_len=64),
            "data": write_jsonl(root / "docs.jsonl", ["A first small document about cats.", "And a second one, é 東京."]),
            "root": root}


def cli(args, tmp, **popen):
    env = {**os.environ, "ARCACHE_STORES": str(tmp / "stores"), "HYDRA_FULL_ERROR": "1"}
    cmd = [sys.executable, "-m", "pipeline.extract", *args]
    if popen:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **popen)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def contract(model, data, out, *extra):
    return [f"model.name_or_path={model}", "dataset=text_file", f"dataset.path={data}", "extract.top_k=8",
            "extract.context_length=32", "extract.stride=16", f"store={out}", "extract.progress=false", *extra]


def test_cli_contract_writes_a_complete_store_and_refuses_to_overwrite(tiny, tmp_path):
    out = tmp_path / "out.zarr"
    r = cli(contract(tiny["gpt2"], tiny["data"], out), tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    s = open_store(out)
    assert s.attrs["top_k"] == 8 and s.attrs["protocol"]["context_length"] == 32 and s.attrs["protocol"]["stride"] == 16
    assert s.attrs["model"]["name"] == "gpt2" and s.attrs["config"]["dataset"]["path"] == str(tiny["data"])
    assert "PPL" in r.stderr + r.stdout or list((tmp_path / "stores" / "_runs" / "extract").glob("*/*.log"))
    assert list((tmp_path / "stores" / "_runs" / "extract").iterdir())  # Hydra run dirs stay under stores/
    again = cli(contract(tiny["gpt2"], tiny["data"], out), tmp_path)
    assert again.returncode != 0 and "StoreExistsError" in again.stderr and "overwrite=true" in again.stderr
    forced = cli(contract(tiny["gpt2"], tiny["data"], out, "overwrite=true"), tmp_path)
    assert forced.returncode == 0, forced.stderr[-3000:]


def test_cli_bad_inputs_name_the_problem(tiny, tmp_path):
    r = cli(contract(tmp_path / "missing-model", tiny["data"], tmp_path / "o.zarr"), tmp_path)
    assert r.returncode != 0 and "ModelNotFoundError" in r.stderr and "missing-model" in r.stderr
    assert "text_sha256" not in r.stderr  # reported before the dataset was read
    r = cli([f"model.name_or_path={tiny['gpt2']}", "dataset=text_file", f"store={tmp_path / 'o.zarr'}"], tmp_path)
    assert r.returncode != 0 and "dataset.path is required" in r.stderr and "???" not in r.stderr
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xff\xfe not utf8")
    r = cli(contract(tiny["gpt2"], bad, tmp_path / "o.zarr"), tmp_path)
    assert r.returncode != 0 and "NotUTF8Error" in r.stderr and "bad.txt" in r.stderr


def _wait_for_progress(store: Path, proc, at_least: int, timeout: float = 240) -> int:
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, "the extraction ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
        try:
            n = json.loads((store / ".arcache-progress.json").read_text())["n_done"]
            if n >= at_least:
                return n
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError("no progress")


def test_sigkill_and_resume_is_bit_identical(tiny, tmp_path):
    args = [f"model.name_or_path={tiny['gpt2']}", "dataset=wiki_vital", "dataset.n_documents=120",
            "extract.context_length=64", "extract.stride=48", "extract.top_k=16", "extract.chunk_size=512",
            "extract.progress=false"]
    killed, clean = tmp_path / "killed.zarr", tmp_path / "clean.zarr"
    proc = cli([*args, f"store={killed}"], tmp_path, start_new_session=True)
    n_at_kill = _wait_for_progress(killed, proc, 1024)
    os.killpg(proc.pid, signal.SIGKILL)  # no cleanup runs: the lock stays, the last chunk is lost
    proc.wait()
    with pytest.raises(Exception, match="complete|partial|incomplete"):
        open_store(killed)
    resumed = cli([*args, f"store={killed}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout + resumed.stderr
    ref = cli([*args, f"store={clean}"], tmp_path)
    assert ref.returncode == 0, ref.stderr[-3000:]
    a, b = open_store(killed), open_store(clean)
    assert a.attrs["metrics"]["resumed_from"] > 0 and n_at_kill < a.attrs["n_positions"]
    x, y = a.read(ARRAYS), b.read(ARRAYS)
    for name in ARRAYS:
        np.testing.assert_array_equal(x[name], y[name], err_msg=name)
    assert a.attrs["stream_hash"] == b.attrs["stream_hash"]
    for k in ("ppl", "bpc", "bpb", "acc"):
        assert a.attrs["metrics"][k] == b.attrs["metrics"][k]


def test_multirun_over_models_writes_one_store_each_under_stores(tiny, tmp_path):
    r = cli(["-m", f"model.name_or_path={tiny['gpt2']},{tiny['llama']}", "dataset=text_file",
             f"dataset.path={tiny['data']}", "extract.top_k=4", "extract.context_length=32", "extract.progress=false"],
            tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    stores = sorted((tmp_path / "stores" / "text_file" / "test").glob("*/*.zarr"))
    assert [s.parent.name for s in stores] == ["gpt2", "llama"]
    assert all(open_store(s).attrs["complete"] for s in stores)
    assert stores[0].name == "L32-S32-K4-lp16-float32.zarr"
    assert list((tmp_path / "stores" / "_runs" / "extract-multirun").iterdir())
