"""Typed errors of the store format. Every message says what was expected, what was found, and what to do."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every store error."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """The path holds no store."""


class IncompleteStoreError(StoreError):
    """The store was not finished (a killed or running extraction)."""


class UnknownSchemaError(StoreError):
    """The store's schema_version is not one this code reads."""


class SchemaError(StoreError, ValueError):
    """Arrays or attributes do not match the schema (names, dtypes, shapes, required attributes)."""


class StoreExistsError(StoreError, FileExistsError):
    """A store is already at the path and the writer was not told to overwrite it."""


class StoreLockedError(StoreError):
    """Another live writer holds the store's lock."""


class CorruptStoreError(StoreError):
    """A chunk is missing or fails its checksum, metadata is unparsable or disagrees with the arrays, or a digest
    or the token-stream hash does not match. ``array``, ``chunk`` and ``file`` name the damaged part when known."""

    def __init__(self, message: str, *, array: str | None = None, chunk: int | None = None, file=None):
        super().__init__(message)
        self.array = array
        self.chunk = chunk
        self.file = file


class MissingChunkError(CorruptStoreError):
    """A chunk the metadata promises has no file (Zarr would read it as fill values)."""


class MisplacedChunkError(CorruptStoreError):
    """A chunk file is not the one recorded when the store completed (swapped, replaced or altered)."""


class MetadataMismatchError(CorruptStoreError):
    """The store's metadata disagrees with its arrays (K and the list width, dtypes, shapes, chunking)."""


class IncompatiblePairError(StoreError):
    """Two stores do not score the same token stream, so they cannot be fused position by position."""

    def __init__(self, message: str, field: str | None = None, value_a=None, value_b=None):
        super().__init__(message)
        self.field = field
        self.value_a = value_a
        self.value_b = value_b


class NotAStoreError(StoreError):
    """A path a writer or `stores rm` would delete is neither a store of this project nor an empty directory."""


class SettingMismatchError(StoreExistsError):
    """A partial store at the path was written with another setting (other model weights, tokenizer, data or
    protocol), so it cannot be resumed."""
