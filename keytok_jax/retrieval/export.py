"""A store's sparse vectors as an Anserini JsonVectorCollection.

One JSON object per document, ``{"id": ..., "contents": "", "vector": {token: weight}}``, the
format Anserini indexes into a Lucene impact index (``-collection JsonVectorCollection -impact
-pretokenized``) and Pyserini searches with ``LuceneImpactSearcher``. Lucene impacts are positive
integers, so weights are quantized: ``round(weight * factor)`` (``--factor``, default 100, the
factor Pyserini's SPLADE examples use); entries that round to 0 or below are left out and counted.
A factor that is not a positive finite number raises :class:`~keytok_jax.errors.SettingsError`,
and so does one at which every stored weight rounds to 0 (every vector would be empty). The file
is written under a temporary name beside ``output`` and renamed when complete, so an error (a full
disk, Ctrl-C, a refused factor) leaves no partial file.

Token keys are the tokenizer's vocabulary strings (``convert_ids_to_tokens``: ``Ġword`` for
byte-level BPE, ``▁word`` for SentencePiece), which are unique per id and hold no whitespace for
the pretokenized analyzer to split on. A vocabulary string that is empty or contains whitespace
is written as ``[tok:ID]``. Queries can be written in the same vector format (tokens mode, or any
mode of :class:`~keytok_jax.retrieval.Searcher` that makes a sparse vector).
"""
from __future__ import annotations

import gzip
import io
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TextIO

import numpy as np

from ..errors import PathError, SettingsError
from ..loading import load_tokenizer
from ..pipeline.preflight import check_output_file
from ..settings.search import ExportSettings, check_factor
from ..store import fileio
from .queries import read_query_file
from .searcher import Searcher
from .sparse import open_store

__all__ = ["token_keys", "key_ids", "quantize", "vector", "export_store", "export_queries",
           "read_vectors", "queries_output_for"]

_X = ExportSettings()


def token_keys(tokenizer, vocab_size: int) -> list[str]:
    """The key each token id is written under (see the module doc)."""
    strings = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
    return [s if s and not any(ch.isspace() for ch in s) else f"[tok:{i}]"
            for i, s in enumerate(strings)]


def key_ids(tokenizer, keys) -> list[int]:
    """Inverse of :func:`token_keys` (for reading an export back)."""
    out = []
    for k in keys:
        if k.startswith("[tok:") and k.endswith("]"):
            out.append(int(k[5:-1]))
        else:
            i = tokenizer.convert_tokens_to_ids(k)
            if i is None:
                raise KeyError(f"{k!r} is not in the tokenizer's vocabulary")
            out.append(int(i))
    return out


def quantize(weights: np.ndarray, factor: float) -> np.ndarray:
    return np.rint(np.asarray(weights, np.float64) * factor).astype(np.int64)


def vector(ids, weights, keys: list[str], factor: float) -> tuple[dict[str, int], int]:
    """``({key: impact}, dropped)`` for one row of ids / weights."""
    q = quantize(weights, factor)
    vec, dropped = {}, 0
    for i, w in zip(np.asarray(ids).tolist(), q.tolist()):
        if i < 0:
            continue
        if w <= 0:
            dropped += 1
            continue
        vec[keys[i]] = vec.get(keys[i], 0) + w
    return vec, dropped


@contextmanager
def _open_out(path, flag: str = "") -> Iterator[TextIO]:
    """A text file that appears at ``path`` (gzip-compressed for ``.gz``) only when the block
    ends without an error: written to a temporary file beside it, renamed at the end, removed on
    an error (a full disk, an interrupt, a refused factor), so ``path`` is never half written."""
    check_output_file(flag, path, parent_may_be_created=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = fileio.tmp_path(path)
    try:
        raw = open(tmp, "wb")
    except OSError as e:
        raise PathError(f"{flag + ' ' if flag else ''}{path}: cannot write in {path.parent}: "
                        f"{e.strerror or e}") from None
    try:
        with raw:
            binary = (gzip.GzipFile(filename=path.name[:-3], mode="wb", fileobj=raw)
                      if path.suffix == ".gz" else raw)
            with io.TextIOWrapper(binary, encoding="utf-8", newline="") as f:
                yield f
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _line(doc_id: str, vec: dict[str, int]) -> str:
    return json.dumps({"id": doc_id, "contents": "", "vector": vec}, ensure_ascii=False) + "\n"


def export_store(store, output, tokenizer=None, *, factor: float = _X.factor,
                 batch: int = 4096) -> dict:
    """Write ``output`` (``.jsonl`` or ``.jsonl.gz``); returns counts. A factor that is not
    positive and finite, or one at which every stored weight rounds to 0, raises
    :class:`~keytok_jax.errors.SettingsError` and writes nothing."""
    check_factor(factor)
    store = open_store(store)
    if tokenizer is None:
        tokenizer = load_tokenizer(store.settings["model"])
    keys = token_keys(tokenizer, store.vocab_size)
    ids = store.ids
    docs = dropped = empty = 0
    with _open_out(output) as f:
        for start in range(0, len(store), batch):
            stop = min(start + batch, len(store))
            tok = store.token_ids[start:stop].read().result()
            w = store.token_weights[start:stop].read().result()
            for j in range(stop - start):
                vec, d = vector(tok[j], w[j], keys, factor)
                dropped += d
                empty += not vec
                f.write(_line(ids[start + j], vec))
                docs += 1
        if docs and empty == docs and dropped:
            raise SettingsError(f"--factor {factor}: every document's weights round to 0 "
                                f"({dropped} entries dropped), nothing written; use a larger "
                                "factor")
    return {"docs": docs, "dropped_entries": dropped, "empty_vectors": empty, "factor": factor}


def queries_output_for(output) -> str:
    """Where query vectors go when no path is given: beside the documents file."""
    return str(Path(output).parent / "queries.jsonl")


def export_queries(store, queries_file, output, tokenizer=None, *, mode: str = _X.query_mode,
                   factor: float = _X.factor) -> int:
    """Write the query vectors of ``queries_file`` (any :func:`read_query_file` format) made by
    a sparse ``mode``, in the documents' vector format; returns how many."""
    check_factor(factor)
    store = open_store(store)
    if tokenizer is None:
        tokenizer = load_tokenizer(store.settings["model"])
    queries = read_query_file(queries_file)
    vectors = Searcher(store, tokenizer=tokenizer).query_vectors([q for _, q in queries], mode)
    keys = token_keys(tokenizer, store.vocab_size)
    with _open_out(output) as f:
        for i, (qid, _) in enumerate(queries):
            row = vectors[[i]]
            f.write(_line(qid, vector(row.indices, row.data, keys, factor)[0]))
    return len(queries)


def read_vectors(path, tokenizer, vocab_size: int, factor: float = _X.factor):
    """Read an export back: ``(ids, [token ids], [weights / factor])`` per line."""
    check_factor(factor)
    opener = gzip.open if str(path).endswith(".gz") else open
    out_ids, out_tok, out_w = [], [], []
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                vec = row["vector"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: not a JsonVectorCollection line ({e})") from None
            toks = key_ids(tokenizer, vec.keys())
            if any(not 0 <= t < vocab_size for t in toks):
                raise ValueError(f"{path}:{n}: token outside the vocabulary")
            out_ids.append(str(row["id"]))
            out_tok.append(toks)
            out_w.append([v / factor for v in vec.values()])
    return out_ids, out_tok, out_w
