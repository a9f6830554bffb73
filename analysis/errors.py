"""Typed errors of the analysis stage. Messages say what was expected, what was found, and what to do.

Store-level problems (a store that cannot be fused, NaN inside a store) subclass the store's own
``StoreError`` so one ``except StoreError`` catches every data problem; bad arguments subclass ValueError.
"""

from __future__ import annotations

from pipeline.store import IncompatiblePairError, SchemaError, StoreError


class AnalysisError(Exception):
    """Base class of every analysis error."""


class WeightError(AnalysisError, ValueError):
    """A weight grid is empty, holds NaN, or has weights outside [0, 1] (betas outside [0, inf])."""


class NonFiniteStoreError(AnalysisError, StoreError):
    """A store holds NaN where a log-probability must be (a broken extraction)."""


class TargetMismatchError(AnalysisError, IncompatiblePairError):
    """Two stores with matching metadata disagree on the targets at some position."""


class HeldoutMismatchError(AnalysisError, ValueError):
    """A held-out (validation) pair is not made of the same two models as the pair it is applied to."""


class DegenerateObjectiveError(AnalysisError, ValueError):
    """The fused NLL is infinite for every weight (a target with probability 0 under both models)."""


class NotATaskStoreError(AnalysisError, StoreError):
    """A store given to `analysis.TaskPair` is not a task store (no ``task`` attribute, or no item/option arrays)."""


class TaskLayoutError(AnalysisError, SchemaError):
    """A task store's item/option layout or tables are inconsistent (a label outside its item's options, an
    option without positions, positions out of (item, option) order)."""


class TaskMismatchError(AnalysisError, IncompatiblePairError):
    """Two task stores of one token stream disagree on the task (kind, name, or item/option arrays)."""


class SegmentMismatchError(AnalysisError, IncompatiblePairError):
    """Two stores of one text cut a document into different word segments (count, or bytes of a segment), so they
    cannot be fused at the word level (DESIGN.md section 7)."""


class WordFusionUnavailableError(AnalysisError, StoreError):
    """A store cannot be fused at the word level: it lacks bow_logmass / word_start (extracted before they existed),
    or its tokenizer failed the word-boundary property (a word-level vocabulary with an unknown token)."""


class SettingsError(AnalysisError, ValueError):
    """A setting of the analysis CLIs is missing or not one of the accepted values (stores folder, order, metrics)."""


def check_cli_settings(stores, order: str, param_count: str, metrics=(), units=None, unit: str | None = None) -> None:
    """The settings both analysis CLIs share, checked before any store is opened (one typed error each)."""
    from pathlib import Path

    if not Path(stores).is_dir():
        raise SettingsError(f"stores={stores} is not a folder; pass stores=DIR, the root the stores were written under "
                            "(e.g. stores=stores/demo)")
    if order not in ("auto", "given"):
        raise SettingsError(f"analysis order={order!r} is not 'auto' (larger model primary) or 'given'")
    if param_count not in ("n_params", "n_params_nonembed"):
        raise SettingsError(f"param_count={param_count!r} is not 'n_params' (total) or 'n_params_nonembed'")
    bad = [m for m in metrics if m not in ("ppl", "bpc", "bpb", "acc", "nll")]
    if bad:
        raise SettingsError(f"analysis.metrics has {bad}; choose among ppl, bpc, bpb, acc, nll")
    if unit is not None and units is not None and unit not in units:
        raise SettingsError(f"bootstrap unit {unit!r} is not one of {list(units)}")
