"""Semantic textual similarity: Spearman of cosine vs gold scores, as SentEval / MTEB report it
(Spearman and Pearson correlation x100 of the cosine similarity of the two dense vectors with the
gold score).

Files: STS-B csv (``sts-{train,dev,test}.csv``: score in the 5th column, sentences in the 6th and
7th) or SentEval ``STS.input.*.txt`` with its ``STS.gs.*.txt`` (pairs without a gold score are
skipped, as SentEval does), parsed by the same readers as the spectral analysis's texts.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import CorpusError
from .texts import sts_gold_path, sts_pairs, stsb_pairs

__all__ = ["read_sts_pairs", "evaluate_sts"]


def read_sts_pairs(path, cleanup: bool = False) -> list[tuple[str, str, float]]:
    """(sentence a, sentence b, gold score) of an STS-B csv or a SentEval STS.input file.
    ``cleanup``: the official " ."/" ?" removal of the paper's SentEval STS reader."""
    path = Path(path)
    if path.name.startswith("STS.input."):
        gold = sts_gold_path(path)
        if not gold.exists():
            raise FileNotFoundError(f"{gold}: the gold scores of {path} are missing")
        pairs = sts_pairs(path, gold, None, cleanup)
    elif path.suffix == ".csv":
        pairs = stsb_pairs(path, None)
    else:
        raise CorpusError(f"{path}: not an STS-B csv nor a SentEval STS.input.* file")
    return [(a, b, s) for _, a, b, s in pairs]


def evaluate_sts(embedder, path, cleanup: bool = False) -> dict:
    """Spearman / Pearson x100 of cosine similarity with the gold scores of ``path``."""
    from scipy.stats import pearsonr, spearmanr

    pairs = read_sts_pairs(path, cleanup)
    if len(pairs) < 2:
        raise CorpusError(f"{path}: fewer than two scored pairs")
    texts = [p[0] for p in pairs] + [p[1] for p in pairs]
    dense = np.asarray(embedder.encode(texts), np.float64)
    dense /= np.maximum(np.linalg.norm(dense, axis=1, keepdims=True), 1e-12)
    a, b = dense[: len(pairs)], dense[len(pairs):]
    cosine = np.sum(a * b, axis=1)
    gold = np.asarray([p[2] for p in pairs])
    return {"file": str(path), "pairs": len(pairs),
            "spearman": 100 * float(spearmanr(cosine, gold).statistic),
            "pearson": 100 * float(pearsonr(cosine, gold).statistic)}
