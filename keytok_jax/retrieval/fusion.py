"""Fusion of one query's sparse and dense ranked lists (``hybrid`` mode).

``rrf``: reciprocal rank fusion, the sum of 1 / (60 + rank) over the two lists. ``weighted``:
``alpha * sparse + (1 - alpha) * dense`` after min-max normalising each list's scores over its
own results; a document missing from one list scores 0 there. Equal fused scores go to the lower
store row.
"""
from __future__ import annotations

import numpy as np

from ..settings.search import FUSIONS, RRF_K
from .sparse import _top_rows

__all__ = ["fuse", "FUSIONS", "RRF_K"]


def fuse(sparse: tuple[np.ndarray, np.ndarray], dense: tuple[np.ndarray, np.ndarray], k: int, *,
         method: str = "rrf", alpha: float = 0.5, rrf_k: int = RRF_K) -> tuple[np.ndarray, np.ndarray]:
    """Fuse one query's two ranked lists ``(rows, scores)`` into the top k (see the module doc)."""
    if method not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {method!r}")
    total: dict[int, float] = {}
    for weight, (rows, scores) in ((alpha, sparse), (1.0 - alpha, dense)):
        if method == "rrf":
            values = 1.0 / (rrf_k + np.arange(1, len(rows) + 1))
            weight = 1.0
        else:
            lo, hi = (float(scores.min()), float(scores.max())) if len(scores) else (0.0, 0.0)
            values = (scores - lo) / (hi - lo) if hi > lo else np.ones(len(scores))
        for r, v in zip(rows.tolist(), values.tolist()):
            total[r] = total.get(r, 0.0) + weight * v
    rows = np.fromiter(total.keys(), np.int64, len(total))
    scores = np.fromiter(total.values(), np.float64, len(total)).astype(np.float32)
    return _top_rows(rows, scores, k)
