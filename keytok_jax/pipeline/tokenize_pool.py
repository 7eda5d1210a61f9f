"""Tokenizing ahead of the device: a shard's texts become :class:`TokenizedDoc` in the background.

``workers=0`` tokenizes in one thread of this process (the tokenizer's batch call already runs in
Rust threads; what stays in Python is building each row and its literal tokens). ``workers=N``
splits each shard over N worker processes, each holding a copy of the job's
:class:`~keytok_jax.pipeline.tokenize.DocTokenizer` (started with ``spawn``: a forked copy of a
process running XLA threads may deadlock), so the host keeps up with a fast accelerator. The
result is the same either way: the rows come back in input order, the reader's flags OR-ed in.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor

from ..records import Doc, TokenizedDoc
from .tokenize import DocTokenizer

__all__ = ["TokenizePool", "default_workers"]

_WORKER_TOKENIZER: DocTokenizer | None = None


def default_workers() -> int:
    """A quarter of the cores, at most 8: none on a 2-core machine, where the device is the CPU."""
    return min(8, (os.cpu_count() or 1) // 4)


def _init_worker(tokenizer: DocTokenizer) -> None:
    global _WORKER_TOKENIZER
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")   # the pool is the parallelism
    _WORKER_TOKENIZER = tokenizer


def _tokenize_in_worker(texts: list[str]) -> list[TokenizedDoc]:
    return _WORKER_TOKENIZER(texts)


class TokenizePool:
    """``submit(docs)`` → a Future of their TokenizedDocs; one shard at a time, in order."""

    def __init__(self, tokenizer: DocTokenizer, workers: int = 0):
        self.tokenizer, self.workers = tokenizer, workers
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="tokenize")
        self._procs = (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                           initializer=_init_worker, initargs=(tokenizer,))
                       if workers > 0 else None)

    def start(self) -> None:
        """Start every worker now (they start on first use otherwise)."""
        if self._procs is not None:
            list(self._procs.map(abs, range(self.workers)))

    def submit(self, docs: list[Doc]) -> Future:
        return self._thread.submit(self._tokenize, docs)

    def _tokenize(self, docs: list[Doc]) -> list[TokenizedDoc]:
        texts = [d.text for d in docs]
        if self._procs is None or len(texts) < 2 * self.workers:
            tokenized = self.tokenizer(texts)
        else:
            step = -(-len(texts) // (4 * self.workers))   # a few chunks per worker, for balance
            parts = self._procs.map(_tokenize_in_worker, [texts[i: i + step] for i in range(0, len(texts), step)])
            tokenized = [t for part in parts for t in part]
        for t, d in zip(tokenized, docs):
            t.flags |= d.flags
        return tokenized

    def close(self) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)
        if self._procs is not None:
            self._procs.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
