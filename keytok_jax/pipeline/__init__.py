"""The embedding pipeline: read → tokenize → plan → step → write, over the records of
:mod:`keytok_jax.records`. TRANSITIONAL: re-exports from the old modules until they move here."""
from .correction import SHIFT_FORMAT, Shift, model_hash
from ..embedder import EmbedOutput, EmbedSettings, Embedder  # noqa: E402  (moves here)
