"""Controls for the paper's finding (b): does the backbone → embedder change live in the first
principal component, or would any removal of the common component do the same?

The official shift adds ``λ·v1`` (λ = diff_1 of the variation) to each backbone embedding. Each
control below moves the same embeddings by a vector of the same size along another direction, by
another amount, or moves the embedder back; all are scored with the official alignment metrics
and with their **content-token** versions, where stop words and punctuation are taken out of
both the ranked tokens and the text's tokens (so a gain cannot come from ranking ``,`` ``.``
``␣the`` lower than before):

============================  ======================================================
variant                       embeddings scored
============================  ======================================================
``backbone``, ``embedder``    each model's own pooled vectors
``v1 shift``                  backbone + λ·v1 (the paper's, official ``change_first_component``)
``v1 shift ×s``               backbone + s·λ·v1 (the λ sweep)
``v2 shift``                  backbone + λ·v2 (the second uncentered direction)
``random shift #i``           backbone + λ·r, r a seeded random unit vector
``centred v1 shift``          backbone + λ·c1, c1 the first direction of the centred scatter
``mean difference``           backbone + (μ_embedder − μ_backbone): the whole average change
``mean difference − v1``      backbone + (μ_e − μ_b) − λ·v1: the change without component 1
``remove``                    backbone − (μ·v1)·v1: the generic removal, no embedder involved
``embedder − λ·v1``           embedder − λ·v1: the reverse shift
============================  ======================================================

Every direction is a unit vector oriented so that the backbone's mean projects positively on it
(:func:`~keytok_jax.analysis.components.orient`), as v1 is, so "the same λ" means the same signed
step. The analysed sets are small (the paper's are ≤ 1,200 texts): the embeddings are held in
memory.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import SettingsError
from .alignment import alignment_metrics, text_token_lists
from .components import orient, svd_components
from .shift import top_tokens, variation

__all__ = ["Variant", "control_variants", "content_mask", "content_filter", "score_variants",
           "STOP_WORDS_SOURCE", "LAMBDA_SCALES"]

LAMBDA_SCALES = (0.25, 0.5, 1.5, 2.0)
STOP_WORDS_SOURCE = "bm25s.stopwords.STOPWORDS_EN_PLUS (NLTK's 179 English stop words)"
# Ranked ids kept per text before the content filter: enough that ≥ k content tokens remain.
RANK_WIDTH = 256


@dataclass(frozen=True)
class Variant:
    """Embeddings of ``role`` ("backbone" or "embedder") moved by ``vector`` (``None``: as they are)."""
    name: str
    role: str
    vector: np.ndarray | None
    what: str


def _unit_towards(v: np.ndarray, mean: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return orient((v / np.linalg.norm(v))[:, None], mean)[:, 0]


def control_variants(backbone: np.ndarray, embedder: np.ndarray, *, seeds: int = 3,
                     scales: Sequence[float] = LAMBDA_SCALES) -> tuple[list[Variant], dict]:
    """The variants of the module table and the fitted quantities (λ, the directions' facts).

    ``backbone`` and ``embedder``: ``[N, D]`` pooled vectors of the same texts."""
    b = np.asarray(backbone, np.float64)
    e = np.asarray(embedder, np.float64)
    if b.shape != e.shape or b.ndim != 2 or b.shape[0] < 2:
        raise SettingsError(f"controls need [N, D] embeddings of the same N ≥ 2 texts by both "
                            f"models, got {b.shape} and {e.shape}")
    unc = svd_components(b, centered=False, precision="float64")
    cen = svd_components(b, centered=True, precision="float64")
    mb, me = b.mean(0), e.mean(0)
    var = variation(unc, me, mb)
    lam = var["lambda"]
    v1, v2 = unc.directions[:, 0], unc.directions[:, 1]
    c1 = cen.directions[:, 0]
    rng = np.random.default_rng(0)
    randoms = [_unit_towards(rng.standard_normal(b.shape[1]), mb) for _ in range(seeds)]
    diff = me - mb
    out = [Variant("backbone", "backbone", None, "the backbone's pooled vectors"),
           Variant("embedder", "embedder", None, "the embedder's pooled vectors"),
           Variant("v1 shift", "backbone", lam * v1, "backbone + λ·v1 (the paper's shift)")]
    out += [Variant(f"v1 shift ×{s:g}", "backbone", s * lam * v1, f"backbone + {s:g}·λ·v1") for s in scales]
    out += [Variant("v2 shift", "backbone", lam * v2, "backbone + λ·v2"),
            *[Variant(f"random shift #{i + 1}", "backbone", lam * r, f"backbone + λ·r (random unit, #{i + 1})")
              for i, r in enumerate(randoms)],
            Variant("centred v1 shift", "backbone", lam * c1, "backbone + λ·c1 (centred first direction)"),
            Variant("mean difference", "backbone", diff, "backbone + (μ_embedder − μ_backbone)"),
            Variant("mean difference − v1", "backbone", diff - lam * v1,
                    "backbone + (μ_e − μ_b) − λ·v1 (the change without component 1)"),
            Variant("remove", "backbone", -(mb @ v1) * v1, "backbone − (μ·v1)·v1 (no embedder involved)"),
            Variant("embedder − λ·v1", "embedder", -lam * v1, "embedder − λ·v1 (the reverse shift)")]
    facts = {"lambda": lam, "first_share": float(var["share"][0]), "second_share": float(var["share"][1]),
             "mean_diff_norm": var["mean_diff_norm"], "backbone_mean_v1": float(mb @ v1),
             "cos_v1_centred_v1": float(abs(v1 @ c1)),
             "cos_v1_mean_diff": float(v1 @ diff / np.linalg.norm(diff)) if np.linalg.norm(diff) else 0.0,
             "random_seeds": seeds}
    return out, facts


def content_mask(tokenizer, vocab_size: int, stop_words=None) -> np.ndarray:
    """``[vocab]`` bool: True for a token whose text has a letter or digit and, stripped and
    lower-cased, is not a stop word (default :data:`STOP_WORDS_SOURCE`)."""
    if stop_words is None:
        from bm25s.stopwords import STOPWORDS_EN_PLUS as stop_words
    stop = {w.lower() for w in stop_words}
    mask = np.zeros(vocab_size, bool)
    n = min(vocab_size, len(tokenizer))
    for i, text in enumerate(tokenizer.batch_decode([[i] for i in range(n)])):
        word = text.strip().lower()
        mask[i] = any(c.isalnum() for c in word) and word not in stop
    return mask


def content_filter(token_lists, top_ids: np.ndarray, mask: np.ndarray, k: int):
    """The content-token view: each text's tokens without stop words and punctuation, and each
    row's ranked ids likewise (the first ``k`` content ids; ``-1`` where fewer remain)."""
    lists = [[t for t in ts if mask[t]] for ts in token_lists]
    tops = np.full((len(top_ids), k), -1, np.int64)
    for i, row in enumerate(np.asarray(top_ids)):
        kept = row[mask[row]][:k]
        tops[i, : len(kept)] = kept
    return lists, tops


def score_variants(variants: Sequence[Variant], dense: dict[str, np.ndarray], texts: Sequence[str],
                   model, *, k: int = 10, mask: np.ndarray | None = None) -> dict[str, dict]:
    """Per variant: the official metrics (``official``) and, with ``mask``, the content-token
    ones (``content``), plus the variant's description and the size of its move."""
    lists = text_token_lists(model.tokenizer, texts)
    head = model.lm_head
    width = min(max(k, RANK_WIDTH) if mask is not None else k, int(head.shape[0]))
    out = {}
    for v in variants:
        ids, _ = top_tokens(dense[v.role], head, width, shift_vec=v.vector)
        row = {"what": v.what, "role": v.role,
               "step_norm": 0.0 if v.vector is None else float(np.linalg.norm(v.vector)),
               "official": alignment_metrics(lists, ids[:, :k], k)}
        if mask is not None:
            row["content"] = alignment_metrics(*content_filter(lists, ids, mask, k), k)
        out[v.name] = row
    return out
