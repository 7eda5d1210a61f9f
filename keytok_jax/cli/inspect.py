"""``python -m keytok_jax TEXT ...``: load a model and show each text's aligned tokens.

Mean-pools the final hidden states of each text, removes the component shared by the texts given
(their mean; the raw backbone puts frequent tokens such as "," and " the" on it) when more than one
text is given, and prints the top-k tokens of the LM-head projection.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from ..loading import DEFAULT_MODEL, load_model
from ..model import ATTENTION_MODES
from .common import new_parser, run_command

__all__ = ["build_parser", "inspect", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = new_parser("python -m keytok_jax", __doc__)
    p.add_argument("texts", nargs="+", help="texts to inspect")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="alias, Hugging Face folder, .gguf file or hub id (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="parameter dtype")
    p.add_argument("--attention", default="causal", choices=list(ATTENTION_MODES),
                   help="attention mask used by every layer (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=10, help="tokens to show per text (default: %(default)s)")
    p.add_argument("--no-center", action="store_true",
                   help="do not subtract the mean of the texts' pooled states before projecting")
    return p


def inspect(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    model = load_model(args.model, dtype=args.dtype)
    print(f"loaded {model.source} ({model.config.model_type}, {model.config.num_layers} layers, "
          f"dim {model.config.output_dim}) in {time.perf_counter() - t0:.1f}s"
          f"{' from cache' if model.load_info['from_cache'] else ''}")
    ids, mask = model.tokenize(args.texts)
    hidden = np.asarray(model.hidden_states(ids, mask, attention=args.attention), np.float32)
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    if len(args.texts) > 1 and not args.no_center:
        pooled = pooled - pooled.mean(0, keepdims=True)
    logits = np.asarray(model.logits(pooled))
    for text, row in zip(args.texts, logits):
        top = np.argsort(-row, kind="stable")[: args.top_k]
        tokens = ", ".join(repr(model.tokenizer.decode([int(t)])) for t in top)
        print(f"{text[:60]!r}: {tokens}")


def main(argv=None) -> int:
    return run_command(build_parser(), argv, inspect)
