"""Pooling of hidden states into one vector per text, and post-processing of those vectors.

Pure, jittable functions. Notation: ``hidden`` is ``[B, T, D]`` (any float dtype), ``mask`` is
``[B, T]`` and says which positions *count* for pooling (any dtype; a position counts where
``mask != 0``). The pooling mask may differ from the attention mask: e.g. it can exclude the
leading instruction tokens of an instruction-prefixed text (GritLM / E5-mistral style) while those
tokens were still attended to. Padding may be on either side; positions that do not count are
never read arithmetically (they are replaced by 0 with ``where``, so even NaN/inf there cannot
leak into the result).

Every result is float32: ``hidden`` is cast to float32 before any arithmetic, so sums accumulate in
float32 whatever the model dtype.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

POOLING_METHODS = ("last", "mean", "weighted_mean")
# what ``pool`` computes: the settings' methods, and ``cls`` (sentence-transformers folders only)
POOL_METHODS = POOLING_METHODS + ("cls",)


def _check(hidden, mask):
    if hidden.ndim != 3 or mask.ndim != 2 or mask.shape != hidden.shape[:2]:
        raise ValueError(f"pool expects hidden [B, T, D] and mask [B, T]; got {hidden.shape} and "
                         f"{mask.shape}")


@partial(jax.jit, static_argnames=("method",))
def pool(hidden, mask, method: str = "mean", rank_mask=None):
    """Pool ``hidden [B, T, D]`` over the positions where ``mask [B, T] != 0`` → float32 ``[B, D]``.

    With ``m_t = 1[mask_t != 0]``, ``n = Σ_t m_t`` (per row) and ``h_t`` the float32 hidden state at
    position ``t``:

    - ``"last"``: ``h_{t*}`` with ``t* = max{t : m_t = 1}``, the last counted position (the last
      real token under right padding, the final position under left padding, and still the last
      text token when the mask excludes a leading instruction).
    - ``"mean"``: ``Σ_t m_t h_t / n``.
    - ``"weighted_mean"`` (SGPT position-weighted mean, arXiv 2202.08904): ``Σ_t w_t h_t`` with
      ``w_t = m_t c_t / Σ_s m_s c_s`` where ``c_t = Σ_{s≤t} m_s`` is the 1-based rank of ``t``
      among the counted positions; i.e. the i-th counted token has weight ``i / (n (n + 1) / 2)``.
      Padding and excluded positions do not advance the rank, so the weights do not depend on
      the padding side or amount. With ``rank_mask [B, T]`` given, ranks count the positions
      where ``rank_mask != 0`` instead (sentence-transformers' ``weightedmean`` with
      ``include_prompt=False``: ranks over every real token, so text tokens keep the weights they
      have behind the prompt).
    - ``"cls"``: ``h_{t*}`` with ``t* = min{t : m_t = 1}``, the first counted position
      (sentence-transformers' ``cls`` pooling of a decoder).

    A row whose mask is all zero (``n = 0``) pools to a zero vector, never NaN. ``method`` is static
    under jit.
    """
    if method not in POOL_METHODS:
        raise ValueError(f"pooling method must be one of {POOL_METHODS}, got {method!r}")
    hidden = jnp.asarray(hidden)
    mask = jnp.asarray(mask)
    _check(hidden, mask)
    counted = mask != 0                                            # [B, T] bool
    h = jnp.where(counted[..., None], hidden.astype(jnp.float32), 0.0)  # [B, T, D] float32
    if method == "last":
        T = hidden.shape[1]
        last = jnp.max(jnp.where(counted, jnp.arange(T, dtype=jnp.int32), -1), axis=1)   # [B]
        picked = jnp.take_along_axis(h, jnp.maximum(last, 0)[:, None, None], axis=1)[:, 0]
        return jnp.where((last >= 0)[:, None], picked, 0.0)
    if method == "cls":
        T = hidden.shape[1]
        first = jnp.min(jnp.where(counted, jnp.arange(T, dtype=jnp.int32), T), axis=1)   # [B]
        picked = jnp.take_along_axis(h, jnp.minimum(first, T - 1)[:, None, None], axis=1)[:, 0]
        return jnp.where((first < T)[:, None], picked, 0.0)
    m = counted.astype(jnp.float32)
    if method == "mean":
        w = m
    else:  # weighted_mean
        ranked = m if rank_mask is None else (jnp.asarray(rank_mask) != 0).astype(jnp.float32)
        w = m * jnp.cumsum(ranked, axis=1)                         # i-th counted token → i
    total = jnp.sum(w, axis=1, keepdims=True)                      # n or n (n + 1) / 2 (exact)
    w = w / jnp.maximum(total, 1.0)                                # all-zero rows stay zero
    return jnp.sum(h * w[..., None], axis=1)


def l2_normalize(x, eps: float = 1e-12):
    """``x / max(‖x‖₂, eps)`` along the last axis, in float32 (as ``torch.nn.functional.normalize``).

    Zero vectors stay zero (no NaN). Jittable; ``eps`` may be a Python float or a traced scalar.
    """
    x = jnp.asarray(x).astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)


def matryoshka(x, dim: int, normalize: bool = True, eps: float = 1e-12):
    """Matryoshka truncation: keep the first ``dim`` coordinates, ``y = x[..., :dim]``, then, if
    ``normalize`` (the default), renormalise ``y / max(‖y‖₂, eps)`` so cosine similarity is a dot
    product again. With ``normalize=False`` the truncated float32 vector is returned as is.

    ``dim`` (and ``normalize``) must be static Python values under jit; ``1 ≤ dim ≤ x.shape[-1]``,
    else ValueError.
    """
    x = jnp.asarray(x)
    if not isinstance(dim, int) or not 1 <= dim <= x.shape[-1]:
        raise ValueError(f"matryoshka dim must be an int in [1, {x.shape[-1]}], got {dim!r}")
    y = x[..., :dim].astype(jnp.float32)
    return l2_normalize(y, eps) if normalize else y


_ACTIVATIONS = {"identity": lambda x: x, "tanh": jnp.tanh, "relu": jax.nn.relu,
                "gelu": lambda x: jax.nn.gelu(x, approximate=False), "sigmoid": jax.nn.sigmoid,
                "silu": jax.nn.silu}


def dense_layer(x, weight, bias=None, activation: str = "identity"):
    """A sentence-transformers ``Dense`` module: ``activation(x Wᵀ + b)`` in float32, ``weight``
    ``[out, in]`` (torch ``nn.Linear`` layout), ``bias [out]`` or None; ``activation`` one of
    identity, tanh, relu, gelu (exact, as ``torch.nn.GELU()``), sigmoid, silu (static under jit)."""
    y = jnp.matmul(jnp.asarray(x, jnp.float32), jnp.asarray(weight, jnp.float32).T,
                   precision=jax.lax.Precision.HIGHEST)
    if bias is not None:
        y = y + jnp.asarray(bias, jnp.float32)
    return _ACTIVATIONS[activation](y)
