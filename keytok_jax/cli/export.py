"""``python -m keytok_jax.export``: a store's sparse vectors (and optionally queries' vectors) as
an Anserini JsonVectorCollection; prints the counts as JSON lines."""
from __future__ import annotations

import json

from .. import store as store_lib
from ..loading import load_tokenizer
from ..pipeline.preflight import check_output_file, check_readable_file
from ..retrieval import export_queries, export_store, queries_output_for
from ..retrieval.export import __doc__ as DESCRIPTION
from ..settings import build, resolve
from ..settings.search import ExportSettings
from .common import add_settings, new_parser, run_command

PROG = "python -m keytok_jax.export"


def build_parser():
    p = new_parser(PROG, DESCRIPTION)
    add_settings(p, [ExportSettings])
    return p


def _run(args) -> int:
    x = build(ExportSettings, resolve([ExportSettings], vars(args)))
    check_output_file("--output", x.output, parent_may_be_created=True)
    if x.queries:
        check_readable_file("--queries", x.queries)
        check_output_file("--queries-output", x.queries_output or queries_output_for(x.output),
                          parent_may_be_created=True)
    store = store_lib.open(x.store)
    tokenizer = load_tokenizer(store.settings["model"])
    counts = export_store(store, x.output, tokenizer, factor=x.factor)
    print(json.dumps({"output": x.output, **counts}))
    if x.queries:
        qout = x.queries_output or queries_output_for(x.output)
        n = export_queries(store, x.queries, qout, tokenizer, mode=x.query_mode, factor=x.factor)
        print(json.dumps({"queries_output": qout, "queries": n}))
    return 0


def main(argv=None) -> int:
    return run_command(build_parser(), argv, _run)
