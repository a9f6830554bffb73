"""Extraction stage: datasets, models, top-K extraction into logit-cache stores, and training."""

import os
import sys
from pathlib import Path


def _use_repo_numba_cache() -> None:
    """One Numba cache for every way in (make targets, the CLIs, a user's python, notebooks): the repository's
    .numba_cache, the directory the Makefile names too, so kernels compiled once (`make setup` warms them) load
    in a fresh process instead of compiling again. Set before numba reads its config; a NUMBA_CACHE_DIR already
    set wins, and an installed (non-checkout) package keeps Numba's default."""
    root = Path(__file__).resolve().parents[1]
    if "NUMBA_CACHE_DIR" in os.environ or not (root / "pyproject.toml").is_file():
        return
    os.environ["NUMBA_CACHE_DIR"] = str(root / ".numba_cache")
    if "numba" in sys.modules:  # numba imported first: its config already read the environment
        from numba.core import config

        config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]


_use_repo_numba_cache()
