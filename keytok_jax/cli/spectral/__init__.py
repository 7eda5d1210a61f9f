"""``python -m keytok_jax.spectral``: the spectral analysis of embeddings and their aligned tokens
(arXiv 2406.17378, section 5), one module per subcommand over :mod:`keytok_jax.analysis`."""
from __future__ import annotations

import argparse
import json

from ...analysis.report import json_default
from ..common import new_parser, run_command
from . import components, contribution, controls, shift, variation

__all__ = ["build_parser", "main"]

DESCRIPTION = (
    "Spectral analysis of embeddings and their aligned tokens (arXiv 2406.17378).\n\n"
    "Embeddings come from a store written by `python -m keytok_jax.embed --dense` (--store) "
    "or from texts embedded on the fly (--texts with --model/--config/--pooling/--prompt; "
    "default: SmolLM2 with SGPT weighted-mean pooling and no prompt, the raw backbone as in the paper's "
    "GPT-Neo/SGPT analysis). Everything streams in "
    "batches of --batch-rows. Each subcommand writes JSON + CSV (tokens decoded) and PNG "
    "plots into --output.")
EPILOG = (
    "examples:\n"
    "  python -m keytok_jax.spectral components --texts wiki.txt --limit 10000 --output out/comp\n"
    "  python -m keytok_jax.spectral shift --texts STS.input.surprise.SMTnews.txt --min-score 4 "
    "--output out/shift\n"
    "  python -m keytok_jax.embed --input corpus.jsonl --output store --pooling mean --prompt none "
    "--shift out/shift/shift.json\n"
    "  python -m keytok_jax.spectral align --store store --output out/align --shift out/shift/shift.json\n"
    "  python -m keytok_jax.spectral controls --backbone-store B --embedder-store E --output out/controls")


def build_parser() -> argparse.ArgumentParser:
    p = new_parser("python -m keytok_jax.spectral", DESCRIPTION, epilog=EPILOG)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    components.add_parser(sub)
    variation.add_parser(sub)
    shift.add_parsers(sub)
    controls.add_parser(sub)
    contribution.add_parser(sub)
    return p


def _run(args: argparse.Namespace) -> None:
    """Run the subcommand and print its report, less the long lists."""
    report = args.func(args)
    brief = {k: v for k, v in report.items() if k not in ("examples", "components", "texts")}
    print(json.dumps(brief, indent=2, ensure_ascii=False, default=json_default)[:4000])


def main(argv=None) -> int:
    return run_command(build_parser(), argv, _run)
