"""Moved: templates to :mod:`keytok_jax.settings`, tokenization to
:mod:`keytok_jax.pipeline.tokenize`, ``pad_batch`` to :mod:`keytok_jax.pipeline.plan`; the old
names re-exported."""
from .pipeline.plan import pad_batch
from .pipeline.tokenize import DocTokenizer
from .records import TokenizedDoc
from .settings import INSTRUCTION_FORMATS, PROMPTS, Template

__all__ = ["PROMPTS", "INSTRUCTION_FORMATS", "Template", "TokenizedDoc", "DocTokenizer", "pad_batch"]
