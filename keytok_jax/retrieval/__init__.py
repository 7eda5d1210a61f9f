"""Retrieval over a store, one query from text to hits: ``queries`` (reading query files and BEIR
judgements) → ``searcher`` (query modes: the query as sparse and dense vectors) → ``sparse`` (the
inverted index of aligned tokens) and ``dense`` (cosine over the dense vectors) → ``fusion``
(``hybrid``); ``evaluate`` scores the modes on a BEIR dataset, ``export`` writes the sparse
vectors for Anserini/Pyserini. Defaults live in :mod:`keytok_jax.settings.search`."""
from ..settings.search import FUSIONS, MODES, QUERY_WEIGHTS, RRF_K, SPARSE_MODES
from .dense import DenseIndex
from .evaluate import ALL_MODES, LABELS, METRICS, bm25_run, evaluate, markdown, score
from .export import (export_queries, export_store, key_ids, quantize, queries_output_for,
                     read_vectors, token_keys, vector)
from .fusion import fuse
from .queries import load_beir, read_qrels, read_query_file
from .searcher import QueryResult, Searcher, embedder_for_store
from .sparse import INDEX_FORMAT, SparseIndex, bm25_idf, open_store

__all__ = ["FUSIONS", "MODES", "QUERY_WEIGHTS", "RRF_K", "SPARSE_MODES", "DenseIndex", "ALL_MODES",
           "LABELS", "METRICS", "bm25_run", "evaluate", "markdown", "score", "export_queries",
           "export_store", "key_ids", "quantize", "queries_output_for", "read_vectors",
           "token_keys", "vector", "fuse", "load_beir", "read_qrels", "read_query_file",
           "QueryResult", "Searcher", "embedder_for_store", "INDEX_FORMAT", "SparseIndex",
           "bm25_idf", "open_store"]
