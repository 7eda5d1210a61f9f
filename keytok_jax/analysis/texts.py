"""Texts for the analyses: the embed job's corpus formats plus the two STS layouts the paper's
analysis reads, so ``spectral`` and ``sts`` parse an STS file the same way.

Verified against the official STS12 loading (``get_sts_data``: " ." and " ?" removed, pairs with
gold > 4.0, sentences a then b: our ``sts`` format with ``min_score=4``). The official STS-B reader
parses the tab-separated file with ``csv.reader``'s comma delimiter, which truncates sentences at
the first comma: our ``stsb`` format splits on tabs instead.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import CorpusError
from ..pipeline import read_corpus

__all__ = ["read_texts", "sts_pairs", "stsb_pairs", "sts_gold_path"]

# (line number, sentence a, sentence b, gold score or None)
Pair = tuple[int, str, str, "float | None"]


def sts_gold_path(path: Path) -> Path:
    """The ``STS.gs.*`` file that SentEval keeps beside an ``STS.input.*`` file."""
    return path.with_name(path.name.replace("STS.input.", "STS.gs.", 1))


def sts_pairs(path: Path, gold: Path | None, min_score, cleanup: bool) -> list[Pair]:
    """Pairs of a SentEval ``STS.input.*`` file; with ``gold``, pairs without a score (or not
    above ``min_score``) are skipped, as SentEval does."""
    lines = path.read_text(encoding="utf-8").splitlines()
    scores = None
    if gold is not None:
        scores = gold.read_text(encoding="utf-8").splitlines()
        if len(scores) < len(lines):
            scores += [""] * (len(lines) - len(scores))
    pairs = []
    for i, line in enumerate(lines, 1):
        if cleanup:  # the official get_sts_data: line.replace(" .", "").replace(" ?", "")
            line = line.replace(" .", "").replace(" ?", "")
        cols = line.split("\t")
        if len(cols) < 2:
            raise CorpusError(f"{path}:{i}: expected two tab-separated sentences")
        if scores is not None:
            s = scores[i - 1].strip()
            if not s or (min_score is not None and not float(s) > min_score):
                continue
        elif min_score is not None:
            raise CorpusError(f"{path}: --min-score needs the gold file (--gold)")
        pairs.append((i, cols[0].strip(), cols[1].strip(), float(scores[i - 1]) if scores else None))
    return pairs


def stsb_pairs(path: Path, min_score) -> list[Pair]:
    """Pairs of an STS-B csv (tab-separated: score in the 5th column, sentences in the 6th and 7th)."""
    pairs = []
    with open(path, encoding="utf-8") as f:
        for i, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if len(row) < 7:
                raise CorpusError(f"{path}:{i}: expected STS-B columns (score in 5th, sentences in 6th and 7th)")
            if min_score is not None and not float(row[4]) > min_score:
                continue
            pairs.append((i, row[5], row[6], float(row[4])))
    return pairs


def _text_format(path: Path, format: str) -> str:
    if format == "auto" and path.name.startswith("STS.input."):
        return "sts"
    if format == "auto" and path.name.startswith("sts-") and path.suffix == ".csv":
        return "stsb"
    return format


def _pair_texts(path: Path, fmt: str, min_score, gold, sts_cleanup: bool) -> Iterator[tuple[str, str]]:
    """All first sentences, then all second ones, with ids ``{line}a`` / ``{line}b``."""
    if fmt == "sts":
        if gold is None:
            cand = sts_gold_path(path)
            gold = cand if cand.exists() and cand != path else None
        pairs = sts_pairs(path, Path(gold) if gold else None, min_score, sts_cleanup)
    else:
        pairs = stsb_pairs(path, min_score)
    for side, col in (("a", 1), ("b", 2)):
        for p in pairs:
            yield f"{p[0]}{side}", p[col]


def read_texts(path, format: str = "auto", *, min_score: float | None = None, gold=None,
               sts_cleanup: bool = True, id_field: str = "_id",
               text_fields: Sequence[str] = ("title", "text"), limit: int | None = None
               ) -> Iterator[tuple[str, str]]:
    """``(id, text)`` pairs, streamed for the corpus formats of :mod:`keytok_jax.pipeline.read`
    (``txt``: one text per line, line endings stripped), plus ``sts`` (SentEval ``STS.input.*``
    pairs; gold scores from ``gold`` or the matching ``STS.gs.*``; pairs with gold > ``min_score``;
    the official " ."/" ?" removal unless ``sts_cleanup=False``; all first sentences, then all
    second ones) and ``stsb`` (STS-B csv; pairs with score > ``min_score``; same order)."""
    path = Path(path)
    fmt = _text_format(path, format)
    if fmt in ("sts", "stsb"):
        texts = _pair_texts(path, fmt, min_score, gold, sts_cleanup)
    else:
        texts = ((doc.id, doc.text) for doc in read_corpus(
            path, format=fmt, id_field=id_field, text_fields=text_fields, on_error="skip",
            rejects_path=os.devnull))
    for n, item in enumerate(texts):
        if limit is not None and n >= limit:
            return
        yield item
