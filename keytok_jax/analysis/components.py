"""Principal components of text embeddings ("A Text is Worth Several Tokens", arXiv 2406.17378,
section 5), in memory: a batched SVD and power iteration. Streaming over batches is
:mod:`keytok_jax.analysis.moments`.

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
- :func:`power_iteration` (on a ``[D, D]`` matrix) and :func:`power_iteration_data` (matrix-free,
  ``v ← Xᵀ(Xv)`` on an in-memory ``[N, D]`` array): jitted ``lax.while_loop`` until the direction
  moves less than ``tol``; the first direction only, ``O(D²)`` per step instead of ``O(D³)``,
  for large ``D``.

The official code has full in-memory SVD only; power iteration and the centered variant are ours.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..errors import SettingsError
from ..settings.analysis import PRECISIONS

__all__ = ["Components", "batched_svd", "svd_components", "power_iteration",
           "power_iteration_data", "orient", "x64", "jax_dtype"]


def x64(precision: str):
    """Context for computations in ``precision``: float64 needs ``jax_enable_x64``."""
    if precision not in PRECISIONS:
        raise SettingsError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return jax.enable_x64(True) if precision == "float64" else contextlib.nullcontext()


def jax_dtype(precision: str):
    return jnp.float64 if precision == "float64" else jnp.float32


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
                raise SettingsError(f"{path}: not a keytok components file")
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


def orient(directions: np.ndarray, mean: np.ndarray) -> np.ndarray:
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
    with x64(precision):
        u, s, vt = _svd_stack(jnp.asarray(x, jax_dtype(precision)))
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
    return Components(orient(vt[0].T, mean), eig, mean, x.shape[0], centered, total, "svd",
                      precision)


# ---------------------------------------------------------------- power iteration

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
    with x64(precision):
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
    with x64(precision):
        v, lam, it, _ = _power_data(jnp.asarray(a), jnp.asarray(shift),
                                    jnp.asarray(_start_vector(a.shape[1], v0, seed, a.dtype)),
                                    jnp.asarray(tol, a.dtype), max_iter)
        return np.asarray(v), float(lam), int(it)
