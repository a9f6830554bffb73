"""Warnings said once per run (process): a multirun of eight extractions repeats the same caveat eight times
otherwise, and the one that matters gets lost."""

from __future__ import annotations

import logging

_said: set = set()


def warn_once(log: logging.Logger, key, msg: str, *args) -> bool:
    """``log.warning(msg, *args)`` the first time ``key`` is seen in this process, ``log.debug`` after that.
    Returns whether it was the first time."""
    first = key not in _said
    _said.add(key)
    if first:
        log.warning(msg + " (said once per run)", *args)
    else:
        log.debug(msg, *args)
    return first
