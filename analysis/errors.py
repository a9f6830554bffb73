"""Typed errors of the analysis stage. Messages say what was expected, what was found, and what to do.

Store-level problems (a store that cannot be fused, NaN inside a store) subclass the store's own
``StoreError`` so one ``except StoreError`` catches every data problem; bad arguments subclass ValueError.
"""

from __future__ import annotations

from pipeline.store import IncompatiblePairError, StoreError


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
