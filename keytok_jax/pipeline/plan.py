"""Plan: a window of tokenized texts → device batches of a few fixed shapes.

A job compiles one program per ``(rows, seq)`` shape, so shapes come from a small fixed set:
sequence buckets (:func:`seq_buckets`) and, per bucket, a row count from the token budget. Texts
are sorted by length inside the window and fill the buckets' batches; a bucket's last, partial
batch uses a quarter, a sixteenth, ... of the rows when that holds it (few shapes, little padding
for small inputs). Rows per batch are rounded up to a multiple of the mesh's ``data`` axis.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..records import Batch, TokenizedDoc

__all__ = ["seq_buckets", "default_batching", "BATCHING", "Shapes", "pad_batch", "literal_width",
           "pad_literal"]


def seq_buckets(max_length: int, step: int = 32) -> list[int]:
    """Padded sequence lengths: every multiple of ``step`` up to 512, then multiples of 64 growing
    by about 1.125x (576, 704, 832, ...), ending at max_length rounded up to 64. Steps of 32 are
    fine enough that natural text pads little, coarse enough that a job compiles a handful of
    programs: on SciFact (SmolLM2, PromptEOL, max length 512, shards of 1024) the plan pads 6.2%
    of the tokens with 21 shapes; steps of 64 padded 10.2% with 15. Finer steps trade more
    compiled shapes for less padding (README, Performance)."""
    if step < 1:
        raise ValueError(f"bucket step must be a positive integer, got {step}")
    top = -(-max_length // 64) * 64
    out, t = [], step
    while t < top:
        out.append(t)
        t = t + step if t < 512 else max(t + 64, -(-int(t * 1.125) // 64) * 64)
    return out + [top]


# (batch_tokens, bucket_step) by device kind. Accelerators want big batches and few compiled
# shapes. On the 2-core CPU the compute is the device and compiled shapes are cheap, so padding
# decides: 1,024-token batches in steps of 16 padded 2.4% of SciFact's first 400 texts (27
# shapes) against 8,192/32's 7.6% (10 shapes); 0.86-1.04x transformers in three runs against
# 0.83x the same day (benchmarks/throughput.py; README, Performance).
BATCHING = {"accelerator": (8192, 32), "cpu": (1024, 16)}


def default_batching(platform: str) -> tuple[int, int]:
    """``(batch_tokens, bucket_step)`` for a device of this jax platform."""
    return BATCHING["cpu" if platform == "cpu" else "accelerator"]


def _all_rows(rows: int) -> int:
    return rows


@dataclass(frozen=True)
class Shapes:
    """The batch shapes of a job and the plan that fills them.

    ``host_rows(rows)`` is how many rows of a batch of ``rows`` this process feeds: all of them,
    unless the caller's device feed says otherwise (a mesh spanning processes, where each process
    feeds its own part of every batch)."""
    batch_tokens: int
    buckets: tuple[int, ...]
    data_size: int = 1
    host_rows: Callable[[int], int] = _all_rows

    def rows_at(self, seq: int, variant: int) -> int:
        """Rows of a batch of length ``seq``: the budget's share / 4**variant, rounded up to a
        multiple of the ``data`` axis."""
        rows = max(1, max(1, self.batch_tokens // seq) // 4 ** variant)
        d = self.data_size
        return -(-rows // d) * d

    def variant(self, seq: int, remaining: int | None) -> int:
        """How many times the budget's rows are quartered for ``remaining`` texts (this process's
        share of them)."""
        rows, v = max(1, self.batch_tokens // seq), 0
        while remaining is not None and rows > 1 and self.host_rows(rows // 4) >= remaining:
            rows, v = rows // 4, v + 1
        return v

    def every_shape(self) -> list[tuple[int, int]]:
        """Every ``(rows, seq)`` a plan can make: each bucket's full batch and its quartered last
        batches, down to the smallest row count."""
        shapes: set[tuple[int, int]] = set()
        for seq in self.buckets:
            v = 0
            while (shape := (self.rows_at(seq, v), seq)) not in shapes:   # until the row floor
                shapes.add(shape)
                v += 1
        return sorted(shapes)

    def rows_for(self, seq: int, remaining: int | None = None) -> int:
        """Rows of a batch of length ``seq``: the token budget's share, or for a bucket's last
        batch the smallest of cap, cap/4, cap/16, ... that holds ``remaining``."""
        return self.rows_at(seq, self.variant(seq, remaining))

    def plan(self, lengths: np.ndarray) -> list[Batch]:
        """The batches of texts of these lengths. Rows are sorted by length and fill each bucket's
        batches; a bucket's leftover (its longest texts, too few for a full batch) moves up into
        the next bucket when that pads fewer tokens than running a mostly empty batch."""
        order = np.argsort(lengths, kind="stable")
        bucket_of = np.searchsorted(np.asarray(self.buckets), lengths[order], side="left")
        carry: list[int] = []
        last = len(self.buckets) - 1
        batches: list[Batch] = []
        for b, seq in enumerate(self.buckets):
            rows = carry + order[bucket_of == b].tolist()
            cap = self.host_rows(self.rows_for(seq))
            full = len(rows) // cap * cap
            batches += [self._batch(rows[i:i + cap], seq) for i in range(0, full, cap)]
            carry = rows[full:]
            if carry and (b == last or self.host_rows(self.rows_for(seq, len(carry))) * seq
                          <= len(carry) * self.buckets[b + 1]):
                batches.append(self._batch(carry, seq))
                carry = []
        return batches

    def _batch(self, rows: list[int], seq: int) -> Batch:
        return Batch(rows, seq, self.variant(seq, len(rows)))


def pad_batch(docs: Sequence[TokenizedDoc], rows: int, seq: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``ids, mask, pool_mask`` int32 ``[rows, seq]``: ``docs`` right-padded with 0, rows after
    them all padding (fully masked)."""
    ids = np.zeros((rows, seq), np.int32)
    mask = np.zeros((rows, seq), np.int32)
    pool_mask = np.zeros((rows, seq), np.int32)
    for j, d in enumerate(docs):
        ids[j, : len(d.ids)] = d.ids
        mask[j, : len(d.ids)] = 1
        pool_mask[j, d.pool_start: len(d.ids)] = 1
    return ids, mask, pool_mask


def literal_width(docs: Sequence[TokenizedDoc], seq: int, k: int) -> int:
    """Columns of a batch's literal-token array: ``max(2 seq, k)``, which holds a text's literal
    tokens (about one per token of the text, a word's two forms at most doubling it) and the
    top-k; a batch holding a text with more gets the next multiple of ``seq`` that fits it (one
    more compiled shape, rather than a token dropped)."""
    width = max(2 * seq, k)
    most = max((len(d.literal) for d in docs if d.literal is not None), default=0)
    return width if most <= width else -(-most // seq) * seq


def pad_literal(literals: Sequence[np.ndarray], rows: int, width: int) -> np.ndarray:
    """int32 ``[rows, width]``: each text's literal token ids, padded with -1."""
    out = np.full((rows, width), -1, np.int32)
    for j, ids in enumerate(literals):
        out[j, : len(ids)] = ids
    return out
