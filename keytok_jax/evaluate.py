"""``python -m keytok_jax.evaluate``: BEIR evaluation of a store's search modes (see
:mod:`keytok_jax.cli.evaluate`). The library lives in :mod:`keytok_jax.retrieval`; these names are
kept here for existing imports."""
import sys

from .cli.evaluate import build_parser, main
from .errors import DatasetError
from .retrieval import (ALL_MODES, LABELS, METRICS, bm25_run, evaluate, load_beir, markdown,
                        read_qrels, score)

__all__ = ["ALL_MODES", "LABELS", "METRICS", "DatasetError", "bm25_run", "evaluate", "load_beir",
           "markdown", "read_qrels", "score", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
