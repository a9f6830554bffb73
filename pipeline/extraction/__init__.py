"""The extraction stage: datasets -> token stream -> model -> per-position arrays -> store.

Modules, in the order data flows: `config` (typed frozen specs), `datasets` (documents + provenance),
`tasks` (LAMBADA last word, CBT, ARC: items -> one context/continuation segment per option), `stream`
(tokens, BOS, windows, n_chars/n_bytes), `models` (loading, provenance, kernel path), `head` (float32 LM head
math), `kernels` (numba rank/ties), `run` (the resumable loop), `errors`.
The CLI is `python -m pipeline.extract` (pipeline/extract.py).
"""

from .errors import (
    ConfigError,
    ContextTooLongError,
    DatasetChecksumError,
    DatasetError,
    DatasetNotFoundError,
    EmptyDatasetError,
    ExtractionError,
    ModelNotFoundError,
    NonFiniteLogitsError,
    NotUTF8Error,
    TaskDataError,
)

__all__ = ["ConfigError", "ContextTooLongError", "DatasetChecksumError", "DatasetError", "DatasetNotFoundError",
           "EmptyDatasetError", "ExtractionError", "ModelNotFoundError", "NonFiniteLogitsError", "NotUTF8Error",
           "TaskDataError"]
