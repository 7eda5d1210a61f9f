"""``python -m keytok_jax.export``: a store's sparse vectors as an Anserini JsonVectorCollection
(see :mod:`keytok_jax.cli.export`). The library lives in :mod:`keytok_jax.retrieval`; these names
are kept here for existing imports."""
import sys

from .cli.export import build_parser, main
from .retrieval import (export_queries, export_store, key_ids, quantize, read_vectors, token_keys,
                        vector)

__all__ = ["export_queries", "export_store", "key_ids", "quantize", "read_vectors", "token_keys",
           "vector", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
