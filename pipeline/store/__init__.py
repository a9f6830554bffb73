"""The logit-cache store (DESIGN.md section 2): schema, writer, reader, alignment. Torch-free."""

from .align import Alignment, align
from .digests import check_digests, chunk_digests
from .errors import (
    CorruptStoreError,
    IncompatiblePairError,
    IncompleteStoreError,
    MetadataMismatchError,
    MisplacedChunkError,
    MissingChunkError,
    SchemaError,
    StoreError,
    StoreExistsError,
    StoreLockedError,
    StoreNotFoundError,
    UnknownSchemaError,
)
from .hashing import config_hash, stream_hash
from .paths import setting_tag, store_path
from .reader import Store, TruncatedStore, open_store
from .schema import DEFAULT_CHUNK_SIZE, POSITION_ARRAYS, SCHEMA_VERSION
from .verify import VerifyReport, find_stores, verify_store
from .writer import StoreWriter

__all__ = [
    "Alignment", "align", "CorruptStoreError", "IncompatiblePairError", "IncompleteStoreError", "SchemaError",
    "StoreError", "StoreExistsError", "StoreLockedError", "StoreNotFoundError", "UnknownSchemaError",
    "config_hash", "stream_hash", "setting_tag", "store_path", "Store", "TruncatedStore", "open_store",
    "DEFAULT_CHUNK_SIZE", "POSITION_ARRAYS", "SCHEMA_VERSION", "VerifyReport", "find_stores", "verify_store",
    "StoreWriter", "MetadataMismatchError", "MisplacedChunkError", "MissingChunkError", "check_digests", "chunk_digests",
]
