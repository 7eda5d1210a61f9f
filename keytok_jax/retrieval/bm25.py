"""BM25 over a store's own documents (``bm25s``: Lucene-style BM25, k1=1.5, b=0.75, English stop
words and Snowball stemming): the baseline of ``evaluate`` and the lexical side of the
``bm25-hybrid`` query mode.

The texts are read from the corpus the store was embedded from (its recorded input, format and
fields; or another path holding it, e.g. the BEIR folder given to ``evaluate``), keeping the
documents whose ids are in the store, so BM25 ranks exactly the store's documents and answers in
store rows.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ..pipeline import read_corpus

__all__ = ["BM25Index", "corpus_texts"]

K1, B = 1.5, 0.75
logging.getLogger("bm25s").setLevel(logging.WARNING)   # it logs every index build at DEBUG


def corpus_texts(source, keep, *, format: str = "auto", id_field: str = "_id",
                 text_fields=("title", "text")) -> tuple[list[str], list[str]]:
    """Ids and texts of the corpus documents whose id is in ``keep`` (all when None), in corpus
    order; refuses a corpus holding none of them."""
    ids, texts = [], []
    for doc in read_corpus(source, format=format, id_field=id_field, text_fields=tuple(text_fields)):
        if keep is None or doc.id in keep:
            ids.append(doc.id)
            texts.append(doc.text)
    if not ids:
        raise DatasetError(f"{source}: none of the store's documents is in the corpus "
                           "(is it the corpus the store was embedded from?)")
    return ids, texts


def _store_texts(store, corpus) -> tuple[np.ndarray, list[str]]:
    """Store rows and texts of the store's documents found in ``corpus`` (default: its input)."""
    s = store.settings
    source = corpus if corpus is not None else s.get("input")
    if source in (None, "-") or not Path(source).exists():
        raise DatasetError(f"{store.path}: BM25 needs the corpus the store was embedded from "
                           f"({source!r} cannot be read; pass its path)")
    fmt = "beir" if corpus is not None and Path(corpus).is_dir() else s.get("format", "auto")
    row_of = {doc_id: r for r, doc_id in enumerate(store.ids)}
    ids, texts = corpus_texts(source, row_of, format=fmt, id_field=s.get("id_field", "_id"),
                              text_fields=s.get("text_fields", ("title", "text")))
    return np.asarray([row_of[i] for i in ids], np.int64), texts


class BM25Index:
    """A bm25s index of texts that are store ``rows``; ``search`` gives ``(rows, scores)`` per
    query, best first (documents with score 0, sharing no term, left out)."""

    def __init__(self, rows: np.ndarray, texts: list[str]):
        import bm25s
        import Stemmer

        self.rows = np.asarray(rows, np.int64)
        self._stemmer = Stemmer.Stemmer("english")
        t0 = time.perf_counter()
        self._index = bm25s.BM25(k1=K1, b=B)
        self._index.index(self._tokenize(texts), show_progress=False)
        self.index_seconds = time.perf_counter() - t0

    @classmethod
    def for_store(cls, store, corpus=None) -> "BM25Index":
        return cls(*_store_texts(store, corpus))

    def __len__(self) -> int:
        return len(self.rows)

    def _tokenize(self, texts):
        import bm25s

        return bm25s.tokenize(list(texts), stopwords="en", stemmer=self._stemmer, show_progress=False)

    def search(self, queries, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        found, scores = self._index.retrieve(self._tokenize(queries), k=min(k, len(self.rows)),
                                             show_progress=False, n_threads=1)
        out = []
        for f, s in zip(found, scores):
            keep = s > 0
            out.append((self.rows[f[keep]], s[keep].astype(np.float32)))
        return out
