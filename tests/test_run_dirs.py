"""Every run directory is unique (regression: two `analysis.sweep` runs started in the same second wrote into one
run directory, mixing their results); an explicit hydra.run.dir is kept."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import reference as ref
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from test_analysis_pair import _write_family

from pipeline import rundir

CONF = str(Path(__file__).resolve().parents[1] / "conf")
FROZEN = datetime(2024, 5, 1, 12, 30, 5, 123456)


@pytest.fixture
def frozen(monkeypatch):
    monkeypatch.setattr(rundir, "_now", lambda: FROZEN)
    rundir.register()


def _run_dir(config_name: str, *overrides: str) -> str:
    base = {"analyze": ["paths.runs=/r"], "law": ["paths.runs=/r"], "train": ["paths.stores=/r"]}.get(
        config_name, ["paths.stores=/r", "model.name_or_path=m"])
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=[*base, *overrides], return_hydra_config=True)
        first = OmegaConf.select(cfg, "hydra.run.dir")
        assert OmegaConf.select(cfg, "hydra.run.dir") == first  # one run, one name however often it is read
        return first


@pytest.mark.parametrize("config_name,sub", [("analyze", "analyze"), ("law", "law"), ("extract", "_runs/extract"),
                                             ("train", "_runs/train")])
def test_runs_in_the_same_microsecond_of_one_process_get_different_dirs(frozen, config_name, sub):
    a, b = _run_dir(config_name), _run_dir(config_name)
    stamp = f"/r/{sub}/2024-05-01_12-30-05_123456_p{os.getpid()}"
    assert a != b and a.startswith(stamp) and b.startswith(stamp)


def test_run_id_names_the_process(frozen):
    assert rundir.run_id().split("_p")[1].split("-")[0] == str(os.getpid())


@pytest.mark.parametrize("config_name", ["analyze", "law", "extract", "train"])
def test_an_explicit_run_dir_is_kept(frozen, config_name):
    assert _run_dir(config_name, "hydra.run.dir=/my/run") == "/my/run"


def test_two_sweeps_started_together_write_to_different_dirs(tmp_path):
    _write_family(tmp_path / "stores", seed=0, split="test", n=100)
    runs = tmp_path / "runs"
    args = [sys.executable, "-m", "analysis.sweep", f"stores={tmp_path / 'stores'}", f"paths.runs={runs}",
            "analysis.n_weights=5", "analysis.n_resamples=0", "analysis.write_sweeps=false"]
    procs = [subprocess.Popen(a, cwd=ref._ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for a in (args, args)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    dirs = sorted(runs.glob("analyze/*"))
    assert len(dirs) == 2  # one directory per run
    for d in dirs:
        assert (d / "table.md").is_file()
        assert len(list(d.glob(".hydra/config.yaml"))) == 1 and len(list(d.glob("*.log"))) == 1
