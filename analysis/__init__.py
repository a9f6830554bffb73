"""Exact and certified Accept-Reject fusion analysis from logit caches (DESIGN.md sections 3, 4, 6).

Never imports torch or transformers: everything here runs from the stores alone.
"""

from pipeline.store import align, find_stores

from .data import MemoryStore, PairData
from .errors import (
    AnalysisError,
    DegenerateObjectiveError,
    HeldoutMismatchError,
    NonFiniteStoreError,
    TargetMismatchError,
    WeightError,
)
from .pair import Heldout, Optimum, Pair, open_store, relative_improvement

__all__ = [
    "MemoryStore", "PairData", "AnalysisError", "DegenerateObjectiveError", "HeldoutMismatchError",
    "NonFiniteStoreError", "TargetMismatchError", "WeightError", "Heldout", "Optimum", "Pair", "open_store",
    "relative_improvement", "align", "find_stores",
]
