"""``python -m keytok_jax.finetune``: train a decoder backbone into a text embedder (SGPT-style).

InfoNCE over (anchor, positive[, hard negative]) examples with in-batch negatives; pooled with
the SGPT position-weighted mean (default) or the last token; LoRA (default), bias-only (BitFit) or
full fine-tuning with AdamW (optax). Training data: pair/triplet JSONL, NLI files (SentEval SNLI
folder or SimCSE csv) or a BEIR folder's train qrels (keytok_jax/train/data.py).

Checkpoints (orbax) go to ``OUTPUT/checkpoints`` every ``--save-every`` optimizer steps and at the
end; rerunning the same command resumes from the latest one at the same step, data position and
optimizer state (a rerun with different settings is refused, naming them). The result is exported
to ``OUTPUT/model``: a Hugging Face folder (model.safetensors with the adapters merged, config.json,
tokenizer) that keytok_jax and transformers both load, plus ``keytok.yaml``, the embedding preset it
was trained with::

    python -m keytok_jax.embed --config OUTPUT/model/keytok.yaml --input CORPUS --output STORE

Batches have a fixed number of examples and are padded to a multiple of 16 tokens (one compiled
program per length); the last incomplete batch of an epoch is dropped (its rows would otherwise be
missing negatives). With ``--accumulate N`` gradients are averaged over N micro-batches, but each
anchor's negatives are those of its own micro-batch.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..errors import PathError
from ..pipeline.preflight import check_output_dir, check_readable_file
from ..settings.train import FINETUNE_GROUPS
from ..train.loop import train
from .common import add_settings, new_parser, run_command

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Every flag with its default in the namespace (the command has no preset to fall back on)."""
    p = new_parser("python -m keytok_jax.finetune", __doc__)
    for title, classes in FINETUNE_GROUPS:
        add_settings(p.add_argument_group(title), classes, suppress=False)
    return p


def _finetune(args: argparse.Namespace) -> None:
    # Paths before the model loads.
    if not Path(args.data).exists():
        raise PathError(f"--data {args.data}: no such file or directory")
    if args.eval_sts:
        check_readable_file("--eval-sts", args.eval_sts)
    check_output_dir("--output", args.output)
    summary = train(vars(args))
    shown = {k: v for k, v in summary.items() if k not in ("final_params", "settings")}
    print(json.dumps(shown, indent=1, default=str))


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("keytok_jax").setLevel(logging.INFO)
    return run_command(build_parser(), argv, _finetune)
