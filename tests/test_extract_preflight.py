"""Extraction safety: settings, store path and writer lock are checked before anything slow loads (issue #12
item 5), and a partial store is resumed only by the same model weights and tokenizer (issue #11)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from extract_helpers import make_model, write_jsonl

from pipeline.extraction import run as run_mod
from pipeline.extraction.config import DatasetSpec, ExtractSpec, ModelSpec, RunSpec, run_spec_from_dict
from pipeline.extraction.errors import ConfigError, DatasetNotFoundError, ModelNotFoundError
from pipeline.extraction.models import directory_fingerprint
from pipeline.extraction.run import early_store_path, extract
from pipeline.store import StoreExistsError, StoreLockedError, open_store, verify_store
from pipeline.store.errors import NotAStoreError, SettingMismatchError

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["The history of science is the study of the development of science and scientific knowledge. " * 3,
         "Language models predict the next token; a cache of top-K predictions answers fusion questions later. " * 3]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "docs.jsonl", TEXTS)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("m") / "gpt2", "gpt2", max_len=64)


def spec_for(model_dir, data, tmp, store="out.zarr", **kw):
    return RunSpec(model=ModelSpec(name="tiny", name_or_path=str(model_dir), device="cpu"),
                   dataset=DatasetSpec(name="docs", split="test", loader="text_file", path=str(data)),
                   extract=ExtractSpec(top_k=8, context_length=24, stride=12, progress=False, chunk_size=64),
                   store=str(tmp / store) if store else None, stores_root=str(tmp / "stores"),
                   overwrite=kw.pop("overwrite", False), resolved={"test": True}, **kw)


@pytest.fixture
def no_slow_loads(monkeypatch):
    """Fail the test if the data or the model starts loading."""
    def refuse(*a, **k):
        raise AssertionError("a slow load started before the check that should have stopped the run")

    monkeypatch.setattr(run_mod, "load_documents", refuse)
    monkeypatch.setattr(run_mod, "load_model", refuse)
    monkeypatch.setattr(run_mod, "load_task", refuse)


# ------------------------------------------------------------------ checked before anything slow loads

def test_missing_model_path_is_reported_before_the_data_loads(tmp_path, data, no_slow_loads):
    with pytest.raises(ModelNotFoundError, match="nope.*no such directory"):
        extract(spec_for(tmp_path / "nope", data, tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        extract(spec_for(tmp_path / "empty", data, tmp_path))
    assert not (tmp_path / "out.zarr").exists()


def test_missing_dataset_path_is_reported_before_the_model_loads(tmp_path, model, no_slow_loads):
    with pytest.raises(DatasetNotFoundError, match="dataset.path=.*missing.jsonl does not exist"):
        extract(spec_for(model, tmp_path / "missing.jsonl", tmp_path))
    spec = spec_for(model, "x", tmp_path)
    spec = RunSpec(**{**spec.__dict__, "dataset": DatasetSpec(name="docs", split="test", loader="text_file")})
    with pytest.raises(ConfigError, match="dataset.path is required"):
        extract(spec)


def test_a_value_left_at_omegaconf_missing_is_reported_as_required():
    cfg = {"model": {"name_or_path": "gpt2"}, "dataset": {"name": "text_file", "split": "test", "loader": "text_file",
                                                          "path": "???"}, "extract": {}}
    with pytest.raises(ConfigError, match=r"^dataset.path is required: pass dataset.path=<the file to score"):
        run_spec_from_dict(cfg)
    cfg["dataset"]["path"], cfg["model"]["name_or_path"] = "f.txt", "???"
    with pytest.raises(ConfigError, match="model.name_or_path is required"):
        run_spec_from_dict(cfg)


def test_a_second_writer_fails_before_loading_anything(tmp_path, model, data, no_slow_loads):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pipeline.store.lock import WriterLock\n"
         "WriterLock.for_store(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)",
         str(tmp_path / "out.zarr")], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreLockedError, match=f"pid {holder.pid}"):
            extract(spec_for(model, data, tmp_path))
        # the default path (no store=) is computed from config.json, so it is locked early too
        spec = spec_for(model, data, tmp_path, store=None)
        path = early_store_path(spec)
        assert path is not None
        holder.kill()
        holder.wait()
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sys, time\nfrom pipeline.store.lock import WriterLock\n"
             "WriterLock.for_store(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)",
             str(path)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreLockedError, match=f"pid {holder.pid}"):
            extract(spec)
    finally:
        holder.kill()
        holder.wait()


def test_store_path_that_is_not_a_store_or_is_complete_is_refused_before_loading(tmp_path, model, data, monkeypatch):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("keep me")
    spec = spec_for(model, data, tmp_path, store="mine", overwrite=True)
    store = extract(spec_for(model, data, tmp_path))  # a complete store at out.zarr (loads for real)
    assert store.complete

    def refuse(*a, **k):
        raise AssertionError("loaded")

    monkeypatch.setattr(run_mod, "load_documents", refuse)
    monkeypatch.setattr(run_mod, "load_model", refuse)
    with pytest.raises(NotAStoreError, match="mine"):
        extract(spec)
    assert [p.name for p in folder.iterdir()] == ["thesis.tex"]
    with pytest.raises(StoreExistsError, match="overwrite=true"):
        extract(spec_for(model, data, tmp_path))


def test_default_store_path_predicted_before_loading_is_the_one_written(tmp_path, model, data):
    spec = spec_for(model, data, tmp_path, store=None)
    predicted = early_store_path(spec)
    store = extract(spec)
    assert Path(store.path) == predicted
    assert not (predicted / ".arcache-lock.json").exists()


# ------------------------------------------------------------------ resume only with the same weights

def _kill_after_first_chunk(monkeypatch):
    real, calls = run_mod.score_batch, []

    def dying(*a, **k):
        calls.append(1)
        if len(calls) > 12:  # past the first 64-position chunk
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(run_mod, "score_batch", dying)


def test_review_resume_with_retrained_weights_in_the_same_directory_is_refused(tmp_path, data, monkeypatch):
    """Review case: retraining a model in the same directory, then rerunning, produced a store mixing two
    models, marked complete, passing verify."""
    model_dir = make_model(tmp_path / "lm", "gpt2", max_len=64, seed=0)
    spec = spec_for(model_dir, data, tmp_path)
    with monkeypatch.context() as m:
        _kill_after_first_chunk(m)
        with pytest.raises(KeyboardInterrupt):
            extract(spec)
    partial = open_store(tmp_path / "out.zarr", allow_partial=True)
    assert 0 < partial.n_valid < partial.n
    fingerprint = partial.attrs["model"]["fingerprint"]
    make_model(model_dir, "gpt2", max_len=64, seed=1)  # retrained in place: same names, sizes, config
    with pytest.raises(SettingMismatchError, match="model.fingerprint"):
        extract(spec)
    still = open_store(tmp_path / "out.zarr", allow_partial=True)
    assert not still.complete and still.n_valid == partial.n_valid
    # the same weights again resume it
    make_model(model_dir, "gpt2", max_len=64, seed=0)
    assert directory_fingerprint(model_dir) == fingerprint
    done = extract(spec)
    assert done.complete and done.attrs["metrics"]["resumed_from"] > 0
    assert verify_store(done.path).ok


def test_fingerprint_covers_weights_tokenizer_and_config(tmp_path, model):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(model, copy)
    base = directory_fingerprint(copy)
    assert base.startswith("sha256:") and base == directory_fingerprint(model)  # contents, not the path
    (copy / "README.md").write_text("notes do not change the model")
    assert directory_fingerprint(copy) == base
    for name in ("tokenizer.json", "config.json", "model.safetensors"):
        f = copy / name
        original = f.read_bytes()
        f.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        assert directory_fingerprint(copy) != base, name
        f.write_bytes(original)
        assert directory_fingerprint(copy) == base, name
