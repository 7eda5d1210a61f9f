"""The input cut into shards (the store's unit of resume) and which of them this process embeds.

Shard ``i`` holds input rows ``i * size`` up to ``(i + 1) * size``. One process alone embeds every
shard; several independent processes (``--distributed``) take shard ``i`` when ``i mod N`` is their
index. A mesh over several processes runs in lock-step instead
(:class:`keytok_jax.pipeline.lockstep.LockstepSchedule`): the job is handed the schedule and never
asks which kind it has.

A shard an earlier run recorded is reused only when :class:`Reuse` finds it holds this run's
input rows and its files still match its record; it decides as the input streams past the shard,
before the schedule sees it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

from .. import store
from ..records import Doc
from ..store.check import CHANGED, DAMAGED, UNVERIFIABLE

__all__ = ["Shards", "ShardTask", "ShardSchedule", "Reuse"]


class Shards:
    """``(index, docs)`` per shard of consecutive documents, in input order, stopping at
    ``limit``; ``count`` is the number of shards read so far (all of them once iterated)."""

    def __init__(self, docs: Iterable[Doc], size: int, limit: int | None = None):
        self.docs, self.size, self.limit = docs, size, limit
        self.count = 0
        self.rows = 0  # documents put in shards so far

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
        self.rows += len(docs)
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

    def owned_rows(self, total: int | None, size: int) -> int | None:
        """Rows of this process's shards among ``total`` input rows (for progress; None when
        the total is unknown)."""
        if total is None:
            return None
        return sum(min(size, total - i * size) for i in range(-(-total // size)) if self.owns(i))

    def tasks(self, shards: Iterable[tuple[int, list]], done) -> Iterator[ShardTask]:
        """The shards this process embeds or skips; ``done`` holds the indices to reuse."""
        for index, docs in shards:
            if self.owns(index):
                yield ShardTask(index, docs, done=index in done)


_WAY_OUT = {
    CHANGED: "Resuming would mix two inputs in one store. Write to a new --output, or rerun with "
             "--recompute to redo the shards whose input changed.",
    UNVERIFIABLE: "Rerun with --recompute to redo such shards, or write to a new --output.",
    DAMAGED: "Rerun with --recompute to redo the damaged shards (or write to a new --output).",
}


def refusal(path, problems: list, docs: list[Doc]) -> store.StoreError:
    """The error that stops a run at a recorded shard it may not reuse: each problem (with the
    input line of a changed row) and the way out."""
    lines = []
    for p in problems:
        where = f" (input {docs[p.row].source})" if p.row is not None and p.row < len(docs) else ""
        lines.append(f"{p.text}{where}")
    kind = problems[0].kind
    error = store.StoreDamagedError if kind == DAMAGED else store.InputChangedError
    return error(f"{path}: cannot reuse recorded shard {problems[0].shard}: " + "; ".join(lines)
                 + ". " + _WAY_OUT[kind], problems)


class Reuse:
    """Which recorded shards this run reuses, decided as the input streams past each of this
    process's shards (:meth:`check` wraps the shards; ``index in reuse`` is then the answer).

    A recorded shard is reused when its record's input fingerprint is the one of the rows this
    run read and its files match its checksums. Otherwise the run stops with the problems and
    the way out, or, with ``recompute``, the shard's record is dropped and it is embedded again.
    A finished store meeting more input than it holds is refused the same way (``recompute``
    reopens it)."""

    def __init__(self, writer: store.StoreWriter, schedule: ShardSchedule, recompute: bool):
        self.writer, self.schedule, self.recompute = writer, schedule, recompute
        self.recorded = writer.done_shards()
        self.reused: set[int] = set()
        self.recomputed = 0

    def __contains__(self, index: int) -> bool:
        return index in self.reused

    def check(self, shards: Iterable[tuple[int, list[Doc]]]) -> Iterator[tuple[int, list[Doc]]]:
        for index, docs in shards:
            if self.schedule.owns(index):
                self._decide(index, docs)
            yield index, docs

    def _decide(self, index: int, docs: list[Doc]) -> None:
        if index not in self.recorded:
            if self.writer.complete:
                self._grown(index)
            return
        ids = [d.id for d in docs]
        fingerprint = store.input_fingerprint(ids, [d.text for d in docs], [d.flags for d in docs])
        problems = self.writer.reuse_problems(index, ids, fingerprint)
        if not problems:
            self.reused.add(index)
            return
        if not self.recompute:
            raise refusal(self.writer.path, problems, docs)
        self.recomputed += 1
        if self.schedule.writes:
            self.writer.discard_shard(index)

    def _grown(self, index: int) -> None:
        """Shard ``index`` is past the end of a finished store: the input grew since."""
        if not self.recompute:
            m = self.writer.manifest
            raise store.InputChangedError(
                f"{self.writer.path}: the store is finished with {m.get('num_rows')} rows "
                f"({m.get('num_shards')} shards) but the input goes on past them (shard {index}): "
                f"the input changed since the store was written. "
                + _WAY_OUT[CHANGED].replace("redo the shards whose input changed",
                                            "reopen it and embed the rest"))
        if self.schedule.writes:
            self.writer.reopen()
