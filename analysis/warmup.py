"""Compile the analysis kernels once into the Numba cache: ``python -m analysis.warmup`` (run by `make setup`).

Numba compiles a kernel on its first call for each argument type and, with ``cache=True``, keeps the machine
code in the cache directory (the repository's ``.numba_cache``: see ``pipeline/__init__.py``). Calling the
public API once on tiny on-disk stores of both log-prob dtypes (and both task kinds) fills it, so that a fresh
python process or notebook loads the kernels instead of compiling them for a minute or more.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from pipeline.store.synthetic import random_distributions, write_random_task_pair, write_store_from_logprobs

from .bootstrap import bootstrap
from .pair import Pair
from .tasks import TaskPair

GRID = np.linspace(0.0, 1.0, 11)


def _pair(directory: Path, logprob_dtype: str, split: str, seed: int) -> Pair:
    targets, (a, b) = random_distributions(600, 40, np.random.default_rng(seed))
    doc_id = np.arange(targets.size) // 20  # 30 documents: enough resampling units for the bootstrap
    paths = [write_store_from_logprobs(directory / split / f"{name}.zarr", lp, targets, 8, logprob_dtype,
                                       model=name, n_params=params, doc_id=doc_id, split=split).path
             for name, lp, params in (("A", a, 10**9), ("B", b, 10**8))]
    return Pair(*paths)


def warm(directory: Path) -> None:
    """Run every kernel behind the README's snippets once (stores written under ``directory``)."""
    for lp_dtype in ("float16", "float32"):
        root = Path(directory) / lp_dtype
        valid, test = _pair(root, lp_dtype, "valid", 0), _pair(root, lp_dtype, "test", 1)
        test.sweep(GRID)
        test.sweep(betas=[0.5, 1.0, 2.0])
        test.optimum()
        test.partitions()
        test.heldout(valid)
        bootstrap(test, n_resamples=20, by="doc")
        bootstrap(test, n_resamples=20, by="doc", heldout_w=(0.7, 0.6), kfold=3)
    for kind in ("last_word", "multiple_choice"):
        paths = write_random_task_pair(Path(directory) / "tasks", kind, 12)
        tp = TaskPair(*paths)
        tp.sweep(GRID)
        tp.option_scores([0.5])
        tp.optimum()


def main() -> None:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="arcache-warmup-") as d, warnings.catch_warnings():
        # zarr lists the writer's lock/progress files while the tiny stores are written: harmless here
        warnings.filterwarnings("ignore", message="Object at .arcache-")
        warm(Path(d))
    from numba.core import config

    print(f"analysis kernels compiled and cached in {config.CACHE_DIR or 'numba default'} "
          f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
