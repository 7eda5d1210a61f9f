"""``python -m keytok_jax.search``: ranked document ids and scores per query, with the tokens
each document matched on, as text, JSONL or a TREC run file."""
from __future__ import annotations

import dataclasses
import json
import sys

from ..errors import SettingsError
from ..pipeline.preflight import check_output_file, check_readable_file
from ..retrieval import QueryResult, Searcher, read_query_file
from ..retrieval.searcher import __doc__ as MODES_DOC
from ..settings import build, resolve
from ..settings.search import QuerySettings, SearchSettings
from .common import add_settings, new_parser, run_command

PROG = "python -m keytok_jax.search"
DESCRIPTION = ("Search a store: ranked document ids, scores, and the tokens each document matched "
               "on.\n\nQuery modes:\n\n" + MODES_DOC.split("\n\n", 1)[1])


def build_parser():
    p = new_parser(PROG, DESCRIPTION)
    p.add_argument("--query", action="append", default=[], help="a query text; repeat for several")
    add_settings(p, [SearchSettings, QuerySettings])
    return p


def _queries(query_texts: list[str], queries_file: str | None) -> list[tuple[str, str]]:
    """``(id, text)``: the ``--query`` texts numbered from 1, then the file's queries."""
    queries = [(str(i + 1), q) for i, q in enumerate(query_texts)]
    if queries_file:
        queries += read_query_file(queries_file)
    if not queries:
        raise SettingsError("--query: no queries; pass --query TEXT or --queries FILE")
    return queries


def _text_block(searcher: Searcher, qid: str, text: str, res: QueryResult, matched,
                show_tokens: int) -> str:
    lines = [f"query {qid}: {text}\n"]
    if not text.strip():
        lines.append("  (empty query: no hits)\n")
    elif not res.hits:
        lines.append("  (no document shares a token with this query)\n")
    for rank, ((doc, s), row) in enumerate(zip(res.hits, res.rows.tolist()), 1):
        if res.vector is not None:
            why = ", ".join(repr(t) for t in matched[rank - 1][:show_tokens])
            why = f"matched {why}" if why else "matched nothing (fused from the dense list)"
        else:
            why = "doc tokens " + ", ".join(repr(t) for t, _ in searcher.doc_tokens(row, show_tokens))
        lines.append(f"  {rank:3d}. {doc}  {s:.4f}  {why}\n")
    return "".join(lines)


def write_results(out, searcher: Searcher, queries, results, s: SearchSettings) -> None:
    """Each query's hits in ``s.format`` (text, jsonl or trec)."""
    for (qid, text), res in zip(queries, results):
        if s.format == "trec":
            for rank, (doc, score) in enumerate(res.hits, 1):
                out.write(f"{qid} Q0 {doc} {rank} {score:.6f} keytok-{s.mode}\n")
            continue
        matched = [[t for t, _, _ in searcher.explain(res, r)] for r in range(len(res.hits))]
        if s.format == "jsonl":
            out.write(json.dumps({"query_id": qid, "query": text, "hits": [
                {"id": d, "score": score, "matched_tokens": m} for (d, score), m in zip(res.hits, matched)]},
                ensure_ascii=False) + "\n")
        else:
            out.write(_text_block(searcher, qid, text, res, matched, s.show_tokens))


def _run(args) -> int:
    opts = resolve([SearchSettings, QuerySettings], vars(args))
    s, q = build(SearchSettings, opts), build(QuerySettings, opts)
    if s.queries:
        check_readable_file("--queries", s.queries)
    if s.output:
        check_output_file("--output", s.output)
    queries = _queries(opts["query"], s.queries)
    searcher = Searcher(s.store, index_dir=s.index, rebuild=s.rebuild, **dataclasses.asdict(q))
    results = searcher.search([text for _, text in queries], s.mode, s.k)
    if not s.output:
        write_results(sys.stdout, searcher, queries, results, s)
        return 0
    with open(s.output, "w", encoding="utf-8") as out:
        write_results(out, searcher, queries, results, s)
    return 0


def main(argv=None) -> int:
    return run_command(build_parser(), argv, _run)
