"""The paper's alignment metrics (official ``calculate_metric``) and their evaluation over batches
of embeddings, before and after a shift.

With ``L = tokenizer.encode(text)`` (special tokens as the tokenizer adds them by default),
``T = set(L)`` and ``top`` the ``k`` highest-logit token ids:

* ``hit@k = 1[set(top[:k]) ∩ T ≠ ∅]``, averaged over the texts;
* ``local = |set(top[:len(L)]) ∩ T| / |T|``, averaged over the texts. Note ``len(L)`` counts
  repeated tokens while ``|T|`` does not, and the official code slices a list of only ``k`` ids,
  so for ``len(L) > k`` just the top ``k`` count (``depth="k"``, the default; ``depth="T"`` uses
  the top ``len(L)`` tokens instead, the paper's wording, from a projection wide enough);
* ``global = |∪_texts (set(top[:len(L)]) ∩ T)| / |∪_texts T|`` over the dataset;
* texts with ``L`` empty are skipped (not in any average) and counted (``empty``).

Verified against the official code (github Arthurizijar/Text_aligns_tokens, ``aligned_token.py``
@a648138, ``metric.py`` @6d00220): the three metrics and the skipping of empty texts. Could not be
verified: ``load_data``, which ``aligned_token.py`` imports from ``data.py``, is not in the stored
``data.py``, so how the metrics script read each dataset (the pairs' order; wiki lines with or
without their trailing newline: ``get_text_similarity_data("wiki")`` keeps it, we strip line
endings, so ``T`` has no newline token) is inferred.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..errors import SettingsError
from .report import TokenDecoder
from .shift import top_tokens

__all__ = ["text_token_lists", "AlignmentAccumulator", "alignment_metrics", "evaluate_alignment"]


def text_token_lists(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """``tokenizer.encode(text)`` for each text, as the official metric (default special tokens)."""
    return [list(tokenizer.encode(t)) for t in texts]


class AlignmentAccumulator:
    """Streaming hit@k, local and global alignment (official ``calculate_metric``; see the module
    docstring). ``depth="k"`` (official) slices the top ``k`` ids by ``len(L)``; ``depth="T"``
    slices the given ids (which must then be at least ``len(L)`` wide) by ``len(L)``."""

    def __init__(self, k: int = 10, depth: str = "k"):
        if k < 1:
            raise SettingsError("k must be positive")
        if depth not in ("k", "T"):
            raise SettingsError(f"depth must be 'k' or 'T', got {depth!r}")
        self.k, self.depth = k, depth
        self.texts = self.valid = self.empty = 0
        self.hit_sum = self.local_sum = 0.0
        self.matched: set[int] = set()
        self.existing: set[int] = set()

    def add(self, token_list: Sequence[int], top_ids: Sequence[int]) -> tuple[int, float] | None:
        """Add one text; returns its ``(hit, local)`` or None when skipped (empty)."""
        self.texts += 1
        token_list = [int(t) for t in token_list]
        if len(token_list) == 0:
            self.empty += 1
            return None
        top = [int(t) for t in top_ids]
        if len(top) < self.k:
            raise ValueError(f"need at least k={self.k} top ids per text, got {len(top)}")
        head = top[: self.k] if self.depth == "k" else top
        if self.depth == "T" and len(head) < len(token_list):
            raise ValueError(f"depth='T' needs {len(token_list)} top ids, got {len(head)}")
        t = set(token_list)
        hit = int(len(set(head[: self.k]) & t) > 0)
        match = set(head[: len(token_list)]) & t
        local = len(match) / len(t)
        self.valid += 1
        self.hit_sum += hit
        self.local_sum += local
        self.matched |= match
        self.existing |= t
        return hit, local

    def update(self, token_lists: Iterable[Sequence[int]], top_ids) -> list:
        return [self.add(t, row) for t, row in zip(token_lists, top_ids)]

    def result(self) -> dict:
        v = self.valid
        return {"k": self.k, "depth": self.depth, "texts": self.texts, "valid": v, "empty": self.empty,
                f"hit@{self.k}": self.hit_sum / v if v else float("nan"),
                "local_alignment": self.local_sum / v if v else float("nan"),
                "global_alignment": (len(self.matched) / len(self.existing)
                                     if self.existing else float("nan")),
                "matched_tokens": len(self.matched), "text_tokens": len(self.existing)}


def alignment_metrics(token_lists, top_ids, k: int = 10, depth: str = "k") -> dict:
    """hit@k, local and global alignment of texts (their ``tokenizer.encode`` lists) against the
    top token ids of their embeddings (``[N, ≥k]``)."""
    acc = AlignmentAccumulator(k, depth)
    acc.update(token_lists, top_ids)
    return acc.result()


def _width(lists, k: int, depth: str, vocab: int) -> int:
    """Top ids to project per text: ``k``, or with ``depth="T"`` enough for the longest text
    (rounded up to 64 to bound the compiled shapes)."""
    if depth != "T":
        return k
    longest = max((len(t) for t in lists), default=0)
    return min(max(k, -(-longest // 64) * 64), vocab)


def _example(doc_id, text, tokens, scored: dict, tops: dict, k: int, decoder) -> dict:
    ex = {"id": doc_id, "text": text, "text_tokens": decoder.many(tokens)}
    for side, (_, logits, _) in scored.items():
        ex[f"top_{side}"] = tops[side]
        ex[f"logits_{side}"] = logits[:k].tolist()
    return ex


def _csv_row(doc_id, text, tokens, scored: dict, tops: dict) -> list:
    row = [doc_id, text, len(tokens)]
    for side, (_, _, result) in scored.items():
        row += ["" if result is None else result[0], "" if result is None else f"{result[1]:.4f}",
                " | ".join(tops[side])]
    return row


def evaluate_alignment(batches: Iterable, model, *, k: int = 10, depth: str = "k",
                       shift_vec=None, examples: int = 0, rows_csv=None, decoder=None,
                       chunk: int = 4096) -> dict:
    """Alignment metrics of ``batches`` (``ids``, ``texts``, ``dense``) before and (with
    ``shift_vec``) after the shift, plus the first ``examples`` texts with their top-k tokens;
    ``rows_csv`` (an open csv.writer) receives one row per text."""
    decoder = decoder or TokenDecoder(model.tokenizer)
    head = model.lm_head
    sides = {"before": (AlignmentAccumulator(k, depth), None)}
    if shift_vec is not None:
        sides["after"] = (AlignmentAccumulator(k, depth), shift_vec)
    shown: list[dict] = []
    for batch in batches:
        lists = text_token_lists(model.tokenizer, batch.texts)
        width = _width(lists, k, depth, int(head.shape[0]))
        scored = {}
        for side, (acc, vec) in sides.items():
            ids, logits = top_tokens(batch.dense, head, width, shift_vec=vec, chunk=chunk)
            scored[side] = (ids, logits, acc.update(lists, ids))
        for j, doc_id in enumerate(batch.ids):
            row = {side: (ids[j], logits[j], res[j]) for side, (ids, logits, res) in scored.items()}
            tops = {side: decoder.many(ids[:k]) for side, (ids, _, _) in row.items()}
            if len(shown) < examples:
                shown.append(_example(doc_id, batch.texts[j], lists[j], row, tops, k, decoder))
            if rows_csv is not None:
                rows_csv.writerow(_csv_row(doc_id, batch.texts[j], lists[j], row, tops))
    out = {"before": sides["before"][0].result(), "examples": shown}
    if "after" in sides:
        out["after"] = sides["after"][0].result()
    return out
