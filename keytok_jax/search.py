"""``python -m keytok_jax.search``: search a store (see :mod:`keytok_jax.cli.search`). The
library lives in :mod:`keytok_jax.retrieval`; these names are kept here for existing imports."""
import sys

from .cli.search import build_parser, main
from .retrieval import (FUSIONS, INDEX_FORMAT, MODES, QUERY_WEIGHTS, RRF_K, DenseIndex,
                        QueryResult, Searcher, SparseIndex, bm25_idf, embedder_for_store, fuse,
                        read_query_file)

__all__ = ["FUSIONS", "INDEX_FORMAT", "MODES", "QUERY_WEIGHTS", "RRF_K", "DenseIndex",
           "QueryResult", "Searcher", "SparseIndex", "bm25_idf", "embedder_for_store", "fuse",
           "read_query_file", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
