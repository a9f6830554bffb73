"""A unique name for every Hydra run directory: ``${run_id:}`` in a config's ``hydra.run.dir``.

Hydra's ``${now:%Y-%m-%d_%H-%M-%S}`` names two runs started in the same second alike, and both then write into
one directory (mixed results). ``run_id`` adds the microseconds and the process id, so runs of different
processes never share a name (two live processes never share a pid), and a process that resolves it twice in
one microsecond (a frozen clock) gets a numbered suffix. Call `register` before ``@hydra.main`` composes the
config; resolvers are cached per config, so one run resolves one name however often the run dir is read.
An explicit ``hydra.run.dir=...`` on the command line replaces the pattern and is kept as given.
"""

from __future__ import annotations

import os
from datetime import datetime

from omegaconf import OmegaConf

RESOLVER = "run_id"
_issued: set[str] = set()


def _now() -> datetime:  # one place to freeze the clock in tests
    return datetime.now()


def run_id() -> str:
    """'2024-05-01_12-30-05_123456_p4242' (date, time, microseconds, pid), '-1', '-2', ... if already issued."""
    base = f"{_now():%Y-%m-%d_%H-%M-%S_%f}_p{os.getpid()}"
    name, n = base, 0
    while name in _issued:
        n += 1
        name = f"{base}-{n}"
    _issued.add(name)
    return name


def register() -> None:
    """Register ``${run_id:}`` with OmegaConf (idempotent)."""
    OmegaConf.register_new_resolver(RESOLVER, run_id, use_cache=True, replace=True)
