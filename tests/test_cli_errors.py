"""A project error on the command line is one clear line on stderr and a non-zero exit: no traceback, no Hydra
"Error executing job"; HYDRA_FULL_ERROR=1 brings the traceback back; a multirun still runs its other jobs."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import exit_on_errors, one_line, one_line_errors, report_errors
from pipeline.extraction.errors import ModelNotFoundError
from pipeline.store.errors import StoreLockedError
from pipeline.store.synthetic import random_distributions, write_store_from_logprobs

ROOT = Path(__file__).resolve().parents[1]


def run(*args, full_error=False):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    if full_error:
        env["HYDRA_FULL_ERROR"] = "1"
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def assert_one_line(r, error: str, *words):
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{error}: "), r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "Error executing job" not in r.stderr
    for w in words:
        assert w in lines[0]


def test_extract_missing_model_is_one_line(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("one document\n")
    args = ["-m", "pipeline.extract", f"model.name_or_path={tmp_path / 'no-such-model'}", "dataset=text_file",
            f"dataset.path={text}", f"paths.stores={tmp_path}", "hydra.run.dir=" + str(tmp_path / "run")]
    assert_one_line(run(*args), "ModelNotFoundError", "no-such-model")


def test_train_bad_setting_is_one_line_and_a_multirun_reports_every_job(tmp_path):
    r = run("-m", "pipeline.train", "train=lstm", "train.embed_size=0", f"paths.stores={tmp_path}",
            "hydra.run.dir=" + str(tmp_path / "run"))
    assert_one_line(r, "TrainConfigError", "train.embed_size=0")
    r = run("-m", "pipeline.train", "-m", "train=lstm", "train.embed_size=0,-1", f"paths.stores={tmp_path}",
            "hydra.sweep.dir=" + str(tmp_path / "multirun"))
    errors = [line for line in r.stderr.splitlines() if line.startswith("TrainConfigError: ")]
    assert r.returncode == 1 and len(errors) == 2 and "Traceback" not in r.stderr  # both jobs ran
    full = run("-m", "pipeline.train", "train=lstm", "train.embed_size=0", f"paths.stores={tmp_path}",
               "hydra.run.dir=" + str(tmp_path / "run"), full_error=True)
    assert full.returncode != 0 and "Traceback" in full.stderr and "TrainConfigError" in full.stderr


def test_law_error_is_one_line(tmp_path):
    targets, (a, b) = random_distributions(400, 30, np.random.default_rng(0))
    for name, lp, params in (("A", a, 10**9), ("B", b, 10**8)):
        write_store_from_logprobs(tmp_path / "stores" / f"{name}.zarr", lp, targets, 8, model=name, n_params=params,
                                  doc_id=np.arange(400) // 10)
    r = run("-m", "analysis.law", f"stores={tmp_path / 'stores'}", "law.param_count=no_such_count",
            "law.n_resamples=0", "hydra.run.dir=" + str(tmp_path / "run"))
    assert r.returncode != 0 and "Traceback" not in r.stderr and "Error executing job" not in r.stderr
    assert_one_line(r, "SettingsError", "no_such_count", "n_params_nonembed")  # refused before any store opens


def test_the_wrappers_keep_bugs_loud_and_fold_messages_to_one_line(monkeypatch, capsys):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    @one_line_errors
    def locked():
        raise StoreLockedError("store x.zarr is being written by pid 1\non host h; wait for it")

    assert locked() == 1
    assert capsys.readouterr().err == "StoreLockedError: store x.zarr is being written by pid 1 on host h; wait for it\n"

    @one_line_errors
    def bug():
        raise KeyError("not a project error")

    with pytest.raises(KeyError):  # anything else keeps its traceback
        bug()

    @exit_on_errors
    def hydra_like_main():
        for name in ("a", "b"):  # a multirun's jobs: both run, the failure is reported and the exit is 1
            report_errors(lambda n: (_ for _ in ()).throw(ModelNotFoundError(f"model {n} not found")))(name)

    with pytest.raises(SystemExit) as e:
        hydra_like_main()
    assert e.value.code == 1
    assert capsys.readouterr().err.splitlines() == ["ModelNotFoundError: model a not found",
                                                    "ModelNotFoundError: model b not found"]
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(StoreLockedError):
        locked()
    assert one_line(ValueError("a\n  b")) == "ValueError: a b"


@pytest.mark.parametrize("module,override,words", [
    ("analysis.sweep", "stores={missing}", ["is not a folder"]),
    ("analysis.law", "stores={missing}", ["is not a folder"]),
    ("analysis.sweep", "analysis.order=bogus", ["bogus", "given"]),
    ("analysis.sweep", "analysis.metrics=[bogus]", ["bogus", "ppl"]),
])
def test_analysis_bad_settings_are_one_line(tmp_path, module, override, words):
    (tmp_path / "stores").mkdir()
    override = override.format(missing=tmp_path / "no-such-folder")
    args = ["-m", module, f"stores={tmp_path / 'stores'}", override, "hydra.run.dir=" + str(tmp_path / "run")]
    assert_one_line(run(*args), "SettingsError", *words)
