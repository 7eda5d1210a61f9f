"""The input cut into shards (the store's unit of resume) and which of them this process embeds.

Shard ``i`` holds input rows ``i * size`` up to ``(i + 1) * size``. One process alone embeds every
shard; several independent processes (``--distributed``) take shard ``i`` when ``i mod N`` is their
index. A mesh over several processes runs in lock-step instead
(:class:`keytok_jax.pipeline.lockstep.LockstepSchedule`): the job is handed the schedule and never
asks which kind it has.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

from ..records import Doc

__all__ = ["Shards", "ShardTask", "ShardSchedule"]


class Shards:
    """``(index, docs)`` per shard of consecutive documents, in input order, stopping at
    ``limit``; ``count`` is the number of shards read so far (all of them once iterated)."""

    def __init__(self, docs: Iterable[Doc], size: int, limit: int | None = None):
        self.docs, self.size, self.limit = docs, size, limit
        self.count = 0

    def __iter__(self) -> Iterator[tuple[int, list[Doc]]]:
        batch: list[Doc] = []
        seen = 0
        for doc in self.docs:
            if self.limit is not None and seen >= self.limit:
                break
            batch.append(doc)
            seen += 1
            if len(batch) == self.size:
                yield self._shard(batch)
                batch = []
        if batch:
            yield self._shard(batch)

    def _shard(self, docs: list[Doc]) -> tuple[int, list[Doc]]:
        self.count += 1
        return self.count - 1, docs


@dataclass(frozen=True)
class ShardTask:
    """A shard for this process: to embed, or ``done`` (recorded by an earlier run: reused).
    ``index`` None is a lock-step filler: step with the other processes, embed and write nothing."""
    index: int | None
    docs: list
    done: bool = False


@dataclass(frozen=True)
class ShardSchedule:
    """Shard ``i`` belongs to group ``i mod groups``; this process is in ``group`` and writes
    its shards when ``writes``."""
    group: int = 0
    groups: int = 1
    writes: bool = True

    def owns(self, index: int) -> bool:
        return index % self.groups == self.group

    def owned_rows(self, total: int, size: int) -> int:
        """Rows of this process's shards among ``total`` input rows (for progress)."""
        return sum(min(size, total - i * size) for i in range(-(-total // size)) if self.owns(i))

    def tasks(self, shards: Iterable[tuple[int, list]], done: set[int]) -> Iterator[ShardTask]:
        for index, docs in shards:
            if self.owns(index):
                yield ShardTask(index, docs, done=index in done)
