"""The on-disk store of sparse token vectors (and optional dense embeddings).

:mod:`~keytok_jax.store.format` is the format's specification; :mod:`~keytok_jax.store.fileio`
writes files atomically; :mod:`~keytok_jax.store.writer` writes a store shard by shard (creating
it through :mod:`~keytok_jax.store.create`) and :mod:`~keytok_jax.store.reader` opens one;
:mod:`~keytok_jax.store.check` checks a recorded shard against its record and its input, and
:mod:`~keytok_jax.store.lock` keeps one writing job per store.
"""
from __future__ import annotations

from .check import Problem
from .errors import (InputChangedError, ShardExistsError, StoreDamagedError, StoreError,
                     StoreIncompleteError, StoreLockedError, StoreMismatchError)
from .fileio import atomic_write
from .format import (FLAG_EMPTY, FLAG_REPLACED, FLAG_TRUNCATED, FORMAT_VERSION, KNOWN_FLAGS,
                     MAX_ROWS, decode_ids, encode_ids, input_fingerprint, read_attachment,
                     shard_name)
from .lock import StoreLock
from .reader import Store, open
from .writer import StoreWriter

__all__ = [
    "FORMAT_VERSION", "MAX_ROWS", "FLAG_TRUNCATED", "FLAG_EMPTY", "FLAG_REPLACED", "KNOWN_FLAGS",
    "StoreError", "StoreMismatchError", "StoreIncompleteError", "ShardExistsError",
    "StoreDamagedError", "InputChangedError", "StoreLockedError", "Problem",
    "StoreWriter", "Store", "open", "encode_ids", "decode_ids", "shard_name", "atomic_write",
    "input_fingerprint", "StoreLock", "read_attachment",
]
