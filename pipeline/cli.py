"""A project error on the command line is one line on stderr and a non-zero exit, not a traceback.

The project's typed errors (extraction, store, training config, analysis) already say what was wrong and what
to do; a traceback and Hydra's "Error executing job" around them only bury that line. Anything else (a bug)
keeps its traceback. ``HYDRA_FULL_ERROR=1`` shows the full traceback for project errors too.

Hydra entry points use two decorators: `report_errors` on the task function (under ``@hydra.main``) prints
the line and records the failure, so that a multirun still runs its other jobs; `exit_on_errors` on the
function that calls the Hydra main turns a recorded failure into exit status 1. Plain (argparse) entry points
use `one_line_errors`, which does both.
"""

from __future__ import annotations

import functools
import os
import sys

_failed: list[BaseException] = []


def project_errors() -> tuple[type[BaseException], ...]:
    """The base classes of the project's typed errors (analysis's only once analysis is imported: a pipeline
    command never raises one, and importing analysis would compile nothing but cost time)."""
    from pipeline.extraction.errors import ExtractionError
    from pipeline.store.errors import StoreError
    from pipeline.training.config import TrainConfigError

    errors: list[type[BaseException]] = [ExtractionError, StoreError, TrainConfigError]
    analysis_errors = sys.modules.get("analysis.errors")
    if analysis_errors is not None:
        errors.append(analysis_errors.AnalysisError)
    return tuple(errors)


def one_line(error: BaseException) -> str:
    """``ErrorClass: message``, the message's line breaks folded into one line."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def _full_traceback_wanted() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def _report(error: BaseException) -> None:
    sys.stdout.flush()
    print(one_line(error), file=sys.stderr, flush=True)
    _failed.append(error)


def _catching(fn, failed_value):
    """``fn`` with a project error printed as one line, recorded, and ``failed_value`` returned instead."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if _full_traceback_wanted() or not isinstance(e, project_errors()):
                raise
            _report(e)
            return failed_value

    return wrapper


def report_errors(task):
    """Hydra task function: a project error is printed as one line and recorded (see `exit_on_errors`)."""
    return _catching(task, None)


def exit_on_errors(main):
    """The function that runs a Hydra main: exit status 1 when a job reported a project error."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        _failed.clear()
        out = main(*args, **kwargs)
        if _failed:
            sys.exit(1)
        return out

    return wrapper


def one_line_errors(main):
    """A plain command's main: a project error is one line on stderr and return value 1."""
    return _catching(main, 1)
