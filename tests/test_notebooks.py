"""The notebooks run headless, top to bottom, on small stores built here (outputs are stripped in git)."""

from pathlib import Path

import nbformat
import numpy as np
import pytest

from analysis.notebooks import NotebookError, execute_notebook, main
from pipeline.store.synthetic import random_distributions, write_store_from_logprobs

nbclient = pytest.importorskip("nbclient")
NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
WORDS = [f"w{i}" for i in range(40)]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("nb-stores")
    rng = np.random.default_rng(11)
    vocab = np.array([" " + w for w in WORDS])
    for split in ("valid", "test"):
        targets, models = random_distributions(600, 40, rng, n_models=3, noise=(0.5, 1.0, 1.8))
        doc = np.arange(600) // 100
        for name, params, lp in zip(("big", "mid", "small"), (9_000_000, 3_000_000, 1_000_000), models):
            write_store_from_logprobs(root / "toy" / split / f"{name}.zarr", lp, targets, 16, model=name,
                                      n_params=params, split=split, dataset="toy", doc_id=doc,
                                      tables={"vocab": vocab})
        # A larger family of image classifiers beside them, as in the demo (no text: no n_chars, no BPC), on a
        # dataset sorted first: the notebooks must pick what they can show, not the first or largest group.
        labels, clf = random_distributions(300, 10, rng, n_models=4, noise=(0.5, 0.8, 1.2, 1.8))
        for name, params, lp in zip(("r4", "r3", "r2", "r1"), (4000, 3000, 2000, 1000), clf):
            write_store_from_logprobs(root / "digits" / split / f"{name}.zarr", lp, labels, 10, "float32",
                                      model=name, n_params=params, split=split, dataset="digits",
                                      doc_id=np.arange(300), kind="classification", tokenizer="digits-labels")
    return root


def test_outputs_are_stripped():
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name}: strip outputs before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, stores, tmp_path):
    """What `make notebooks` runs: the notebook executes top to bottom on the stores and its executed copy,
    outputs included, is written where the command says."""
    out = execute_notebook(path, stores, tmp_path / "executed")
    assert out == tmp_path / "executed" / path.name
    nb = nbformat.read(out, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                   for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "big" in text  # the stores it was given were really read


def test_a_failing_notebook_is_one_line_and_its_executed_copy_is_kept(stores, tmp_path):
    bad = tmp_path / "bad.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import os; x = os.environ['ARCACHE_STORES']"),
                                         nbformat.v4.new_code_cell("1 / 0")])
    nbformat.write(nb, bad)
    out = tmp_path / "executed"
    assert main(["--stores", str(stores), "--out", str(out), str(bad)]) == 1
    kept = nbformat.read(out / "bad.ipynb", as_version=4)
    assert kept.cells[1].outputs[0].ename == "ZeroDivisionError"
    with pytest.raises(NotebookError, match=r"bad.ipynb: cell 1 raised ZeroDivisionError"):
        execute_notebook(bad, stores, out)
    assert main(["--stores", str(tmp_path / "missing"), str(bad)]) == 1  # no stores: said, nothing run
