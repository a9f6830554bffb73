"""The notebooks run headless, top to bottom, on small stores built here (outputs are stripped in git)."""

from pathlib import Path

import nbformat
import numpy as np
import pytest

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
    return root


def test_outputs_are_stripped():
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name}: strip outputs before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, stores, monkeypatch):
    monkeypatch.setenv("ARCACHE_STORES", str(stores))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                   for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "big" in text  # the stores it was given were really read
