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


class SequenceFormatError(DatasetError, ValueError):
    """A sequence file (FASTA, CSV with a sequence column) is malformed, or the model cannot read its residues."""


class ImageDataError(DatasetError, ValueError):
    """An image dataset is malformed: a file in the wrong format or shape, a label outside the classes."""


class ImageReadError(ImageDataError):
    """An image file cannot be read (not an image, truncated, unsupported format)."""


class LabelError(ImageDataError):
    """A label is outside the dataset's classes."""


class LabelSpaceError(ExtractionError, ValueError):
    """A classifier's number of outputs differs from the dataset's number of classes."""


class ContextTooLongError(ExtractionError, ValueError):
    """extract.context_length exceeds what the model supports."""


class NonFiniteLogitsError(ExtractionError, FloatingPointError):
    """The model produced NaN or infinite logits."""
