"""Reading queries and relevance judgements: query files for search and export (BEIR
``queries.jsonl``, ``id<TAB>text`` TSV, plain text) and a BEIR dataset's judged queries."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import DatasetError
from ..settings.search import EvaluateSettings

__all__ = ["read_query_file", "read_qrels", "load_beir"]


def _jsonl_query(line: str, where: str) -> tuple[str, str]:
    try:
        row = json.loads(line)
        return str(row["_id"]), str(row["text"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DatasetError(f"{where}: not a query line with _id and text ({type(e).__name__}: {e})") from None


def read_query_file(path) -> list[tuple[str, str]]:
    """``(id, text)`` pairs from a BEIR ``queries.jsonl`` (``_id``/``text``), a TSV
    (``id<TAB>text``) or a plain text file (one query per line, id = line number)."""
    p = Path(path)
    out = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if p.suffix in (".jsonl", ".json"):
                out.append(_jsonl_query(line, f"{p}:{n}"))
            elif p.suffix == ".tsv":
                qid, sep, text = line.partition("\t")
                if not sep:
                    raise DatasetError(f"{p}:{n}: expected 'id<TAB>text'")
                out.append((qid, text))
            else:
                out.append((str(n), line))
    return out


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """BEIR ``qrels/SPLIT.tsv``: ``query-id  corpus-id  score`` (header optional)."""
    out: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if n == 1 and parts[0] == "query-id" or not line.strip():
                continue
            try:
                qid, did, score = parts
                out.setdefault(qid, {})[did] = int(score)
            except ValueError:
                raise DatasetError(f"{path}:{n}: expected 'query-id<TAB>corpus-id<TAB>score', "
                                   f"got {line.rstrip()!r}") from None
    return out


def load_beir(dataset, split: str = EvaluateSettings().split
              ) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """Queries that have judgements in ``split``, and the judgements."""
    d = Path(dataset)
    qrels_path = d / "qrels" / f"{split}.tsv"
    for p in (d / "queries.jsonl", qrels_path):
        if not p.exists():
            raise DatasetError(f"{p} not found ({d} is not a BEIR dataset with a {split!r} split)")
    queries = dict(read_query_file(d / "queries.jsonl"))
    qrels = read_qrels(qrels_path)
    missing = sorted(set(qrels) - set(queries))
    if missing:
        raise DatasetError(f"{qrels_path}: {len(missing)} judged queries are not in queries.jsonl "
                           f"(first: {missing[:5]})")
    return {q: queries[q] for q in qrels}, qrels
