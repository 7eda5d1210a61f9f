"""``python -m keytok_jax.spectral``: see :mod:`keytok_jax.cli.spectral` (the five subcommands)
and :mod:`keytok_jax.analysis` (components, shift, alignment metrics, texts, sources), whose
public names are re-exported here."""
from __future__ import annotations

import sys

from .analysis import (AlignmentAccumulator, Batch, Components, Source, StreamingMoments,
                       TokenDecoder, alignment_metrics, batched_svd, contribution, make_shift,
                       power_iteration, power_iteration_data, read_texts, shift_lambda,
                       svd_components, text_token_lists, top_tokens, variation)
from .cli.spectral import main
from .pipeline import model_hash
from .settings.analysis import PRECISIONS

__all__ = [
    "PRECISIONS", "AlignmentAccumulator", "Batch", "Components", "Source", "StreamingMoments",
    "TokenDecoder", "alignment_metrics", "batched_svd", "contribution", "main", "make_shift",
    "model_hash", "power_iteration", "power_iteration_data", "read_texts", "shift_lambda",
    "svd_components", "text_token_lists", "top_tokens", "variation",
]

if __name__ == "__main__":
    sys.exit(main())
