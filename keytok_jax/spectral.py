"""Spectral analysis of text embeddings and their aligned tokens ("A Text is Worth Several Tokens",
arXiv 2406.17378, section 5): principal components, the first-component shift, and the paper's
alignment metrics. ``python -m keytok_jax.spectral --help`` is the command line.

Principal components
--------------------
With ``X [N, D]`` the embeddings (rows) and ``μ`` their mean:

- **uncentered** (what the paper's code does: ``torch.svd(embs)`` on the raw embeddings): the
  directions are the right singular vectors of ``X``, i.e. the eigenvectors of ``XᵀX``;
- **centered**: the eigenvectors of the scatter matrix ``(X - μ)ᵀ(X - μ)``.

:class:`Components` holds the directions as columns ``[D, r]`` by decreasing eigenvalue, the
eigenvalues (= squared singular values of ``X`` or ``X - μ``), the mean, the count and the trace
(so shares stay right when only ``r < D`` directions are kept). Signs are fixed: each direction
points where the mean embedding projects positively (``μ·v > 0``; when ``|μ·v|`` is negligible,
the largest coordinate in absolute value is made positive). Coefficients are always raw
projections ``x @ V`` (no centring), as in the paper's code.

- :func:`batched_svd`: jitted, ``vmap``-ed thin SVD of a stack ``[G, N, D]``;
- :func:`svd_components`: components of an in-memory ``[N, D]`` array (through ``batched_svd``);
- :class:`StreamingMoments`: streaming over batches (and devices) in bounded memory; each batch
  gives its count, mean and centred scatter on device (one jitted step per padded batch shape; a
  ``sharding`` for the rows, e.g. ``NamedSharding(mesh, P("data"))``, makes XLA reduce over the
  devices), merged into the running state with Chan et al.'s pairwise update
  ``M2 = M2_a + M2_b + δδᵀ n_a n_b / n`` (``δ = μ_b - μ_a``), which stays accurate when the mean
  is large (a plain ``XᵀX - nμμᵀ`` in float32 would cancel catastrophically: SmolLM2 pooled
  vectors have norms ~50 around a dominant common direction). The uncentered matrix is
  ``XᵀX = M2 + n μμᵀ``, so one pass gives both variants. Accumulation is in float32, or float64
  on request (run under ``jax.enable_x64``); then ``eigh`` in the same precision (all directions;
  LAPACK through numpy when JAX runs on CPU, where it is ~10x faster than XLA's, else
  ``jnp.linalg.eigh``) or
  :func:`power_iteration` (the first direction only, ``O(D²)`` per step instead of ``O(D³)``,
  for large ``D``). Memory: two ``[D, D]`` matrices (state and batch) plus one batch.
- :func:`power_iteration` (on a ``[D, D]`` matrix) and :func:`power_iteration_data` (matrix-free,
  ``v ← Xᵀ(Xv)`` on an in-memory ``[N, D]`` array): jitted ``lax.while_loop`` until the direction
  moves less than ``tol``.

The paper's analyses
--------------------
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
  artifact is ``keytok_jax.embedder.Shift(v1, λ, model_hash)``, applied by
  ``python -m keytok_jax.embed --shift FILE`` to the pooled vector before projection.
- **contribution** (:func:`contribution`; official ``subvec_decode_contribution``): for a text's
  embedding ``e`` and ``v1``: ``e1 = (e·v1) v1`` and the residual ``r = e - e1``; for the top-k
  tokens of ``e``, the logits of ``e``, ``e1`` and ``r`` (``logits(e) = logits(e1) + logits(r)``;
  the LM head is linear without bias).
- **alignment metrics** (:class:`AlignmentAccumulator`, :func:`alignment_metrics`; official
  ``calculate_metric``), with ``L = tokenizer.encode(text)`` (special tokens as the tokenizer adds
  them by default), ``T = set(L)`` and ``top`` the ``k`` highest-logit token ids:

  * ``hit@k = 1[set(top[:k]) ∩ T ≠ ∅]``, averaged over the texts;
  * ``local = |set(top[:len(L)]) ∩ T| / |T|``, averaged over the texts. Note ``len(L)`` counts
    repeated tokens while ``|T|`` does not, and the official code slices a list of only ``k``
    ids, so for ``len(L) > k`` just the top ``k`` count (``depth="k"``, the default; ``depth="T"``
    uses the top ``len(L)`` tokens instead, the paper's wording, from a projection wide enough);
  * ``global = |∪_texts (set(top[:len(L)]) ∩ T)| / |∪_texts T|`` over the dataset;
  * texts with ``L`` empty are skipped (not in any average) and counted (``empty``).

Verified against the official code (github Arthurizijar/Text_aligns_tokens, read from the stored
copies of ``aligned_token.py`` @a648138, ``spectral_analyze.py``, ``data.py``, ``embedding.py``,
``model.py``, ``metric.py`` @6d00220): the three metrics and the skipping of empty texts
(``calculate_metric``), the uncentered SVD and raw coefficients, ``diff`` as the mean coefficient
difference and λ = ``diff[0]`` (``before_after_variation``, ``change_first_component``), the shift
``e + λ v1`` on the backbone's embeddings, the contribution split ``e1 = e v1ᵀ v1``, logits as the
plain LM-head linear map, and the STS12 loading (``get_sts_data``: " ." and " ?" removed, pairs
with gold > 4.0, sentences a then b: our ``sts`` format with ``min_score=4``).
Could not be verified: ``load_data``, which ``aligned_token.py`` imports from ``data.py``, is not
in the stored ``data.py``, so how the metrics script read each dataset (the pairs' order; wiki
lines with or without their trailing newline: ``get_text_similarity_data("wiki")`` keeps it, we
strip line endings, so ``T`` has no newline token) is inferred; the official STS-B reader parses
the tab-separated file with ``csv.reader``'s comma delimiter, which truncates sentences at the
first comma: our ``stsb`` format splits on tabs instead. Power iteration, the centered variant,
streaming and the shares are ours (the official code has full in-memory SVD only).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "PRECISIONS",
    "AlignmentAccumulator",
    "Batch",
    "Components",
    "Source",
    "StreamingMoments",
    "TokenDecoder",
    "alignment_metrics",
    "batched_svd",
    "contribution",
    "main",
    "make_shift",
    "model_hash",
    "power_iteration",
    "power_iteration_data",
    "read_texts",
    "shift_lambda",
    "svd_components",
    "text_token_lists",
    "top_tokens",
    "variation",
]

PRECISIONS = ("float32", "float64")
# Embedding settings when texts are embedded on the fly: the raw backbone with SGPT's position-
# weighted mean, the pooling of the paper's GPT-Neo / SGPT spectral analysis.
DEFAULT_SETTINGS = {"pooling": "weighted_mean", "prompt": "none"}
TEXT_FORMATS = ("auto", "jsonl", "tsv", "txt", "parquet", "beir", "sts", "stsb")


def _x64(precision: str):
    """Context for computations in ``precision``: float64 needs ``jax_enable_x64``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return jax.enable_x64(True) if precision == "float64" else contextlib.nullcontext()


def _dtype(precision: str):
    return jnp.float64 if precision == "float64" else jnp.float32


# ============================================================================ components

@dataclass
class Components:
    """Principal directions of a set of embeddings (see the module docstring)."""
    directions: np.ndarray   # [D, r] orthonormal columns, by decreasing eigenvalue
    eigenvalues: np.ndarray  # [r] eigenvalues of XᵀX (uncentered) or (X-μ)ᵀ(X-μ) (centered)
    mean: np.ndarray         # [D]
    count: int
    centered: bool
    total: float             # trace of that matrix (Σ of all D eigenvalues)
    method: str = "eigh"     # eigh | svd | power
    precision: str = "float32"
    extra: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return self.directions.shape[0]

    @property
    def first(self) -> np.ndarray:
        return self.directions[:, 0]

    @property
    def singular_values(self) -> np.ndarray:
        return np.sqrt(np.maximum(self.eigenvalues, 0.0))

    @property
    def explained(self) -> np.ndarray:
        """Share of the trace carried by each direction."""
        return self.eigenvalues / self.total if self.total > 0 else np.zeros_like(self.eigenvalues)

    def coefficients(self, x) -> np.ndarray:
        """Raw projections ``x @ V`` (no centring, as the paper's code)."""
        return np.asarray(x, np.float64) @ self.directions

    def truncate(self, r: int) -> Components:
        return Components(self.directions[:, :r], self.eigenvalues[:r], self.mean, self.count,
                          self.centered, self.total, self.method, self.precision, dict(self.extra))

    def save(self, path) -> None:
        """``.npz`` with the arrays and a JSON ``meta`` string."""
        meta = {"count": self.count, "centered": self.centered, "total": self.total,
                "method": self.method, "precision": self.precision, "extra": self.extra,
                "format": "keytok-components/1"}
        with open(path, "wb") as f:
            np.savez(f, directions=self.directions, eigenvalues=self.eigenvalues, mean=self.mean,
                     meta=np.asarray(json.dumps(meta)))

    @classmethod
    def load(cls, path) -> Components:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != "keytok-components/1":
                raise ValueError(f"{path}: not a keytok components file")
            return cls(z["directions"], z["eigenvalues"], z["mean"], int(meta["count"]),
                       bool(meta["centered"]), float(meta["total"]), meta["method"],
                       meta["precision"], meta.get("extra", {}))

    def summary(self, n: int = 10) -> dict:
        ex = self.explained
        return {"count": self.count, "dim": self.dim, "centered": self.centered,
                "method": self.method, "precision": self.precision,
                "eigenvalues": [float(x) for x in self.eigenvalues[:n]],
                "singular_values": [float(x) for x in self.singular_values[:n]],
                "explained": [float(x) for x in ex[:n]],
                "mean_norm": float(np.linalg.norm(self.mean)),
                "mean_coefficients": [float(x) for x in (self.mean.astype(np.float64)
                                                         @ self.directions[:, :n])]}


def _orient(directions: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Deterministic signs: ``mean·v > 0``; when negligible, the largest |coordinate| > 0."""
    V = np.array(directions, copy=True)
    proj = mean.astype(np.float64) @ V
    tiny = np.abs(proj) <= 1e-6 * max(float(np.linalg.norm(mean)), 1e-30)
    big = V[np.argmax(np.abs(V), axis=0), np.arange(V.shape[1])]
    sign = np.where(tiny, np.sign(big), np.sign(proj))
    sign[sign == 0] = 1.0
    return V * sign


@jax.jit
def _svd_stack(x):
    return jax.vmap(partial(jnp.linalg.svd, full_matrices=False))(x)


def batched_svd(x, precision: str = "float32"):
    """Thin SVD of each matrix of a stack ``x [G, N, D]`` (jitted, ``vmap`` over ``G``).

    Returns numpy ``(U [G, N, r], S [G, r], Vt [G, r, D])`` with ``r = min(N, D)``, singular
    values decreasing, ``x[g] = U[g] @ diag(S[g]) @ Vt[g]``. ``precision="float64"`` computes in
    float64 (under ``jax.enable_x64``)."""
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"batched_svd expects a stack [G, N, D], got shape {x.shape}")
    with _x64(precision):
        u, s, vt = _svd_stack(jnp.asarray(x, _dtype(precision)))
        return np.asarray(u), np.asarray(s), np.asarray(vt)


def svd_components(x, centered: bool = False, precision: str = "float32") -> Components:
    """Components of an in-memory ``x [N, D]`` from its SVD (``r = min(N, D)`` directions)."""
    x = np.asarray(x, np.float64 if precision == "float64" else np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"svd_components expects a non-empty [N, D] array, got {x.shape}")
    mean = x.mean(0, dtype=np.float64)
    a = x - mean.astype(x.dtype) if centered else x
    _, s, vt = batched_svd(a[None], precision)
    eig = np.asarray(s[0], np.float64) ** 2
    total = float(np.sum(np.square(a, dtype=np.float64)))
    return Components(_orient(vt[0].T, mean), eig, mean, x.shape[0], centered, total, "svd",
                      precision)


# ---------------------------------------------------------------------------- power iteration

def _power_loop(matvec, v0, max_iter, tol):
    v0 = v0 / jnp.linalg.norm(v0)

    def cond(c):
        i, _, delta = c
        return (i < max_iter) & (delta > tol)

    def body(c):
        i, v, _ = c
        w = matvec(v)
        w = w / jnp.maximum(jnp.linalg.norm(w), jnp.finfo(w.dtype).tiny)
        s = jnp.where(jnp.dot(w, v) < 0, -1.0, 1.0).astype(w.dtype)
        return i + 1, w, jnp.linalg.norm(w - s * v)

    i, v, delta = lax.while_loop(cond, body, (jnp.int32(0), v0, jnp.asarray(jnp.inf, v0.dtype)))
    return v, jnp.dot(v, matvec(v)), i, delta


@partial(jax.jit, static_argnames=("max_iter",))
def _power_matrix(c, v0, tol, max_iter):
    mv = lambda v: jnp.dot(c, v, precision=lax.Precision.HIGHEST)
    return _power_loop(mv, v0, max_iter, tol)


@partial(jax.jit, static_argnames=("max_iter",))
def _power_data(x, shift, v0, tol, max_iter):
    xc = x - shift

    def mv(v):
        return jnp.dot(xc.T, jnp.dot(xc, v, precision=lax.Precision.HIGHEST),
                       precision=lax.Precision.HIGHEST)

    return _power_loop(mv, v0, max_iter, tol)


def _start_vector(dim, v0, seed, dtype):
    if v0 is not None and np.linalg.norm(v0) > 0:
        return np.asarray(v0, dtype)
    return np.random.default_rng(seed).standard_normal(dim).astype(dtype)


def power_iteration(matrix, v0=None, *, tol: float = 1e-6, max_iter: int = 1000, seed: int = 0,
                    precision: str = "float32"):
    """First eigenvector of a symmetric PSD ``matrix [D, D]`` by power iteration (jitted).

    Iterates ``v ← Mv / ‖Mv‖`` until ``‖v_new ∓ v‖ ≤ tol`` or ``max_iter`` steps. Returns numpy
    ``(v [D], eigenvalue, iterations)``. The start is ``v0`` (e.g. the mean, which is close to the
    first uncentered direction) or a seeded random vector. Converges at the rate
    ``λ2 / λ1`` per step; the sign of ``v`` is arbitrary."""
    m = np.asarray(matrix)
    dt = np.float64 if precision == "float64" else np.float32
    with _x64(precision):
        v, lam, it, _ = _power_matrix(jnp.asarray(m, dt), jnp.asarray(_start_vector(m.shape[0], v0, seed, dt)),
                                      jnp.asarray(tol, dt), max_iter)
        return np.asarray(v), float(lam), int(it)


def power_iteration_data(x, centered: bool = False, v0=None, *, tol: float = 1e-6,
                         max_iter: int = 1000, seed: int = 0, precision: str = "float32"):
    """First principal direction of an in-memory ``x [N, D]`` without forming ``XᵀX``: power
    iteration with ``v ← Xᵀ(Xv)`` (``X - μ`` when centered). Returns ``(v, eigenvalue, iters)``."""
    a = np.asarray(x, np.float64 if precision == "float64" else np.float32)
    shift = a.mean(0) if centered else np.zeros(a.shape[1], a.dtype)
    if v0 is None and not centered:
        v0 = a.mean(0)
    with _x64(precision):
        v, lam, it, _ = _power_data(jnp.asarray(a), jnp.asarray(shift),
                                    jnp.asarray(_start_vector(a.shape[1], v0, seed, a.dtype)),
                                    jnp.asarray(tol, a.dtype), max_iter)
        return np.asarray(v), float(lam), int(it)


# ---------------------------------------------------------------------------- streaming

def _batch_moments(x, w, dtype):
    x = x.astype(dtype)
    w = w.astype(dtype)
    n = jnp.sum(w)
    mean = jnp.sum(x * w[:, None], axis=0) / jnp.maximum(n, 1)
    xc = (x - mean) * w[:, None]
    m2 = lax.dot_general(xc, xc, (((0,), (0,)), ((), ())), precision=lax.Precision.HIGHEST,
                         preferred_element_type=dtype)
    return n, mean, m2


@partial(jax.jit, static_argnames=("dtype",), donate_argnums=(0,))
def _update_moments(state, x, w, dtype):
    n_a, mean_a, m2_a = state
    n_b, mean_b, m2_b = _batch_moments(x, w, dtype)
    n = n_a + n_b
    frac = jnp.where(n > 0, n_b / jnp.maximum(n, 1), 0).astype(dtype)
    delta = mean_b - mean_a
    mean = mean_a + delta * frac
    m2 = m2_a + m2_b + jnp.outer(delta, delta) * (n_a * frac)
    return n, mean, m2


@partial(jax.jit, static_argnames=("dtype",))
def _merge_moments(a, b, dtype):
    n_a, mean_a, m2_a = a
    n_b, mean_b, m2_b = b
    n = n_a + n_b
    frac = jnp.where(n > 0, n_b / jnp.maximum(n, 1), 0).astype(dtype)
    delta = mean_b - mean_a
    return n, mean_a + delta * frac, m2_a + m2_b + jnp.outer(delta, delta) * (n_a * frac)


@jax.jit
def _eigh_desc(c):
    w, v = jnp.linalg.eigh(c)
    return w[::-1], v[:, ::-1]


class StreamingMoments:
    """Count, mean and centred scatter of a stream of ``[B, D]`` batches, on device.

    ``update(batch)`` pads the batch to a power-of-two row count (a multiple of the device count
    of ``sharding``) so that a long stream compiles a handful of programs, computes the batch's
    moments in ``precision`` and merges them (Chan's update; see the module docstring).
    ``merge(other)`` combines two accumulators (e.g. from separate processes or devices).
    ``gram(centered)`` gives ``XᵀX`` or ``(X-μ)ᵀ(X-μ)`` as float64 numpy; ``components(...)``
    diagonalises it. Memory: the ``[D, D]`` state plus one batch."""

    def __init__(self, dim: int, precision: str = "float32", sharding=None, min_rows: int = 8):
        self.dim, self.precision, self.sharding, self.min_rows = int(dim), precision, sharding, min_rows
        self.dtype = _dtype(precision)
        self.count = 0
        self.seconds = 0.0
        with _x64(precision):
            self._state = (jnp.zeros((), self.dtype), jnp.zeros(dim, self.dtype),
                           jnp.zeros((dim, dim), self.dtype))

    @property
    def nbytes(self) -> int:
        return self.dim * (self.dim + 1) * (8 if self.precision == "float64" else 4)

    def _padded_rows(self, rows: int) -> int:
        p = max(self.min_rows, 1 << max(rows - 1, 0).bit_length())
        if self.sharding is not None:
            nd = len(self.sharding.device_set)
            p = -(-p // nd) * nd
        return p

    def update(self, x) -> StreamingMoments:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected a batch [B, {self.dim}], got {x.shape}")
        b = x.shape[0]
        if b == 0:
            return self
        t0 = time.perf_counter()
        rows = self._padded_rows(b)
        xdt = np.float64 if self.precision == "float64" else np.float32
        xp = np.zeros((rows, self.dim), xdt)
        xp[:b] = x
        w = np.zeros(rows, xdt)
        w[:b] = 1
        with _x64(self.precision):
            if self.sharding is not None:
                xp, w = jax.device_put(xp, self.sharding), jax.device_put(w, self.sharding)
            self._state = _update_moments(self._state, xp, w, self.dtype)
            self._state[0].block_until_ready()
        self.count += b
        self.seconds += time.perf_counter() - t0
        return self

    def merge(self, other: StreamingMoments) -> StreamingMoments:
        if other.dim != self.dim or other.precision != self.precision:
            raise ValueError("can only merge accumulators of the same dim and precision")
        with _x64(self.precision):
            self._state = _merge_moments(self._state, other._state, self.dtype)
        self.count += other.count
        return self

    @property
    def mean(self) -> np.ndarray:
        return np.asarray(self._state[1], np.float64)

    def gram(self, centered: bool) -> np.ndarray:
        n, mean, m2 = (np.asarray(a, np.float64) for a in self._state)
        return m2 if centered else m2 + float(n) * np.outer(mean, mean)

    def components(self, centered: bool = False, method: str = "eigh", n_components: int | None = None,
                   tol: float = 1e-6, max_iter: int = 1000) -> Components:
        """``eigh`` of the (un)centered matrix in ``precision`` (all directions, or the first
        ``n_components``), or ``power``: the first direction only by power iteration."""
        if self.count == 0:
            raise ValueError("no rows accumulated")
        t0 = time.perf_counter()
        c = self.gram(centered)
        dt = np.float64 if self.precision == "float64" else np.float32
        total = float(np.trace(c))
        mean = self.mean
        if method == "eigh":
            if jax.default_backend() == "cpu":
                # LAPACK through numpy: ~10x faster than XLA:CPU's eigh at D = 576 on 2 cores.
                w, v = np.linalg.eigh(c.astype(dt))
                w, v = np.asarray(w[::-1], np.float64), np.ascontiguousarray(v[:, ::-1])
            else:
                with _x64(self.precision):
                    w, v = _eigh_desc(jnp.asarray(c, dt))
                    w, v = np.asarray(w, np.float64), np.asarray(v)
            if n_components is not None:
                w, v = w[:n_components], v[:, :n_components]
            extra = {}
        elif method == "power":
            v0 = mean if not centered else None
            v, lam, it = power_iteration(c, v0, tol=tol, max_iter=max_iter, precision=self.precision)
            w, v = np.asarray([lam]), v[:, None]
            extra = {"iterations": it}
        else:
            raise ValueError(f"method must be 'eigh' or 'power', got {method!r}")
        extra["seconds_diagonalise"] = time.perf_counter() - t0
        return Components(_orient(v, mean), w, mean, self.count, centered, total, method,
                          self.precision, extra)


# ============================================================================ analyses

def variation(backbone: Components, embedder_mean, backbone_mean=None, n: int | None = None) -> dict:
    """The paper's variation: ``diff_i = (μ_embedder - μ_backbone) @ v_i`` on the backbone's
    directions (= mean over the texts of the embedder's minus the backbone's coefficients), with
    each component's share ``diff_i² / Σ diff²`` and the backbone's explained shares."""
    mb = np.asarray(backbone.mean if backbone_mean is None else backbone_mean, np.float64)
    me = np.asarray(embedder_mean, np.float64)
    if me.shape != mb.shape:
        raise ValueError(f"embedder mean has shape {me.shape}, the backbone's {mb.shape}: the "
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
            raise ValueError("lambda 'variation' needs a variation report")
        lam = float(variation_report["lambda"])
    else:
        raise ValueError(f"lambda must be a number, 'remove' or 'variation', got {how!r}")
    return scale * lam


def model_hash(model) -> str:
    """Content hash of a model's LM head (the matrix the shift is projected through): sha256 of
    its float32 bytes and shape, first 16 hex digits."""
    head = np.asarray(model.lm_head, np.float32)
    h = hashlib.sha256(str(head.shape).encode())
    h.update(np.ascontiguousarray(head).tobytes())
    return h.hexdigest()[:16]


def make_shift(components: Components, lam: float, model=None):
    """``keytok_jax.embedder.Shift(v1, λ, model_hash)``: save it with ``.save(path)`` and pass it
    to ``python -m keytok_jax.embed --shift``."""
    from .embedder import Shift

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
    from .projection import topk_projection

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


# ---------------------------------------------------------------------------- metrics

def text_token_lists(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """``tokenizer.encode(text)`` for each text, as the official metric (default special tokens)."""
    return [list(tokenizer.encode(t)) for t in texts]


class AlignmentAccumulator:
    """Streaming hit@k, local and global alignment (official ``calculate_metric``; see the module
    docstring). ``depth="k"`` (official) slices the top ``k`` ids by ``len(L)``; ``depth="T"``
    slices the given ids (which must then be at least ``len(L)`` wide) by ``len(L)``."""

    def __init__(self, k: int = 10, depth: str = "k"):
        if k < 1:
            raise ValueError("k must be positive")
        if depth not in ("k", "T"):
            raise ValueError(f"depth must be 'k' or 'T', got {depth!r}")
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


# ============================================================================ inputs

def _sts_pairs(path: Path, gold: Path | None, min_score, cleanup: bool):
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
            raise ValueError(f"{path}:{i}: expected two tab-separated sentences")
        if scores is not None:
            s = scores[i - 1].strip()
            if not s or (min_score is not None and not float(s) > min_score):
                continue
        elif min_score is not None:
            raise ValueError(f"{path}: --min-score needs the gold file (--gold)")
        pairs.append((i, cols[0].strip(), cols[1].strip(), float(scores[i - 1]) if scores else None))
    return pairs


def _stsb_pairs(path: Path, min_score):
    pairs = []
    with open(path, encoding="utf-8") as f:
        for i, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if len(row) < 7:
                raise ValueError(f"{path}:{i}: expected STS-B columns (score in 5th, sentences in 6th and 7th)")
            if min_score is not None and not float(row[4]) > min_score:
                continue
            pairs.append((i, row[5], row[6], float(row[4])))
    return pairs


def read_texts(path, format: str = "auto", *, min_score: float | None = None, gold=None,
               sts_cleanup: bool = True, id_field: str = "_id",
               text_fields: Sequence[str] = ("title", "text"), limit: int | None = None
               ) -> Iterator[tuple[str, str]]:
    """``(id, text)`` pairs, streamed for the corpus formats of :mod:`keytok_jax.readers`
    (``txt``: one text per line, line endings stripped), plus ``sts`` (SentEval ``STS.input.*``
    pairs; gold scores from ``gold`` or the matching ``STS.gs.*``; pairs with gold > ``min_score``;
    the official " ."/" ?" removal unless ``sts_cleanup=False``; all first sentences, then all
    second ones) and ``stsb`` (STS-B csv; pairs with score > ``min_score``; same order)."""
    path = Path(path)
    fmt = format
    if fmt == "auto" and path.name.startswith("STS.input."):
        fmt = "sts"
    elif fmt == "auto" and path.name.startswith("sts-") and path.suffix == ".csv":
        fmt = "stsb"
    n = 0
    if fmt in ("sts", "stsb"):
        if fmt == "sts":
            if gold is None:
                cand = path.with_name(path.name.replace("STS.input.", "STS.gs.", 1))
                gold = cand if cand.exists() and cand != path else None
            pairs = _sts_pairs(path, Path(gold) if gold else None, min_score, sts_cleanup)
        else:
            pairs = _stsb_pairs(path, min_score)
        for side, col in (("a", 1), ("b", 2)):
            for p in pairs:
                if limit is not None and n >= limit:
                    return
                n += 1
                yield f"{p[0]}{side}", p[col]
        return
    from .readers import read_corpus

    for doc in read_corpus(path, format=fmt, id_field=id_field, text_fields=text_fields,
                           on_error="skip", rejects_path=os.devnull):
        if limit is not None and n >= limit:
            return
        n += 1
        yield doc.id, doc.text


# ---------------------------------------------------------------------------- sources

@dataclass
class Batch:
    ids: list
    texts: list | None
    dense: np.ndarray  # float32 [B, D], pooled, before any shift, not normalised


def _chunks(it: Iterable, n: int) -> Iterator[list]:
    buf = []
    for x in it:
        buf.append(x)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf


class Source:
    """Where embeddings come from: the ``dense`` array of a store written by
    ``python -m keytok_jax.embed --dense`` (no re-embedding; texts for the metrics are re-read
    from the store's input and checked against its ids), or texts embedded on the fly with an
    :class:`~keytok_jax.embedder.Embedder`. Either way ``batches()`` streams ``[B, D]`` float32
    pooled vectors (before normalisation, as the LM-head projection and the shift see them)."""

    def __init__(self, *, store=None, texts=None, model=None, settings: dict | None = None,
                 text_format: str = "auto", min_score=None, gold=None, sts_cleanup: bool = True,
                 id_field: str = "_id", text_fields=("title", "text"), limit: int | None = None,
                 batch_rows: int = 512, dtype: str = "float32", batch_tokens: int = 8192,
                 texts_for_store=None):
        if (store is None) == (texts is None):
            raise ValueError("give exactly one of store= and texts=")
        self.limit, self.batch_rows = limit, batch_rows
        self.text_kw = {"format": text_format, "min_score": min_score, "gold": gold,
                        "sts_cleanup": sts_cleanup, "id_field": id_field, "text_fields": tuple(text_fields)}
        self._model = model if not isinstance(model, str) else None
        self._model_name = model if isinstance(model, str) else None
        self.dtype = dtype
        self.embedder = None
        if store is not None:
            from . import store as store_lib

            self.store = store if isinstance(store, store_lib.Store) else store_lib.open(store)
            s = self.store.settings
            if self.store.dense is None:
                raise ValueError(f"{self.store.path} has no dense array: rerun the embed job with --dense")
            if s.get("normalize") or s.get("matryoshka_dim"):
                raise ValueError(f"{self.store.path}: its dense vectors are normalised or truncated; the "
                                 "spectral analysis needs the pooled vectors (embed without "
                                 "--normalize / --matryoshka-dim)")
            self.settings = dict(s)
            self._model_name = self._model_name or s.get("model")
            self.dtype = s.get("dtype", dtype)
            self.texts_for_store = texts_for_store
            self.texts_path = None
        else:
            from .embedder import EmbedSettings

            self.store = None
            self.texts_path = Path(texts)
            self.settings = {**EmbedSettings().as_dict(), **(settings or {})}
            if self.settings.get("normalize") or self.settings.get("matryoshka_dim"):
                raise ValueError("the spectral analysis needs pooled vectors: no normalize / matryoshka_dim")
            self._embed_settings = EmbedSettings(**{k: v for k, v in self.settings.items()
                                                    if k in EmbedSettings.__dataclass_fields__})
            self.batch_tokens = batch_tokens
            self._model_name = self._model_name or "smollm2-135m"

    @property
    def model(self):
        if self._model is None:
            from .loading import load_model

            self._model = load_model(self._model_name, dtype=self.dtype)
        return self._model

    @property
    def dim(self) -> int:
        return self.store.dim if self.store is not None else self.model.config.output_dim

    def describe(self) -> dict:
        if self.store is not None:
            return {"store": str(self.store.path), "rows": len(self.store), "model": self._model_name,
                    "pooling": self.settings.get("pooling"), "prompt": self.settings.get("prompt"),
                    "store_shift": self.settings.get("shift"), "limit": self.limit}
        keep = ("pooling", "prompt", "instruction", "instruction_format", "attention", "max_length")
        return {"texts": str(self.texts_path), **{k: v for k, v in self.text_kw.items() if k != "gold"},
                "model": self._model_name, **{k: self.settings[k] for k in keep}, "limit": self.limit}

    def _get_embedder(self):
        if self.embedder is None:
            from .embedder import Embedder

            self.embedder = Embedder(self.model, self._embed_settings, batch_tokens=self.batch_tokens)
        return self.embedder

    def _store_texts(self):
        if self.texts_for_store is not None:
            return read_texts(self.texts_for_store, limit=self.limit, **self.text_kw)
        s = self.settings
        from .readers import read_corpus

        docs = read_corpus(s["input"], format=s.get("format", "auto"), id_field=s.get("id_field", "_id"),
                           text_fields=tuple(s.get("text_fields", ("title", "text"))),
                           on_error="skip", rejects_path=os.devnull)
        return ((d.id, d.text) for d in docs)

    def _store_id_batches(self, n: int):
        """(start, stop, ids) over the first ``n`` rows, reading one shard's ids at a time."""
        size = self.store.shard_size
        for shard in range(-(-n // size)):
            ids = self.store.shard_ids(shard)
            base = shard * size
            for lo in range(0, len(ids), self.batch_rows):
                start = base + lo
                if start >= n:
                    return
                stop = min(n, start + self.batch_rows, base + len(ids))
                yield start, stop, ids[lo: lo + (stop - start)]

    def batches(self, with_texts: bool = False) -> Iterator[Batch]:
        if self.store is not None:
            n = len(self.store) if self.limit is None else min(self.limit, len(self.store))
            texts = self._store_texts() if with_texts else None
            for start, stop, ids in self._store_id_batches(n):
                dense = np.asarray(self.store.dense[start:stop].read().result(), np.float32)
                tx = None
                if texts is not None:
                    got = [next(texts, None) for _ in range(stop - start)]
                    for want, g in zip(ids, got):
                        if g is None or g[0] != want:
                            raise ValueError(f"{self.store.path}: row id {want!r} but the input gives "
                                             f"{None if g is None else g[0]!r}; pass the store's texts "
                                             "with --store-texts")
                    tx = [g[1] for g in got]
                yield Batch(list(ids), tx, dense)
            return
        emb = self._get_embedder()
        for chunk in _chunks(read_texts(self.texts_path, limit=self.limit, **self.text_kw), self.batch_rows):
            texts = [t for _, t in chunk]
            out = emb.embed_tokenized(emb.tokenize(texts))
            yield Batch([i for i, _ in chunk], texts, np.asarray(out.dense, np.float32))


class _Spill:
    """Batches spilled to disk (dense as raw float32, ids and texts as JSON lines) so a second
    pass needs no re-embedding; memory stays one batch."""

    def __init__(self, dim: int, directory=None):
        self.dir = Path(tempfile.mkdtemp(prefix="keytok-spill-", dir=directory))
        self.dim = dim
        self._dense = open(self.dir / "dense.f32", "wb")  # noqa: SIM115 - closed in replay/close
        self._meta = open(self.dir / "meta.jsonl", "w", encoding="utf-8")  # noqa: SIM115
        self.sizes: list[int] = []

    def add(self, batch: Batch) -> Batch:
        self._dense.write(np.ascontiguousarray(batch.dense, np.float32).tobytes())
        self._meta.write(json.dumps([batch.ids, batch.texts]) + "\n")
        self.sizes.append(len(batch.ids))
        return batch

    def replay(self) -> Iterator[Batch]:
        self._dense.close()
        self._meta.close()
        with open(self.dir / "dense.f32", "rb") as fd, open(self.dir / "meta.jsonl", encoding="utf-8") as fm:
            for size, line in zip(self.sizes, fm):
                ids, texts = json.loads(line)
                dense = np.frombuffer(fd.read(size * self.dim * 4), np.float32).reshape(size, self.dim)
                yield Batch(ids, texts, dense)

    def close(self):
        for f in (self._dense, self._meta):
            if not f.closed:
                f.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# ============================================================================ reports

class TokenDecoder:
    """Token id → string (``tokenizer.decode([id])``), cached."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._one = lru_cache(maxsize=None)(lambda i: tokenizer.decode([i]) if i >= 0 else "")

    def __call__(self, i) -> str:
        return self._one(int(i))

    def many(self, ids) -> list[str]:
        return [self(i) for i in ids]


def _peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 / 1024 if sys.platform == "darwin" else r / 1024


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n",
                    encoding="utf-8")


def _plots():
    try:
        from . import plots
    except ImportError as e:  # matplotlib missing
        print(f"warning: no plots ({e}); pip install matplotlib", file=sys.stderr)
        return None
    return plots


def _direction_tokens(components: Components, lm_head, decoder: TokenDecoder, n: int, k: int = 8):
    """Top tokens of ``±v_i`` through the LM head, for the first ``n`` directions."""
    n = min(n, components.directions.shape[1])
    V = components.directions[:, :n].T.astype(np.float32)
    pos, _ = top_tokens(V, lm_head, k)
    neg, _ = top_tokens(-V, lm_head, k)
    return [(decoder.many(p), decoder.many(q)) for p, q in zip(pos, neg)]


# ============================================================================ drivers

def stream_components(source: Source, precision: str = "float32", sharding=None,
                      keep: _Spill | None = None, on_batch=None) -> StreamingMoments:
    """One pass over ``source``: the streaming moments (and, optionally, a spill of the batches)."""
    acc = StreamingMoments(source.dim, precision, sharding)
    for batch in source.batches(with_texts=keep is not None):
        acc.update(batch.dense)
        if keep is not None:
            keep.add(batch)
        if on_batch is not None:
            on_batch(batch)
    return acc


def evaluate_alignment(batches: Iterable[Batch], model, *, k: int = 10, depth: str = "k",
                       shift_vec=None, examples: int = 0, rows_csv=None, decoder=None,
                       chunk: int = 4096) -> dict:
    """Alignment metrics of ``batches`` before and (with ``shift_vec``) after the shift, plus the
    first ``examples`` texts with their top-k tokens; ``rows_csv`` (an open csv.writer) receives
    one row per text."""
    tok = model.tokenizer
    decoder = decoder or TokenDecoder(tok)
    head = model.lm_head
    acc_before = AlignmentAccumulator(k, depth)
    acc_after = AlignmentAccumulator(k, depth) if shift_vec is not None else None
    shown: list[dict] = []
    for batch in batches:
        lists = text_token_lists(tok, batch.texts)
        width = k
        if depth == "T":
            longest = max((len(t) for t in lists), default=0)
            width = min(max(k, -(-longest // 64) * 64), int(head.shape[0]))
        ids_b, lg_b = top_tokens(batch.dense, head, width, chunk=chunk)
        res_b = acc_before.update(lists, ids_b)
        if acc_after is not None:
            ids_a, lg_a = top_tokens(batch.dense, head, width, shift_vec=shift_vec, chunk=chunk)
            res_a = acc_after.update(lists, ids_a)
        for j, doc_id in enumerate(batch.ids):
            before = decoder.many(ids_b[j, :k])
            after = decoder.many(ids_a[j, :k]) if acc_after is not None else None
            if len(shown) < examples:
                ex = {"id": doc_id, "text": batch.texts[j], "text_tokens": decoder.many(lists[j]),
                      "top_before": before, "logits_before": lg_b[j, :k].tolist()}
                if after is not None:
                    ex.update(top_after=after, logits_after=lg_a[j, :k].tolist())
                shown.append(ex)
            if rows_csv is not None:
                rb = res_b[j]
                row = [doc_id, batch.texts[j], len(lists[j]),
                       "" if rb is None else rb[0], "" if rb is None else f"{rb[1]:.4f}",
                       " | ".join(before)]
                if after is not None:
                    ra = res_a[j]
                    row += ["" if ra is None else ra[0], "" if ra is None else f"{ra[1]:.4f}",
                            " | ".join(after)]
                rows_csv.writerow(row)
    out = {"before": acc_before.result(), "examples": shown}
    if acc_after is not None:
        out["after"] = acc_after.result()
    return out


# ============================================================================ CLI

def _add_text_args(p, *, required=False):
    g = p.add_argument_group("texts")
    g.add_argument("--texts", required=required,
                   help="texts to embed: .txt (one per line), .jsonl/.tsv/.parquet/BEIR folder (as the "
                        "embed job), a SentEval STS.input.* file (format sts) or an STS-B sts-*.csv (stsb)")
    g.add_argument("--format", default="auto", choices=TEXT_FORMATS,
                   help="format of --texts (default: from the path; STS.input.* → sts, sts-*.csv → stsb)")
    g.add_argument("--min-score", type=float,
                   help="sts/stsb: keep pairs with gold score > this (the paper uses 4)")
    g.add_argument("--gold", help="sts: gold score file (default: the STS.gs.* beside the input)")
    g.add_argument("--no-sts-cleanup", action="store_true",
                   help="sts: keep ' .' and ' ?' (the official loader removes them)")
    g.add_argument("--id-field", default="_id", help="jsonl/parquet id field (default: %(default)s)")
    g.add_argument("--text-fields", nargs="+", default=["title", "text"],
                   help="jsonl/parquet fields joined into the text (default: title text)")
    g.add_argument("--limit", type=int, help="use only the first N texts / store rows")


def _add_model_args(p, prefix: str = "", role: str = "", store: bool = True):
    dash = f"--{prefix}" if prefix else "--"
    what = f" of the {role}" if role else ""
    g = p.add_argument_group(f"{role or 'model'} embeddings")
    if store:
        g.add_argument(f"{dash}store", help=f"store{what} written by python -m keytok_jax.embed --dense "
                                            "(instead of embedding --texts)")
    g.add_argument(f"{dash}model", help=f"model{what}: alias, HF folder, .gguf or hub id "
                                        "(default: smollm2-135m, or the store's)")
    g.add_argument(f"{dash}config", help=f"embed preset YAML{what} (configs/*.yaml: pooling, prompt, ...)")
    g.add_argument(f"{dash}pooling", choices=["last", "mean", "weighted_mean"],
                   help=f"pooling{what} (default: weighted_mean, or the preset's)")
    g.add_argument(f"{dash}prompt", help=f"prompt template with {{text}} or none/prompteol{what} "
                                         "(default: none, or the preset's)")
    g.add_argument(f"{dash}instruction", help=f"instruction{what}")
    g.add_argument(f"{dash}instruction-format", help=f"instruction format{what} (e5-mistral, gritlm, llm2vec, plain or a template)")
    g.add_argument(f"{dash}attention", choices=["causal", "bidirectional"], help=f"attention{what} (default: causal)")
    g.add_argument(f"{dash}max-length", type=int, help=f"max tokens per text{what} (default: 512, or the preset's)")


def _add_common(p):
    g = p.add_argument_group("run")
    g.add_argument("--output", required=True, help="output directory (created)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="model parameter dtype when embedding texts (default: %(default)s)")
    g.add_argument("--batch-rows", type=int, default=512,
                   help="texts (or store rows) per batch; bounds memory (default: %(default)s)")
    g.add_argument("--batch-tokens", type=int, default=8192,
                   help="padded tokens per device batch when embedding (default: %(default)s)")
    g.add_argument("--store-texts", help="texts of a store, when its recorded input moved (same order)")
    g.add_argument("--no-plots", action="store_true", help="write no PNG plots")


def _add_components_args(p, centered_flag: bool = True):
    g = p.add_argument_group("components")
    g.add_argument("--precision", default="float32", choices=PRECISIONS,
                   help="accumulation and eigh precision (default: %(default)s)")
    if centered_flag:
        g.add_argument("--centered", action="store_true",
                       help="use the centered components (default: uncentered, as the paper's code)")
    g.add_argument("--method", default="eigh", choices=["eigh", "power"],
                   help="eigh (all directions) or power iteration (first only; large D) (default: %(default)s)")


def _settings_from(args, prefix: str = "") -> dict:
    a = vars(args)
    key = lambda name: (prefix.replace("-", "_") + name)
    settings = dict(DEFAULT_SETTINGS)
    cfg = a.get(key("config"))
    model = None
    if cfg:
        import yaml

        preset = yaml.safe_load(Path(cfg).read_text()) or {}
        model = preset.pop("model", None)
        preset.pop("description", None)
        for drop in ("top_k", "weighting", "normalize", "matryoshka_dim", "dtype"):
            preset.pop(drop, None)
        settings.update(preset)
    for name in ("pooling", "prompt", "instruction", "instruction_format", "attention", "max_length"):
        value = a.get(key(name))
        if value is None and prefix:
            value = a.get(name)             # variation: --max-length etc. for both roles
        if value is not None:
            settings[name] = value
    return {"settings": settings, "model": a.get(key("model")) or (a.get("model") if prefix else None) or model}


def _source(args, prefix: str = "") -> Source:
    a = vars(args)
    store = a.get(prefix.replace("-", "_") + "store")
    ms = _settings_from(args, prefix)
    common = {"limit": args.limit, "batch_rows": args.batch_rows, "dtype": args.dtype}
    if store:
        return Source(store=store, model=ms["model"], texts_for_store=args.store_texts or args.texts,
                      text_format=args.format, min_score=args.min_score, gold=args.gold,
                      sts_cleanup=not args.no_sts_cleanup, id_field=args.id_field,
                      text_fields=args.text_fields, **common)
    if not args.texts:
        raise SystemExit(f"error: give --texts or --{prefix}store")
    return Source(texts=args.texts, model=ms["model"], settings=ms["settings"], text_format=args.format,
                  min_score=args.min_score, gold=args.gold, sts_cleanup=not args.no_sts_cleanup,
                  id_field=args.id_field, text_fields=args.text_fields,
                  batch_tokens=args.batch_tokens, **common)


def _components_report(comp: Components, model, decoder, n: int) -> tuple[dict, list[list]]:
    dirs = _direction_tokens(comp, model.lm_head, decoder, n)
    summary = comp.summary(n)
    rows = []
    cum = np.cumsum(comp.explained)
    for i, (pos, neg) in enumerate(dirs):
        rows.append([i + 1, f"{comp.eigenvalues[i]:.6g}", f"{comp.singular_values[i]:.6g}",
                     f"{comp.explained[i]:.6f}", f"{cum[i]:.6f}",
                     f"{float(comp.mean @ comp.directions[:, i]):.6g}", " | ".join(pos), " | ".join(neg)])
    summary["direction_tokens"] = [{"plus": p, "minus": m} for p, m in dirs]
    return summary, rows


COMPONENT_HEADER = ["component", "eigenvalue", "singular_value", "explained", "cumulative",
                    "mean_coefficient", "top_tokens_plus", "top_tokens_minus"]


def cmd_components(args) -> dict:
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    src = _source(args)
    rss0 = _peak_rss_mb()
    t0 = time.perf_counter()
    acc = stream_components(src, args.precision)
    t_stream = time.perf_counter() - t0
    rss_stream = _peak_rss_mb()      # a store source has not loaded the model yet
    model = src.model
    decoder = TokenDecoder(model.tokenizer)
    report = {"command": "components", "source": src.describe(), "rows": acc.count,
              "precision": args.precision, "seconds_total": t_stream,
              "seconds_accumulate": acc.seconds, "accumulator_bytes": acc.nbytes,
              "peak_rss_mb_streaming": rss_stream}
    for centered in (False, True):
        t1 = time.perf_counter()
        comp = acc.components(centered, method=args.method)
        name = "centered" if centered else "uncentered"
        comp.save(out / f"components-{name}.npz")
        summary, rows = _components_report(comp, model, decoder, args.report_components)
        summary["seconds_diagonalise"] = time.perf_counter() - t1
        report[name] = summary
        with open(out / f"components-{name}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(COMPONENT_HEADER)
            w.writerows(rows)
        if not args.no_plots and (plots := _plots()):
            plots.plot_explained(comp.explained, out / f"components-{name}.png",
                                 title=f"{name} components ({acc.count} texts)")
    report["peak_rss_mb"] = _peak_rss_mb()
    report["peak_rss_mb_at_start"] = rss0
    _write_json(out / "components.json", report)
    return report


def cmd_variation(args) -> dict:
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    back = _source(args, "backbone-")
    emb = _source(args, "embedder-")
    if emb._model_name == back._model_name and emb.dtype == back.dtype:
        emb._model = back.model          # one copy of a shared model
    if back.dim != emb.dim:
        raise SystemExit(f"error: backbone dim {back.dim} != embedder dim {emb.dim}")
    acc_b = StreamingMoments(back.dim, args.precision)
    ids_b = hashlib.sha256()
    for batch in back.batches():
        acc_b.update(batch.dense)
        ids_b.update(json.dumps(batch.ids).encode())
    acc_e = StreamingMoments(emb.dim, args.precision)
    ids_e = hashlib.sha256()
    for batch in emb.batches():
        acc_e.update(batch.dense)
        ids_e.update(json.dumps(batch.ids).encode())
    if acc_b.count != acc_e.count or ids_b.digest() != ids_e.digest():
        raise SystemExit("error: the backbone and the embedder saw different texts "
                         f"({acc_b.count} vs {acc_e.count} rows, or different ids)")
    comp = acc_b.components(args.centered, method="eigh")
    comp.save(out / "components-backbone.npz")
    var = variation(comp, acc_e.mean)
    model = back.model
    decoder = TokenDecoder(model.tokenizer)
    n = args.report_components
    dirs = _direction_tokens(comp, model.lm_head, decoder, n)
    report = {"command": "variation", "backbone": back.describe(), "embedder": emb.describe(),
              "rows": acc_b.count, "centered": args.centered, "precision": args.precision,
              "lambda": var["lambda"], "mean_diff_norm": var["mean_diff_norm"],
              "first_share": float(var["share"][0]),
              "components": [{"component": i + 1, "diff": float(var["diff"][i]),
                              "share": float(var["share"][i]), "explained": float(var["explained"][i]),
                              "backbone_coeff": float(var["backbone_coeff"][i]),
                              "embedder_coeff": float(var["embedder_coeff"][i]),
                              **({"tokens_plus": dirs[i][0], "tokens_minus": dirs[i][1]} if i < len(dirs) else {})}
                             for i in range(len(var["diff"]))]}
    with open(out / "variation.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["component", "diff", "share", "explained", "backbone_coeff", "embedder_coeff"])
        for i in range(len(var["diff"])):
            w.writerow([i + 1, f"{var['diff'][i]:.6g}", f"{var['share'][i]:.6f}", f"{var['explained'][i]:.6f}",
                        f"{var['backbone_coeff'][i]:.6g}", f"{var['embedder_coeff'][i]:.6g}"])
    np.save(out / "variation-diff.npy", var["diff"])
    if args.shift_out:
        make_shift(comp, var["lambda"], model).save(args.shift_out)
        report["shift_file"] = args.shift_out
    if not args.no_plots and (plots := _plots()):
        plots.plot_variation(var["diff"], out / "variation.png",
                             title=f"variation per component ({acc_b.count} texts)")
    _write_json(out / "variation.json", report)
    return report


def _parse_lambda(value: str) -> tuple[Any, dict | None, str]:
    """--lambda → (how, variation report, kind) for :func:`shift_lambda`."""
    try:
        return float(value), None, "given"
    except ValueError:
        pass
    if value == "remove":
        return "remove", None, "remove"
    p = Path(value)
    if p.exists():
        data = json.loads(p.read_text())
        if "lambda" not in data:
            raise SystemExit(f"error: {p} has no 'lambda' (expected a variation.json)")
        return "variation", data, "variation"
    raise SystemExit(f"error: --lambda must be a number, 'remove' or a variation.json, got {value!r}")


ALIGN_HEADER = ["id", "text", "text_tokens", "hit_before", "local_before", "top_before"]
ALIGN_HEADER_AFTER = ["hit_after", "local_after", "top_after"]


def _write_align_outputs(out: Path, stem: str, res: dict, args, title: str, plots_ok: bool):
    if plots_ok and (plots := _plots()) and res["examples"] and "after" in res:
        for i, ex in enumerate(res["examples"][: args.plot_examples]):
            plots.plot_before_after(ex["top_before"], ex["logits_before"], ex["top_after"],
                                    ex["logits_after"], out / f"{stem}-example{i + 1}.png",
                                    title=f"{title}: {ex['text'][:60]}")


def cmd_align(args) -> dict:
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    src = _source(args)
    shift = None
    if args.shift:
        from .embedder import Shift

        shift = Shift.load(args.shift)
    model = src.model
    decoder = TokenDecoder(model.tokenizer)
    t0 = time.perf_counter()
    with open(out / "align.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(ALIGN_HEADER + (ALIGN_HEADER_AFTER if shift else []))
        res = evaluate_alignment(src.batches(with_texts=True), model, k=args.k, depth=args.depth,
                                 shift_vec=None if shift is None else shift.lam * shift.direction,
                                 examples=args.examples, rows_csv=w, decoder=decoder)
    report = {"command": "align", "source": src.describe(), "k": args.k, "depth": args.depth,
              "shift": args.shift, "lambda": None if shift is None else shift.lam,
              "seconds": time.perf_counter() - t0, **res}
    _write_align_outputs(out, "align", res, args, "top-k before/after", not args.no_plots)
    _write_json(out / "align.json", report)
    return report


def cmd_shift(args) -> dict:
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    src = _source(args)
    t0 = time.perf_counter()
    spill = None
    try:
        if args.components:
            comp = Components.load(args.components)
            batches = src.batches(with_texts=True)
            acc = None
        else:
            spill = _Spill(src.dim, out) if src.store is None else None
            acc = stream_components(src, args.precision, keep=spill)
            comp = acc.components(args.centered, method=args.method)
            comp.save(out / f"components-{'centered' if args.centered else 'uncentered'}.npz")
            batches = spill.replay() if spill is not None else src.batches(with_texts=True)
        t_comp = time.perf_counter() - t0
        how, var_report, lam_kind = _parse_lambda(args.lam)
        lam = shift_lambda(comp, how, var_report, scale=args.lambda_scale)
        model = src.model
        shift = make_shift(comp, lam, model)
        shift.save(out / "shift.json")
        decoder = TokenDecoder(model.tokenizer)
        with open(out / "shift.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(ALIGN_HEADER + ALIGN_HEADER_AFTER)
            res = evaluate_alignment(batches, model, k=args.k, depth=args.depth,
                                     shift_vec=shift.lam * shift.direction, examples=args.examples,
                                     rows_csv=w, decoder=decoder)
    finally:
        if spill is not None:
            spill.close()
    report = {"command": "shift", "source": src.describe(), "k": args.k, "depth": args.depth,
              "centered": comp.centered, "lambda": lam, "lambda_from": lam_kind,
              "lambda_scale": args.lambda_scale,
              "first_coefficient_mean": float(comp.mean @ comp.first),
              "first_explained": float(comp.explained[0]), "model_hash": shift.model_hash,
              "shift_file": str(out / "shift.json"), "seconds_components": t_comp,
              "seconds": time.perf_counter() - t0, **res}
    _write_align_outputs(out, "shift", res, args, f"λ={lam:.3g}", not args.no_plots)
    _write_json(out / "shift-report.json", report)
    return report


def _load_direction(path: str) -> np.ndarray:
    if path.endswith(".npz"):
        return Components.load(path).first
    from .embedder import Shift

    return Shift.load(path).direction


def cmd_contribution(args) -> dict:
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if not args.text:
        raise SystemExit("error: give at least one --text")
    ms = _settings_from(args)
    from .embedder import Embedder, EmbedSettings
    from .loading import load_model

    model = load_model(ms["model"] or "smollm2-135m", dtype=args.dtype)
    emb = Embedder(model, EmbedSettings(**ms["settings"]))
    dense = emb.embed_tokenized(emb.tokenize(args.text)).dense
    v = _load_direction(args.direction)
    decoder = TokenDecoder(model.tokenizer)
    report = {"command": "contribution", "model": ms["model"] or "smollm2-135m", **ms["settings"],
              "direction": args.direction, "texts": []}
    with open(out / "contribution.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "rank", "token_id", "token", "total", "first_component", "residual"])
        for i, (text, e) in enumerate(zip(args.text, dense)):
            c = contribution(e, v, model.lm_head, args.k)
            toks = decoder.many(c["ids"])
            for r, (tid, tk) in enumerate(zip(c["ids"], toks)):
                w.writerow([text, r + 1, int(tid), tk, f"{c['total'][r]:.4f}", f"{c['first'][r]:.4f}",
                            f"{c['residual'][r]:.4f}"])
            report["texts"].append({"text": text, "coefficient": c["coefficient"], "tokens": toks,
                                    "total": c["total"], "first": c["first"], "residual": c["residual"]})
            if not args.no_plots and (plots := _plots()):
                plots.plot_contribution(toks, c["total"], c["first"], c["residual"],
                                        out / f"contribution-{i + 1}.png", title=text[:80])
    _write_json(out / "contribution.json", report)
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m keytok_jax.spectral", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Spectral analysis of embeddings and their aligned tokens (arXiv 2406.17378).\n\n"
                    "Embeddings come from a store written by `python -m keytok_jax.embed --dense` (--store) "
                    "or from texts embedded on the fly (--texts with --model/--config/--pooling/--prompt; "
                    "default: SmolLM2 with SGPT weighted-mean pooling and no prompt, the raw backbone as in the paper's "
                    "GPT-Neo/SGPT analysis). Everything streams in "
                    "batches of --batch-rows. Each subcommand writes JSON + CSV (tokens decoded) and PNG "
                    "plots into --output.",
        epilog="examples:\n"
               "  python -m keytok_jax.spectral components --texts wiki.txt --limit 10000 --output out/comp\n"
               "  python -m keytok_jax.spectral shift --texts STS.input.surprise.SMTnews.txt --min-score 4 "
               "--output out/shift\n"
               "  python -m keytok_jax.embed --input corpus.jsonl --output store --pooling mean --prompt none "
               "--shift out/shift/shift.json\n"
               "  python -m keytok_jax.spectral align --store store --output out/align --shift out/shift/shift.json")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("components",                        help="streaming principal components (uncentered and centered) of the embeddings",
                       description="One pass: accumulate count, mean and scatter (XᵀX) over batches, then "
                                   "eigh (or power iteration). Writes components-{uncentered,centered}.npz "
                                   "(keytok_jax.spectral.Components.load), .csv (eigenvalues, shares, top tokens "
                                   "of ±v_i), .png and components.json (time, peak RSS).")
    _add_text_args(c)
    _add_model_args(c)
    _add_common(c)
    _add_components_args(c, centered_flag=False)
    c.set_defaults(func=cmd_components)

    v = sub.add_parser("variation",                        help="coefficients of backbone vs embedder embeddings on the backbone's components",
                       description="For the same texts: the backbone's principal directions V; "
                                   "diff_i = mean(embedder @ V - backbone @ V)_i; share_i = diff_i² / Σ diff². "
                                   "λ = diff_1 is the official 'v1' shift. Writes variation.{json,csv,png} and "
                                   "with --shift-out the shift file for the backbone.")
    _add_text_args(v)
    both = v.add_argument_group("both roles (a role's own flag wins)")
    both.add_argument("--model", help="model of both the backbone and the embedder (default: smollm2-135m)")
    both.add_argument("--max-length", type=int, help="max tokens per text for both (default: 512)")
    _add_model_args(v, "backbone-", "backbone")
    _add_model_args(v, "embedder-", "embedder")
    _add_common(v)
    v.add_argument("--precision", default="float32", choices=PRECISIONS,
                   help="accumulation and eigh precision (default: %(default)s)")
    v.add_argument("--centered", action="store_true", help="use the backbone's centered components")
    v.add_argument("--shift-out", help="write Shift(v1, λ=diff_1, model hash) here (for embed --shift)")
    v.set_defaults(func=cmd_variation)

    s = sub.add_parser("shift",                        help="first-component shift e + λ·v1: aligned tokens and metrics before/after",
                       description="Components from the source (or --components), λ (--lambda), the shift "
                                   "file shift.json (keytok_jax.embedder.Shift, read by embed --shift), and the "
                                   "alignment metrics and top-k tokens before and after: shift-report.json, "
                                   "shift.csv (one row per text), shift-example*.png. Texts are embedded once "
                                   "(spilled to a temporary file in --output between the two passes).")
    _add_text_args(s)
    _add_model_args(s)
    _add_common(s)
    _add_components_args(s)
    s.add_argument("--components", help="components .npz from `components` (skips the first pass)")
    s.add_argument("--lambda", dest="lam", default="remove",
                   help="λ: a number, 'remove' (= -mean first coefficient: the mean embedding loses its "
                        "v1 part) or a variation.json (its first component, the official 'v1') (default: %(default)s)")
    s.add_argument("--lambda-scale", type=float, default=1.0,
                   help="multiply λ by this (e.g. 0.5 with 'remove' halves the mean first coefficient; "
                        "on SmolLM2 that aligns better than full removal) (default: %(default)s)")
    s.set_defaults(func=cmd_shift)

    a = sub.add_parser("align",                        help="hit@k, local and global alignment (official definitions), optionally with a shift",
                       description="T = tokenizer.encode(text). hit@k = any top-k token in T; local = |top-|T| ∩ T| "
                                   "/ |T| (mean over texts); global = |∪ matched| / |∪ T|. Empty texts are skipped "
                                   "and counted. Writes align.json and align.csv (one row per text).")
    _add_text_args(a)
    _add_model_args(a)
    _add_common(a)
    a.add_argument("--shift", help="shift file (from `shift` or `variation --shift-out`): metrics before and after")
    a.set_defaults(func=cmd_align)

    for q in (s, a):
        q.add_argument("--k", type=int, default=10, help="top-k tokens for hit@k and the official local depth (default: %(default)s)")
        q.add_argument("--depth", default="k", choices=["k", "T"],
                       help="local/global alignment over the top min(len(L), k) tokens (k: official code) "
                            "or the top len(L) tokens (T) (default: %(default)s)")
        q.add_argument("--examples", type=int, default=3, help="texts listed with their tokens in the JSON (default: %(default)s)")
        q.add_argument("--plot-examples", type=int, default=3, help="before/after bar plots to draw (default: %(default)s)")
    for q in (c, v):
        q.add_argument("--report-components", type=int, default=10,
                       help="components listed with their top tokens in the JSON/CSV (default: %(default)s)")

    t = sub.add_parser("contribution",                        help="logits of a text's top tokens from its first-component part and the residual",
                       description="e1 = (e·v1) v1, r = e - e1; for the top-k tokens of e: logits of e, e1, r. "
                                   "Writes contribution.{json,csv} and contribution-N.png.")
    t.add_argument("--text", action="append", help="a text to analyse (repeatable)")
    t.add_argument("--direction", required=True, help="components .npz (its first direction) or a shift.json")
    t.add_argument("--k", type=int, default=10, help="top tokens shown (default: %(default)s)")
    t.add_argument("--output", required=True, help="output directory (created)")
    t.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="model parameter dtype (default: %(default)s)")
    t.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    _add_model_args(t, store=False)
    t.set_defaults(func=cmd_contribution)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    brief = {k: v for k, v in report.items() if k not in ("examples", "components", "texts")}
    print(json.dumps(brief, indent=2, ensure_ascii=False, default=_json_default)[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
