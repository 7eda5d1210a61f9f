"""The on-disk store of sparse token vectors (and optional dense embeddings).

:mod:`~keytok_jax.store.format` is the format's specification; :mod:`~keytok_jax.store.fileio`
writes files atomically; :mod:`~keytok_jax.store.writer` writes a store shard by shard and
:mod:`~keytok_jax.store.reader` opens and verifies one.
"""
from __future__ import annotations

from .errors import ShardExistsError, StoreError, StoreIncompleteError, StoreMismatchError
from .fileio import atomic_write
from .format import (FLAG_EMPTY, FLAG_REPLACED, FLAG_TRUNCATED, FORMAT_VERSION, KNOWN_FLAGS,
                     MAX_ROWS, decode_ids, encode_ids, shard_name)
from .reader import Store, open
from .writer import StoreWriter

__all__ = [
    "FORMAT_VERSION", "MAX_ROWS", "FLAG_TRUNCATED", "FLAG_EMPTY", "FLAG_REPLACED", "KNOWN_FLAGS",
    "StoreError", "StoreMismatchError", "StoreIncompleteError", "ShardExistsError",
    "StoreWriter", "Store", "open", "encode_ids", "decode_ids", "shard_name", "atomic_write",
]
