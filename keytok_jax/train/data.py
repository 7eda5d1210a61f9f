"""Training examples ``(anchor, positive, negative | None)`` from the formats users have.

- **pairs / triplets JSONL**: one object per line with ``anchor`` and ``positive`` strings and an
  optional ``negative`` (a hard negative). Malformed lines raise :class:`~keytok_jax.errors.CorpusError`
  naming ``FILE:LINE``.
- **NLI**: SentEval's SNLI layout (``s1.SPLIT``, ``s2.SPLIT``, ``labels.SPLIT``: premise,
  hypothesis, label per line) or SimCSE's ``nli_for_simcse.csv`` (``sent0,sent1,hard_neg``). A
  premise with an *entailment* hypothesis gives one example per entailment, positive = that
  hypothesis, hard negative = one of the premise's *contradiction* hypotheses (cycled; None if it
  has none). Neutral pairs are not used (SimCSE's recipe).
- **BEIR**: ``queries.jsonl`` + ``corpus.jsonl`` + ``qrels/SPLIT.tsv``: one example per judged
  (query, relevant document) pair, document text = title + text; no hard negative.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import CorpusError, SettingsError
from ..pipeline import read_corpus
from ..retrieval.queries import load_beir
from ..settings.train import TRAIN_DATA_FORMATS


@dataclass(frozen=True, slots=True)
class Example:
    anchor: str
    positive: str
    negative: str | None = None


def read_jsonl(path) -> list[Example]:
    path = Path(path)
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise CorpusError(f"{path}:{n}: malformed JSON: {e}") from None
            if not isinstance(row, dict):
                raise CorpusError(f"{path}:{n}: not a JSON object (a {type(row).__name__})")
            for key in ("anchor", "positive"):
                if not isinstance(row.get(key), str) or not row[key].strip():
                    raise CorpusError(f"{path}:{n}: field {key!r} must be a non-empty string")
            negative = row.get("negative")
            if negative is not None and (not isinstance(negative, str) or not negative.strip()):
                raise CorpusError(f"{path}:{n}: field 'negative' must be a non-empty string when present")
            out.append(Example(row["anchor"], row["positive"], negative))
    if not out:
        raise CorpusError(f"{path}: no examples")
    return out


def _nli_examples(rows, where: str) -> list[Example]:
    """rows: (premise, hypothesis, label) in file order → examples grouped by premise."""
    by_premise: dict[str, dict[str, list[str]]] = {}
    for premise, hypothesis, label in rows:
        by_premise.setdefault(premise, {}).setdefault(label, []).append(hypothesis)
    out = []
    for premise, labels in by_premise.items():
        contradictions = labels.get("contradiction", [])
        for i, positive in enumerate(labels.get("entailment", [])):
            negative = contradictions[i % len(contradictions)] if contradictions else None
            out.append(Example(premise, positive, negative))
    if not out:
        raise CorpusError(f"{where}: no premise with an entailment hypothesis")
    return out


def read_nli(path, splits: tuple[str, ...] | None = None) -> list[Example]:
    """A SentEval SNLI folder (every split present, or ``splits``) or a SimCSE NLI csv."""
    path = Path(path)
    if path.is_file():
        out = []
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if not {"sent0", "sent1"} <= set(reader.fieldnames or ()):
                raise CorpusError(f"{path}:1: expected a SimCSE NLI csv header with sent0,sent1[,hard_neg]")
            for n, row in enumerate(reader, 2):
                if not row["sent0"] or not row["sent1"]:
                    raise CorpusError(f"{path}:{n}: empty sent0 or sent1")
                out.append(Example(row["sent0"], row["sent1"], row.get("hard_neg") or None))
        return out
    found = sorted(p.name.split(".", 1)[1] for p in path.glob("labels.*"))
    splits = tuple(splits) if splits else tuple(found)
    if not splits:
        raise CorpusError(f"{path}: no labels.SPLIT file (expected SentEval's s1/s2/labels layout)")
    rows = []
    for split in splits:
        files = [path / f"{name}.{split}" for name in ("s1", "s2", "labels")]
        for f in files:
            if not f.exists():
                raise CorpusError(f"{f}: missing (SentEval NLI split {split!r} needs s1, s2 and labels)")
        columns = [f.read_text(encoding="utf-8").splitlines() for f in files]
        if len({len(c) for c in columns}) != 1:
            raise CorpusError(f"{path}: s1/s2/labels.{split} have different line counts "
                              f"({', '.join(str(len(c)) for c in columns)})")
        for n, (s1, s2, label) in enumerate(zip(*columns), 1):
            label = label.strip()
            if label not in ("entailment", "neutral", "contradiction"):
                raise CorpusError(f"{files[2]}:{n}: unknown label {label!r}")
            rows.append((s1.strip(), s2.strip(), label))
    return _nli_examples(rows, str(path))


def read_beir(path, split: str = "train") -> list[Example]:
    queries, qrels = load_beir(path, split)
    wanted = {d for judged in qrels.values() for d, s in judged.items() if s > 0}
    docs = {doc.id: doc.text for doc in read_corpus(path, format="beir") if doc.id in wanted}
    missing = sorted(wanted - set(docs))
    if missing:
        raise CorpusError(f"{path}/qrels/{split}.tsv: {len(missing)} judged documents are not in the "
                          f"corpus (first: {missing[:5]})")
    return [Example(queries[q], docs[d]) for q, judged in qrels.items()
            for d, s in sorted(judged.items()) if s > 0]


def detect(path) -> str:
    path = Path(path)
    if path.is_dir():
        if (path / "corpus.jsonl").exists() and (path / "qrels").is_dir():
            return "beir"
        if any(path.glob("labels.*")):
            return "nli"
    elif path.suffix == ".csv":
        return "nli"
    elif path.suffix in (".jsonl", ".json"):
        return "jsonl"
    raise CorpusError(f"{path}: cannot tell the training data format; pass --data-format "
                      f"(jsonl, nli or beir)")


def read_examples(path, format: str = "auto", *, split: str | None = None) -> list[Example]:
    """Examples from ``path`` in ``format`` (see the module docstring). ``split``: BEIR qrels split
    (default train) or NLI splits, comma-separated (default: all present)."""
    if format not in TRAIN_DATA_FORMATS:
        raise SettingsError(f"format must be one of {TRAIN_DATA_FORMATS}, got {format!r}")
    if not Path(path).exists():
        raise FileNotFoundError(f"training data not found: {path}")
    fmt = detect(path) if format == "auto" else format
    if fmt == "jsonl":
        return read_jsonl(path)
    if fmt == "nli":
        return read_nli(path, tuple(split.split(",")) if split else None)
    return read_beir(path, split or "train")
