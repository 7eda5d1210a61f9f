"""Everything a mesh spanning several processes needs, used only for such a mesh.

Every step on such a mesh is collective, so all processes must run the same steps in the same
order. A process feeds the batch rows of the ``data`` indices its devices hold
(:func:`keytok_jax.sharding.process_groups`); processes holding the same rows form a group that
embeds the same shard, and the lowest process of a group writes it.

- :class:`LockstepFeed`: host-local ↔ global arrays, and one agreed sequence of batch shapes
  (each process runs the largest count of every shape, with empty rows where it has fewer).
- :class:`LockstepSchedule`: each round, every group embeds one shard; a group whose shard is
  finished (or past the end) runs an empty filler round.
"""
from __future__ import annotations

import numpy as np
from jax.experimental import multihost_utils

from .. import sharding
from ..records import Batch
from .schedule import ShardSchedule, ShardTask
from .step import Feed

__all__ = ["LockstepFeed", "LockstepSchedule", "feed_for", "shard_schedule"]

MAX_VARIANTS = 32  # quarterings of a bucket's rows (far more than any token budget allows)


class LockstepFeed(Feed):
    """The feed of a mesh over several processes: each feeds its own rows of every batch."""

    def __init__(self, mesh):
        super().__init__(mesh)
        _, _, self.data_held, _ = sharding.process_groups(mesh)

    def host_rows(self, rows: int) -> int:
        return -(-rows // self.data_size) * self.data_held

    def schedule(self, batches: list[Batch], buckets) -> list[Batch]:
        """The per-process counts of each (seq, variant) shape are gathered and every process
        runs the largest count, with empty batches where it has none of that shape left."""
        index = {seq: b for b, seq in enumerate(buckets)}
        counts = np.zeros((len(buckets), MAX_VARIANTS), np.int32)
        mine: dict[tuple[int, int], list] = {}
        for batch in batches:
            counts[index[batch.seq], batch.variant] += 1
            mine.setdefault((batch.seq, batch.variant), []).append(batch.rows)
        agreed = np.asarray(multihost_utils.process_allgather(counts)).max(axis=0)
        out = []
        for b, v in zip(*np.nonzero(agreed)):
            seq, v = buckets[b], int(v)
            own = mine.get((seq, v), [])
            out += [Batch(own[i] if i < len(own) else [], seq, v) for i in range(int(agreed[b, v]))]
        return out

    def agree_width(self, width: int) -> int:
        """The widest of the processes' literal-token widths for this batch (a collective: every
        process runs the same batches in the same order)."""
        return int(np.asarray(multihost_utils.process_allgather(np.int32(width))).max())

    def put(self, host: np.ndarray):
        """This process's rows become its part of the global batch."""
        return multihost_utils.host_local_array_to_global_array(host, self.mesh, self.rows.spec)

    def local(self, result):
        return multihost_utils.global_array_to_host_local_array(result, self.mesh, self.rows.spec)


class LockstepSchedule(ShardSchedule):
    """Rounds of ``groups`` shards: in each, every group embeds its shard or a filler."""

    def tasks(self, shards, done):
        rounds = owned = 0
        for index, docs in shards:
            rounds = index // self.groups + 1
            if not self.owns(index):
                continue
            owned += 1
            if index in done:
                yield ShardTask(index, docs, done=True)
                yield ShardTask(None, [])
            else:
                yield ShardTask(index, docs)
        if owned < rounds:   # the last round has no shard of this group
            yield ShardTask(None, [])


def feed_for(mesh) -> Feed:
    return LockstepFeed(mesh) if sharding.spans_processes(mesh) else Feed(mesh)


def shard_schedule(mesh, process: int, processes: int) -> ShardSchedule:
    """Lock-step rounds over a mesh spanning processes; else shard i to process i mod N."""
    if sharding.spans_processes(mesh):
        group, groups, _, writes = sharding.process_groups(mesh)
        return LockstepSchedule(group, groups, writes)
    return ShardSchedule(process, processes)
