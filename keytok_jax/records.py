"""The small records that pass one way through the embedding pipeline, and the row flags.

``Doc`` (read) → ``TokenizedDoc`` (tokenize) → ``Batch`` (plan) → ``EmbedOutput`` rows (step) →
a shard of the store (write). Every stage module imports its input and output types from here,
so a stage depends on the records, never on the stage before it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

__all__ = ["FLAG_TRUNCATED", "FLAG_EMPTY", "FLAG_REPLACED", "KNOWN_FLAGS", "Doc", "TokenizedDoc",
           "EmbedOutput", "ReadStats", "Batch"]

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
    literal: np.ndarray | None = None   # int32 distinct literal token ids of the text the model
                                        # saw (doc_tokens="literal"), else None


@dataclass
class EmbedOutput:
    """Per-text results of the device step, in input order."""
    dense: np.ndarray          # float32 [N, D] (D = matryoshka_dim when set)
    token_ids: np.ndarray      # int32 [N, k], best first; -1 for empty texts
    token_weights: np.ndarray  # float32 [N, k]; 0 for empty texts
    lengths: np.ndarray        # int32 [N] tokens the model saw
    flags: np.ndarray          # uint8 [N] FLAG_* bits
    pooled: np.ndarray | None = None   # float32 [N, hidden] before any correction, on request


@dataclass
class ReadStats:
    """Counters of one read of a corpus, updated in place by the reader (pass one as ``stats=``)."""
    docs: int = 0  # documents yielded
    empty: int = 0  # of which flagged FLAG_EMPTY
    replaced: int = 0  # of which flagged FLAG_REPLACED
    rejected: int = 0  # bad lines skipped with on_error="skip"
    lines: int = 0  # physical lines read, headers and blank lines included (parquet: rows)
    replacements: int = 0  # U+FFFD characters inserted for invalid bytes / lone surrogates


@dataclass(frozen=True)
class Batch:
    """One device batch of a window of tokenized texts, as the plan lays it out."""
    rows: list  # indices of the window's texts it holds, shortest first (a lock-step filler: none)
    seq: int  # padded length: one of the sequence buckets
    variant: int  # its row count is the token budget's rows / 4**variant (keytok_jax.pipeline.plan)


@dataclass
class Corpus:
    """The input as the corpus job reads it (the fit stage may take its first documents and put
    them back in front of ``docs``)."""
    docs: Iterator[Doc]
    stats: ReadStats
    total: int | None  # documents to embed: exact for valid input, an upper bound with rejected
    # lines, None when unknown (standard input)
