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
    """A chunk is missing or fails its checksum, or the token-stream hash does not match the arrays."""


class IncompatiblePairError(StoreError):
    """Two stores do not score the same token stream, so they cannot be fused position by position."""

    def __init__(self, message: str, field: str | None = None, value_a=None, value_b=None):
        super().__init__(message)
        self.field = field
        self.value_a = value_a
        self.value_b = value_b
