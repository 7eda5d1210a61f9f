"""The embedding pipeline: read → tokenize → plan → step → write, over the records of
:mod:`keytok_jax.records`.

``read`` (formats in ``read_formats``) streams :class:`~keytok_jax.records.Doc`; ``tokenize`` makes
:class:`~keytok_jax.records.TokenizedDoc`; ``plan`` lays a window out as
:class:`~keytok_jax.records.Batch` es of a few fixed shapes; ``step`` is the jitted device program
(with ``correction``, the corpus correction and shift applied before the LM-head top-k);
``embedder`` holds tokenize → plan → step for one model (``encode``); ``job`` is the corpus run
into a store (``fitting`` fits the correction first), its shards given by ``schedule`` (or
``lockstep`` for a mesh spanning processes).
"""
from ..records import EmbedOutput
from ..settings import EmbedSettings
from .correction import SHIFT_FORMAT, CorrectionFit, Shift, model_hash
from .embedder import Embedder, model_identity
from .job import run
from .plan import pad_batch, seq_buckets
from .read import count_docs, detect_format, read_corpus
from .step import RunStats
from .tokenize import DocTokenizer

__all__ = ["Embedder", "EmbedSettings", "EmbedOutput", "Shift", "CorrectionFit", "SHIFT_FORMAT", "model_hash",
           "model_identity", "run", "pad_batch", "seq_buckets", "read_corpus", "count_docs",
           "detect_format", "RunStats", "DocTokenizer"]
