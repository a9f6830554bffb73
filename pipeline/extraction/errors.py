"""Typed errors of the extraction stage.

Every message names the offending value and says what to do, so a failed run on a GPU box can be
fixed without reading the code.
"""

from __future__ import annotations


class ExtractionError(Exception):
    """Base class of every error raised by the extraction stage."""


class ConfigError(ExtractionError, ValueError):
    """A config value is missing, malformed or inconsistent with another one."""


class ModelNotFoundError(ExtractionError, FileNotFoundError):
    """The model path / hub id / GGUF file could not be found or loaded."""


class DatasetError(ExtractionError):
    """A dataset could not be loaded."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A dataset file is missing and the hub could not be reached."""


class EmptyDatasetError(DatasetError, ValueError):
    """The dataset (or the scored stream built from it) has no positions to score."""


class NotUTF8Error(DatasetError, ValueError):
    """A text file is not valid UTF-8."""


class DatasetChecksumError(DatasetError, ValueError):
    """The text a dataset config produced does not match the sha256 recorded in the config."""


class TaskDataError(DatasetError, ValueError):
    """A task item is malformed (its label is not among its options, a cloze query without its blank)."""


class ContextTooLongError(ExtractionError, ValueError):
    """extract.context_length exceeds what the model supports."""


class NonFiniteLogitsError(ExtractionError, FloatingPointError):
    """The model produced NaN or infinite logits."""
