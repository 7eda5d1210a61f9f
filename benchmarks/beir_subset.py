"""A BEIR sub-corpus: every document judged in a split plus the first N others, in corpus order,
with the queries and that split's qrels (shared by reproduce.py and sparse_quality.py)."""
from __future__ import annotations

import json
from pathlib import Path


def judged_subcorpus(dataset: Path, dest: Path, distractors: int, split: str = "test") -> Path:
    """Write the sub-corpus of ``dataset`` to ``dest`` (a BEIR folder) and return ``dest``."""
    (dest / "qrels").mkdir(parents=True, exist_ok=True)
    qrels = (dataset / "qrels" / f"{split}.tsv").read_text()
    judged = {line.split("\t")[1] for line in qrels.splitlines()[1:] if line.strip()}
    kept, extra = [], 0
    for line in (dataset / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        doc_id = json.loads(line)["_id"]
        if doc_id in judged:
            kept.append(line)
        elif extra < distractors:
            kept.append(line)
            extra += 1
    (dest / "corpus.jsonl").write_text("\n".join(kept) + "\n", encoding="utf-8")
    (dest / "queries.jsonl").write_text((dataset / "queries.jsonl").read_text(encoding="utf-8"),
                                        encoding="utf-8")
    (dest / "qrels" / f"{split}.tsv").write_text(qrels)
    return dest
