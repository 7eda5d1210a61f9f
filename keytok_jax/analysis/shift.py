"""The paper's analyses of the first principal component (arXiv 2406.17378, section 5).

- **variation** (:func:`variation`; official ``before_after_variation``): for the same texts,
  ``V`` = the backbone's principal directions; the coefficients ``X_backbone @ V`` and
  ``X_embedder @ V``; ``diff_i = mean_n (X_embedder @ V - X_backbone @ V)[n, i]``, which equals
  ``(μ_embedder - μ_backbone) @ V`` (so it streams: only the two means are needed). Each
  component's share is ``diff_i² / Σ_j diff_j²`` (the share of ``‖μ_e - μ_b‖²``; the paper finds
  the first component dominates); the backbone's explained-variance shares are reported too.
- **shift** (official ``change_first_component``): ``e + λ·v1``, λ from the variation's first
  component (official ``--lambda_type v1``), given (``custom``), or ``remove`` = ``-μ·v1``, which
  moves the mean embedding's first coefficient to zero (our default when no embedder is at hand:
  SmolLM2 has no trained embedder; ``λ v1`` does not depend on the sign of ``v1``). The shifted
  vectors go through the LM-head matrix (:func:`keytok_jax.projection.topk_projection`); the
  artifact is :class:`keytok_jax.pipeline.Shift` ``(v1, λ, model_hash)``, applied by
  ``python -m keytok_jax.embed --shift FILE`` to the pooled vector before projection.
- **contribution** (:func:`contribution`; official ``subvec_decode_contribution``): for a text's
  embedding ``e`` and ``v1``: ``e1 = (e·v1) v1`` and the residual ``r = e - e1``; for the top-k
  tokens of ``e``, the logits of ``e``, ``e1`` and ``r`` (``logits(e) = logits(e1) + logits(r)``;
  the LM head is linear without bias).

Verified against the official code (github Arthurizijar/Text_aligns_tokens, ``spectral_analyze.py``
@6d00220): the uncentered SVD and raw coefficients, ``diff`` as the mean coefficient difference and
λ = ``diff[0]`` (``before_after_variation``, ``change_first_component``), the shift ``e + λ v1`` on
the backbone's embeddings, the contribution split ``e1 = e v1ᵀ v1``, logits as the plain LM-head
linear map. The shares are ours.
"""
from __future__ import annotations

import numpy as np

from ..errors import SettingsError
from ..pipeline import Shift, model_hash
from ..projection import topk_projection
from .components import Components

__all__ = ["variation", "shift_lambda", "make_shift", "top_tokens", "contribution"]


def variation(backbone: Components, embedder_mean, backbone_mean=None, n: int | None = None) -> dict:
    """The paper's variation: ``diff_i = (μ_embedder - μ_backbone) @ v_i`` on the backbone's
    directions (= mean over the texts of the embedder's minus the backbone's coefficients), with
    each component's share ``diff_i² / Σ diff²`` and the backbone's explained shares."""
    mb = np.asarray(backbone.mean if backbone_mean is None else backbone_mean, np.float64)
    me = np.asarray(embedder_mean, np.float64)
    if me.shape != mb.shape:
        raise SettingsError(f"embedder mean has shape {me.shape}, the backbone's {mb.shape}: the "
                         "variation needs embeddings of the same dimension")
    V = backbone.directions if n is None else backbone.directions[:, :n]
    cb, ce = mb @ V, me @ V
    diff = ce - cb
    sq = float(np.sum((me - mb) ** 2))
    share = diff ** 2 / sq if sq > 0 else np.zeros_like(diff)
    return {"diff": diff, "backbone_coeff": cb, "embedder_coeff": ce, "share": share,
            "explained": backbone.explained[: V.shape[1]], "lambda": float(diff[0]),
            "mean_diff_norm": sq ** 0.5}


def shift_lambda(components: Components, how="remove", variation_report: dict | None = None,
                 scale: float = 1.0) -> float:
    """λ for ``e + λ v1``, times ``scale``: ``how`` a number (given); ``"remove"`` → ``-μ·v1``
    (the mean embedding loses its first-component part; ``scale=0.5`` halves it instead);
    ``"variation"`` → the variation's first component (``variation_report["lambda"]``, the
    official ``v1`` lambda type)."""
    if isinstance(how, (int, float)):
        lam = float(how)
    elif how == "remove":
        lam = -float(components.mean.astype(np.float64) @ components.first)
    elif how == "variation":
        if variation_report is None:
            raise SettingsError("lambda 'variation' needs a variation report")
        lam = float(variation_report["lambda"])
    else:
        raise SettingsError(f"lambda must be a number, 'remove' or 'variation', got {how!r}")
    return scale * lam


def make_shift(components: Components, lam: float, model=None):
    """``Shift(v1, λ, model_hash)``: save it with ``.save(path)`` and pass it to
    ``python -m keytok_jax.embed --shift``."""
    return Shift(np.asarray(components.first, np.float32), float(lam),
                 model_hash(model) if model is not None else None)


def _pad_rows(x: np.ndarray, min_rows: int = 8) -> np.ndarray:
    b = x.shape[0]
    rows = max(min_rows, 1 << max(b - 1, 0).bit_length())
    if rows == b:
        return x
    out = np.zeros((rows,) + x.shape[1:], x.dtype)
    out[:b] = x
    return out


def top_tokens(dense, lm_head, k: int, shift_vec=None, chunk: int = 4096):
    """Top-``k`` token ids and logits ``[B, k]`` of ``(dense + shift_vec) @ lm_headᵀ`` (chunked,
    on device; ties to the lower id). Rows are padded to a power of two to bound compiles."""
    x = np.asarray(dense, np.float32)
    b = x.shape[0]
    if b == 0:
        return np.zeros((0, k), np.int32), np.zeros((0, k), np.float32)
    if shift_vec is not None:
        x = x + np.asarray(shift_vec, np.float32)
    ids, logits = topk_projection(_pad_rows(x), lm_head, int(k), chunk=chunk, weighting="logit")
    return np.asarray(ids)[:b], np.asarray(logits)[:b]


def contribution(embedding, direction, lm_head, k: int = 10) -> dict:
    """Official ``subvec_decode_contribution``: ``e1 = (e·v) v``, ``r = e - e1``; for the top-k
    tokens of ``e``, the logits from ``e``, ``e1`` and ``r`` (float64 on host)."""
    e = np.asarray(embedding, np.float64)
    v = np.asarray(direction, np.float64)
    v = v / np.linalg.norm(v)
    e1 = (e @ v) * v
    r = e - e1
    head = np.asarray(lm_head, np.float32)
    total = head @ e.astype(np.float32)
    ids = np.argsort(-total, kind="stable")[:k]
    rows = head[ids].astype(np.float64)
    return {"ids": ids, "total": rows @ e, "first": rows @ e1, "residual": rows @ r,
            "coefficient": float(e @ v)}

