"""What the store raises when a store is missing, damaged, or used in a way its state forbids."""
from __future__ import annotations

from ..errors import KeytokError

__all__ = ["StoreError", "StoreMismatchError", "StoreIncompleteError", "ShardExistsError",
           "StoreDamagedError", "InputChangedError", "StoreLockedError"]


class StoreError(KeytokError):
    """A store is missing, malformed, or used in a way its state does not allow."""


class StoreMismatchError(StoreError, ValueError):
    """An existing store was written with other settings than the ones a run resumes it with."""


class StoreIncompleteError(StoreError):
    """The store has not been finalized: its embedding job was stopped (rerun it to finish the
    store) or is still running. ``keytok_jax.store.open(path, allow_incomplete=True)`` reads its
    leading finished shards."""


class ShardExistsError(StoreError):
    """The shard already has a record: it is finished and must not be written again."""


class StoreDamagedError(StoreError):
    """Shards whose files no longer match their records (missing, unreadable or changed chunks
    or ids files); ``problems`` lists each, one line per shard and array."""

    def __init__(self, message: str, problems=()):
        super().__init__(message)
        self.problems = list(problems)


class InputChangedError(StoreError):
    """A recorded shard was written from other input rows than a resumed run reads (or its record
    has no fingerprint to tell); ``problems`` lists them."""

    def __init__(self, message: str, problems=()):
        super().__init__(message)
        self.problems = list(problems)


class StoreLockedError(StoreError):
    """Another job holds the store's lock (``STORE/.lock``); ``holder`` is what its lock says."""

    def __init__(self, message: str, holder: dict | None = None):
        super().__init__(message)
        self.holder = holder or {}
