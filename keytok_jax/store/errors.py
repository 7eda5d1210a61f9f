"""What the store raises when a store is missing, damaged, or used in a way its state forbids."""
from __future__ import annotations

from ..errors import KeytokError

__all__ = ["StoreError", "StoreMismatchError", "StoreIncompleteError", "ShardExistsError"]


class StoreError(KeytokError):
    """A store is missing, malformed, or used in a way its state does not allow."""


class StoreMismatchError(StoreError, ValueError):
    """An existing store was written with other settings than the ones a run resumes it with."""


class StoreIncompleteError(StoreError):
    """The store has not been finalized (pass ``allow_incomplete=True`` to read what is done)."""


class ShardExistsError(StoreError):
    """The shard already has a record: it is finished and must not be written again."""
