"""Moved to :mod:`keytok_jax.pipeline.read`; the old names re-exported."""
from .errors import CorpusError
from .pipeline.read import FORMATS, count_docs, detect_format, read_corpus
from .records import Doc, ReadStats

__all__ = ["Doc", "ReadStats", "CorpusError", "FORMATS", "read_corpus", "count_docs",
           "detect_format"]
