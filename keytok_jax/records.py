"""The small records that pass one way through the embedding pipeline, and the row flags.

``Doc`` (read) → ``TokenizedDoc`` (tokenize) → ``Batch`` (plan) → ``EmbedOutput`` rows (step) →
a shard of the store (write). Every stage module imports its input and output types from here,
so a stage depends on the records, never on the stage before it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FLAG_TRUNCATED", "FLAG_EMPTY", "FLAG_REPLACED", "KNOWN_FLAGS", "Doc", "TokenizedDoc",
           "EmbedOutput"]

# Row flags (the store's ``flags`` array; the store format documents the same bits).
FLAG_TRUNCATED = 1  # the text was cut at max_length
FLAG_EMPTY = 2  # the text had no tokens
FLAG_REPLACED = 4  # invalid UTF-8 bytes in the text were replaced
KNOWN_FLAGS = FLAG_TRUNCATED | FLAG_EMPTY | FLAG_REPLACED


@dataclass(frozen=True, slots=True)
class Doc:
    """One input document, as the reader yields it."""
    id: str
    text: str
    flags: int  # FLAG_REPLACED, FLAG_EMPTY
    source: str  # "FILE:LINE" (parquet: "FILE:ROW"), 1-based


@dataclass
class TokenizedDoc:
    """What the model sees of one text."""
    ids: np.ndarray      # int32 [n]
    pool_start: int      # tokens before this index are kept out of pooling
    flags: int           # FLAG_TRUNCATED / FLAG_EMPTY (reader flags are OR-ed in by the job)


@dataclass
class EmbedOutput:
    """Per-text results of the device step, in input order."""
    dense: np.ndarray          # float32 [N, D] (D = matryoshka_dim when set)
    token_ids: np.ndarray      # int32 [N, k], best first; -1 for empty texts
    token_weights: np.ndarray  # float32 [N, k]; 0 for empty texts
    lengths: np.ndarray        # int32 [N] tokens the model saw
    flags: np.ndarray          # uint8 [N] FLAG_* bits
