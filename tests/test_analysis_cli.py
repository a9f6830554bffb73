"""The sweep CLI: discovery, grouping by token stream, skipped and flagged pairs, held-out weights, outputs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import polars as pl
import reference as ref
from test_analysis_pair import _write_family

from analysis.curves import log_beta_grid
from analysis.sweep import AnalyzeSettings, run


def _stores(root):
    _write_family(root, seed=0, split="test", dataset="wiki")
    _write_family(root, seed=1, split="validation", dataset="wiki")
    _write_family(root, seed=2, split="test", dataset="text8", n=200)
    # same dataset split, another tokenizer: never paired, listed as skipped
    _write_family(root / "other", seed=3, split="test", dataset="wiki", tokenizer="other-vocab", n=120)


def test_run_writes_paper_table_and_frames(tmp_path):
    _stores(tmp_path / "stores")
    out = tmp_path / "run"
    frames = run(AnalyzeSettings(stores=tmp_path / "stores", out_dir=out, n_weights=11))
    for name in ("baselines", "pairs", "skipped"):
        assert (out / f"{name}.parquet").is_file() and (out / f"{name}.csv").is_file()
    pairs = frames["pairs"]
    # 3 models -> 3 pairs per group; groups: wiki/test, wiki/validation, text8/test, other-vocab wiki/test
    assert pairs.height == 12
    assert set(zip(pairs["primary"], pairs["secondary"])) == {("big", "mid"), ("big", "small"), ("mid", "small")}
    wiki = pairs.filter((pl.col("dataset") == "wiki") & (pl.col("split") == "test") & (pl.col("family") == "synthetic-vocab"))
    assert wiki["heldout_w_nll"].is_not_null().all()  # validation split of the same models exists
    assert pairs.filter(pl.col("dataset") == "text8")["heldout_w_nll"].is_null().all()
    flagged = pairs.filter(pl.col("secondary") == "small")["flags"].to_list()
    assert all("protocol.context_length" in f for f in flagged)
    skipped = frames["skipped"]
    assert skipped.height == 6 and skipped["reason"].str.contains("tokenizer").all()
    table = (out / "table.md").read_text()
    assert "Improvement relative to the best single model (%), in-sample" in table
    assert "held-out" in table and "wiki PPL ↓" in table and "text8 ACC ↑ (%)" in table
    assert "| big † | small |" in table
    grid = np.union1d(np.linspace(0, 1, 11), log_beta_grid(141, 1e-3, 1e4))  # linear in w + log-spaced betas
    assert frames["sweeps"].height == 12 * grid.size


def test_cli_entry_point(tmp_path):
    _write_family(tmp_path / "stores", seed=0, split="test", n=100)
    runs = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-m", "analysis.sweep", f"stores={tmp_path / 'stores'}",
                           f"paths.runs={runs}", "analysis.n_weights=5"],
                          cwd=ref._ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| LLM | SLM |" in proc.stdout
    tables = list(runs.glob("analyze/*/table.md"))
    assert len(tables) == 1


def test_run_with_task_stores_beside_language_modelling(tmp_path):
    """LM and task stores of one tokenizer family in one directory: one table with both, each dataset showing
    only its own metrics; task baselines, pairs (in-sample and held-out), task sweeps."""
    from pipeline.store.synthetic import write_random_task_pair

    root = tmp_path / "stores"
    _write_family(root, seed=0, split="test", dataset="wiki", n=200)
    names = (("big", 10**9), ("mid", 10**8), ("small", 10**7))
    write_random_task_pair(root, "multiple_choice", 40, seed=1, names=names, dataset="arc_easy", split="test")
    write_random_task_pair(root, "multiple_choice", 30, seed=2, names=names, dataset="arc_easy", split="validation")
    write_random_task_pair(root, "last_word", 30, seed=3, names=names[::2], dataset="lambada_openai")
    frames = run(AnalyzeSettings(stores=root, out_dir=tmp_path / "run", n_weights=11, n_resamples=20))
    base, pairs = frames["baselines"], frames["pairs"]
    arc = base.filter((pl.col("dataset") == "arc_easy") & (pl.col("split") == "test"))
    assert arc.height == 3 and arc["task_metrics"].unique().to_list() == ["acc,acc_norm"]
    assert arc["acc"].is_between(0, 1).all()
    lam = pairs.filter(pl.col("dataset") == "lambada_openai")
    assert lam.height == 1 and lam["task"][0] == "last_word" and lam["impr_word_ppl"].is_not_null().all()
    arc_pairs = pairs.filter((pl.col("dataset") == "arc_easy") & (pl.col("split") == "test"))
    assert arc_pairs.height == 3 and arc_pairs["heldout_impr_acc"].is_not_null().all()
    assert (arc_pairs["impr_acc"] >= arc_pairs["heldout_impr_acc"] - 1e-9).all()  # in-sample is optimal
    assert arc_pairs["bootstrap_note"].str.contains("task pair").all()
    assert {"task_sweeps", "sweeps"} <= set(frames)
    table = (tmp_path / "run" / "table.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| LLM"))
    for col in ("wiki PPL ↓", "wiki ACC ↑ (%)", "arc_easy ACC ↑ (%)", "arc_easy ACC_norm ↑ (%)",
                "lambada_openai PPL ↓ (word)", "lambada_openai PPL ↓ (token)", "lambada_openai ACC ↑ (%)"):
        assert col in header
    for col in ("arc_easy PPL ↓", "arc_easy BPC", "lambada_openai BPC", "wiki ACC_norm", "arc_easy ACC_bytes"):
        assert col not in header
    assert table.count("| LLM |") == 1  # one family, one table
    big_small = next(line for line in table.split("held-out")[1].splitlines() if line.startswith("| big † | small"))
    assert "%" in big_small and big_small.count("–") < big_small.count("|") - 3
