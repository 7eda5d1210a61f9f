"""Analysis of embeddings and their aligned tokens ("A Text is Worth Several Tokens", arXiv
2406.17378, section 5), read in this order:

- :mod:`.texts` reads the texts (the embed job's formats plus SentEval / STS-B pairs);
- :mod:`.source` streams batches of pooled vectors from a store or from texts embedded on the fly;
- :mod:`.components` (in memory) and :mod:`.moments` (streaming) give the principal components;
- :mod:`.shift` holds the paper's analyses of the first component (variation, shift, contribution);
- :mod:`.alignment` the paper's alignment metrics (hit@k, local, global);
- :mod:`.controls` the controls for the first-component finding (other directions, amounts, the
  reverse shift) and the content-token metrics;
- :mod:`.sts` the STS correlation of cosine similarity with gold scores;
- :mod:`.report` and :mod:`.plots` write what the commands (``keytok_jax.cli.spectral``) show.
"""
from .alignment import AlignmentAccumulator, alignment_metrics, evaluate_alignment, text_token_lists
from .components import Components, batched_svd, power_iteration, power_iteration_data, svd_components
from .moments import StreamingMoments
from .report import TokenDecoder
from .shift import contribution, make_shift, shift_lambda, top_tokens, variation
from .source import Batch, Source, stream_components
from .sts import evaluate_sts, read_sts_pairs
from .texts import read_texts

__all__ = ["AlignmentAccumulator", "Batch", "Components", "Source", "StreamingMoments",
           "TokenDecoder", "alignment_metrics", "batched_svd", "contribution", "evaluate_alignment",
           "evaluate_sts", "make_shift", "power_iteration", "power_iteration_data", "read_sts_pairs",
           "read_texts", "shift_lambda", "stream_components", "svd_components", "text_token_lists",
           "top_tokens", "variation"]
