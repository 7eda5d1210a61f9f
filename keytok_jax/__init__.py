"""keytok_jax: batch text embeddings and their aligned key tokens from decoder LLMs, in JAX."""
from .loading import DEFAULT_MODEL, WeightError, load_model
from .model import KeytokModel
from .models import UnsupportedConfigError
from .pipeline import CorrectionFit, EmbedOutput, EmbedSettings, Embedder, Shift

__version__ = "0.1.0"

__all__ = ["load_model", "KeytokModel", "Embedder", "EmbedSettings", "EmbedOutput", "Shift", "CorrectionFit",
           "DEFAULT_MODEL", "WeightError", "UnsupportedConfigError"]
