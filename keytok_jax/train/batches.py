"""Training examples → tokenized roles → fixed-shape micro-batches in a replayable order.

Batches have a fixed number of examples and are padded to a multiple of 16 tokens (one compiled
program per length); the last incomplete batch of an epoch is dropped (its rows would otherwise
be missing negatives).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SettingsError
from ..pipeline import DocTokenizer, pad_batch
from ..records import FLAG_TRUNCATED
from .data import Example

__all__ = ["SEQ_MULTIPLE", "pad_to", "Batches", "TrainingSet", "training_set"]

SEQ_MULTIPLE = 16


def pad_to(n: int, multiple: int = SEQ_MULTIPLE) -> int:
    return -(-n // multiple) * multiple


class Batches:
    """Fixed-size micro-batches of tokenized examples in a seeded per-epoch order.

    Micro-batch ``m`` is a pure function of ``m`` (epoch ``m // per_epoch``, position
    ``m % per_epoch`` in that epoch's permutation), so a resumed run continues exactly where the
    checkpoint was taken."""

    def __init__(self, tokenized: list[list], batch_size: int, max_length: int, seed: int):
        self.roles = len(tokenized)
        self.docs = tokenized                    # [roles][examples] TokenizedDoc
        self.n = len(tokenized[0])
        self.batch_size, self.seed = batch_size, seed
        self.max_len = pad_to(max_length)
        self.per_epoch = self.n // batch_size
        if self.per_epoch < 1:
            raise SettingsError(f"{self.n} examples do not fill one batch of {batch_size}")
        self._order: dict[int, np.ndarray] = {}

    def order(self, epoch: int) -> np.ndarray:
        if epoch not in self._order:
            self._order = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._order[epoch]

    def __call__(self, micro_step: int):
        """ids, mask, pool_mask: int32 [roles * batch, T], right-padded with 0."""
        epoch, pos = divmod(micro_step, self.per_epoch)
        rows = self.order(epoch)[pos * self.batch_size:(pos + 1) * self.batch_size]
        docs = [self.docs[r][i] for r in range(self.roles) for i in rows]
        seq = min(pad_to(max(len(d.ids) for d in docs)), self.max_len)
        return pad_batch(docs, len(docs), seq)


@dataclass
class TrainingSet:
    """The batches of a run and what became of the examples read (reported in summary.json)."""
    batches: Batches
    examples: int
    examples_read: int
    dropped_without_negative: int
    hard_negatives: bool
    truncated_texts: int

    def report(self) -> dict:
        return {"examples": self.examples, "examples_read": self.examples_read,
                "dropped_without_negative": self.dropped_without_negative,
                "hard_negatives": self.hard_negatives, "truncated_texts": self.truncated_texts}


def training_set(examples: list[Example], tokenize: DocTokenizer, *, limit: int | None,
                 negatives: str, batch_size: int, max_length: int, seed: int) -> TrainingSet:
    """The first ``limit`` examples, with hard negatives as ``negatives`` says (``auto``: when
    any example has one; examples without one are then dropped), tokenized into batches."""
    n_read = len(examples)
    if limit:
        examples = examples[:limit]
    with_negative = sum(e.negative is not None for e in examples)
    use_hard = negatives == "hard" or (negatives == "auto" and with_negative > 0)
    dropped = len(examples) - with_negative if use_hard else 0
    if use_hard:
        examples = [e for e in examples if e.negative is not None]
    roles = [[e.anchor for e in examples], [e.positive for e in examples]]
    if use_hard:
        roles.append([e.negative for e in examples])
    batches = Batches([tokenize(texts) for texts in roles], batch_size, max_length, seed)
    truncated = sum(bool(d.flags & FLAG_TRUNCATED) for docs in batches.docs for d in docs)
    return TrainingSet(batches, len(examples), n_read, dropped, use_hard, truncated)
