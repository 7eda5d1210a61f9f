"""``python -m keytok_jax.evaluate``: score a store's search modes and a BM25 baseline on a BEIR
dataset; prints a markdown table, writes the report as JSON."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from ..pipeline.preflight import check_output_file
from ..retrieval import ALL_MODES, evaluate, markdown
from ..retrieval.evaluate import __doc__ as DESCRIPTION
from ..settings import build, resolve
from ..settings.search import EvaluateSettings, QuerySettings
from .common import add_settings, new_parser, run_command

PROG = "python -m keytok_jax.evaluate"


def build_parser():
    p = new_parser(PROG, DESCRIPTION)
    p.add_argument("--mode", action="append", choices=ALL_MODES + ("all",),
                   help="mode to evaluate; repeat for several (default: all). bm25 is the baseline")
    add_settings(p, [EvaluateSettings, QuerySettings])
    return p


def _run(args) -> int:
    opts = resolve([EvaluateSettings, QuerySettings], vars(args))
    e, q = build(EvaluateSettings, opts), build(QuerySettings, opts)
    for flag, path in (("--output", e.output), ("--markdown", e.markdown)):
        if path:
            check_output_file(flag, path)
    modes = opts["mode"] or ["all"]
    if "all" in modes:
        modes = list(ALL_MODES)
    report = evaluate(e.store, e.dataset, modes, split=e.split, k=e.k, warmup=e.warmup,
                      progress=lambda m: print(m, file=sys.stderr), **dataclasses.asdict(q))
    table = markdown(report)
    if e.output:
        Path(e.output).write_text(json.dumps(report, indent=1))
    if e.markdown:
        Path(e.markdown).write_text(table + "\n")
    print(table)
    return 0


def main(argv=None) -> int:
    return run_command(build_parser(), argv, _run)
