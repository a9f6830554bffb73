"""Exact and certified Accept-Reject fusion analysis from logit caches (DESIGN.md sections 3, 4, 6).

Never imports torch or transformers: everything here runs from the stores alone.
"""

from pipeline.store import align, find_stores

from .bootstrap import BootstrapError, bootstrap, kfold_choice, sweep_columns
from .data import MemoryStore, PairData
from .errors import (
    AnalysisError,
    DegenerateObjectiveError,
    HeldoutMismatchError,
    NonFiniteStoreError,
    NotATaskStoreError,
    SegmentMismatchError,
    TargetMismatchError,
    TaskLayoutError,
    TaskMismatchError,
    WeightError,
    WordFusionUnavailableError,
)
from .front import classification_table, masked_table
from .multi import MultiData, em_weights, geometric_sweep, multi_summary
from .pair import Heldout, Optimum, Pair, open_store, relative_improvement
from .rbp import fused_rbp, pair_rbp, rbp_scaling, single_rbp
from .similarity import similarity_sweep
from .tasks import TaskHeldout, TaskMetricOptimum, TaskOptimum, TaskPair, is_task_store
from .theorems import mainstay_deviation, theorem_checks
from .vocab_use import vocab_use
from .words import WordPair

__all__ = [
    "MemoryStore", "PairData", "AnalysisError", "DegenerateObjectiveError", "HeldoutMismatchError",
    "NonFiniteStoreError", "TargetMismatchError", "WeightError", "Heldout", "Optimum", "Pair", "open_store",
    "relative_improvement", "align", "find_stores", "BootstrapError", "bootstrap", "kfold_choice", "sweep_columns",
    "ar_law", "fit_power_law", "law_points", "MultiData", "em_weights", "geometric_sweep", "multi_summary",
    "fused_rbp", "pair_rbp", "rbp_scaling", "single_rbp", "similarity_sweep", "mainstay_deviation",
    "theorem_checks", "vocab_use", "NotATaskStoreError", "TaskLayoutError", "TaskMismatchError", "TaskPair",
    "TaskOptimum", "TaskMetricOptimum", "TaskHeldout", "is_task_store",
    "classification_table", "masked_table",
    "WordPair", "SegmentMismatchError", "WordFusionUnavailableError",
]


def __getattr__(name):
    # The law API is imported on first use, so that `python -m analysis.law` does not find its own module
    # already imported by the package (runpy warns about that).
    if name in ("ar_law", "fit_power_law", "law_points"):
        from . import law

        return getattr(law, name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
