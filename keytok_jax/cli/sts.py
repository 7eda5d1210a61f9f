"""``python -m keytok_jax.sts``: semantic textual similarity (Spearman of cosine vs gold scores).

Files: STS-B csv (``sts-{train,dev,test}.csv``: score in the 5th column, sentences in the 6th and
7th) or SentEval ``STS.input.*.txt`` with its ``STS.gs.*.txt`` (pairs without a gold score are
skipped, as SentEval does). Reported as in SentEval / MTEB: Spearman and Pearson correlation x100
of the cosine similarity of the two dense vectors with the gold score.

    python -m keytok_jax.sts --config configs/smollm2.yaml ../shared/data/sts/STSBenchmark/sts-test.csv
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..analysis.sts import evaluate_sts
from ..model import ATTENTION_MODES
from ..pipeline import Embedder
from ..pipeline.preflight import check_output_file, check_readable_file
from ..pooling import POOLING_METHODS
from ..settings.analysis import sts_embedding
from ..settings.core import defaults
from ..settings.embed import JOB_PRESET, EmbedSettings
from .common import new_parser, run_command

__all__ = ["build_parser", "main", "run"]

FLAGS = ("model", "pooling", "prompt", "attention", "max_length")


def build_parser() -> argparse.ArgumentParser:
    library = defaults(EmbedSettings)
    p = new_parser("python -m keytok_jax.sts", __doc__)
    p.add_argument("files", nargs="+", help="STS-B csv files or SentEval STS.input.*.txt files")
    p.add_argument("--config", help="YAML embedding preset (configs/*.yaml, or a fine-tuned model's "
                                    "keytok.yaml); the flags below override it")
    p.add_argument("--model", help="alias, Hugging Face folder, .gguf file or hub id "
                                   f"(default: {JOB_PRESET['model']})")
    p.add_argument("--pooling", choices=list(POOLING_METHODS),
                   help=f"pooling (default: {JOB_PRESET['pooling']})")
    p.add_argument("--prompt", help="prompt template with {text}, or none / prompteol "
                                    f"(default: {JOB_PRESET['prompt']})")
    p.add_argument("--attention", choices=list(ATTENTION_MODES),
                   help=f"attention (default: {library['attention']})")
    p.add_argument("--max-length", type=int,
                   help=f"max tokens per sentence (default: {library['max_length']})")
    p.add_argument("--cleanup", action="store_true",
                   help="remove ' .' and ' ?' from SentEval sentences (the paper's STS reader)")
    p.add_argument("--output", help="also write the results as JSON here")
    return p


def run(args: argparse.Namespace) -> None:
    for f in args.files:
        check_readable_file("", f)
    if args.output:
        check_output_file("--output", args.output)
    model, settings = sts_embedding({k: getattr(args, k) for k in FLAGS}, args.config)
    embedder = Embedder.from_pretrained(model, **settings)
    results = [evaluate_sts(embedder, f, args.cleanup) for f in args.files]
    print("| file | pairs | Spearman | Pearson |\n|---|---|---|---|")
    for r in results:
        print(f"| {Path(r['file']).name} | {r['pairs']} | {r['spearman']:.2f} | {r['pearson']:.2f} |")
    if args.output:
        Path(args.output).write_text(json.dumps({"model": model, "settings": settings,
                                                 "results": results}, indent=1))


def main(argv=None) -> int:
    return run_command(build_parser(), argv, run)
