"""Moved to :mod:`keytok_jax.pipeline` (embedder, plan, step); the old names re-exported."""
from .pipeline.correction import SHIFT_FORMAT, Shift
from .pipeline.embedder import Embedder
from .pipeline.plan import seq_buckets
from .pipeline.step import RunStats
from .records import EmbedOutput
from .settings import EmbedSettings

__all__ = ["Embedder", "EmbedSettings", "EmbedOutput", "Shift", "SHIFT_FORMAT", "RunStats",
           "seq_buckets"]
