"""Principal components streamed over batches (and devices) in bounded memory.

Each batch gives its count, mean and centred scatter on device (one jitted step per padded batch
shape; a ``sharding`` for the rows, e.g. ``NamedSharding(mesh, P("data"))``, makes XLA reduce over
the devices), merged into the running state with Chan et al.'s pairwise update
``M2 = M2_a + M2_b + δδᵀ n_a n_b / n`` (``δ = μ_b - μ_a``), which stays accurate when the mean is
large (a plain ``XᵀX - nμμᵀ`` in float32 would cancel catastrophically: SmolLM2 pooled vectors
have norms ~50 around a dominant common direction). The uncentered matrix is ``XᵀX = M2 + n μμᵀ``,
so one pass gives both variants. Accumulation is in float32, or float64 on request (run under
``jax.enable_x64``); then ``eigh`` in the same precision (all directions; LAPACK through numpy
when JAX runs on CPU, where it is ~10x faster than XLA's, else ``jnp.linalg.eigh``) or
:func:`~keytok_jax.analysis.components.power_iteration` (the first direction only). Memory: two
``[D, D]`` matrices (state and batch) plus one batch.
"""
from __future__ import annotations

import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..errors import CorpusError, SettingsError
from .components import Components, jax_dtype, orient, power_iteration, x64

__all__ = ["StreamingMoments"]


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
        self.dtype = jax_dtype(precision)
        self.count = 0
        self.seconds = 0.0
        with x64(precision):
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
        with x64(self.precision):
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
        with x64(self.precision):
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
            raise CorpusError("no rows accumulated")
        t0 = time.perf_counter()
        c = self.gram(centered)
        total = float(np.trace(c))
        mean = self.mean
        if method == "eigh":
            w, v = self._eigh(c)
            if n_components is not None:
                w, v = w[:n_components], v[:, :n_components]
            extra = {}
        elif method == "power":
            v0 = mean if not centered else None
            v, lam, it = power_iteration(c, v0, tol=tol, max_iter=max_iter, precision=self.precision)
            w, v = np.asarray([lam]), v[:, None]
            extra = {"iterations": it}
        else:
            raise SettingsError(f"method must be 'eigh' or 'power', got {method!r}")
        extra["seconds_diagonalise"] = time.perf_counter() - t0
        return Components(orient(v, mean), w, mean, self.count, centered, total, method,
                          self.precision, extra)

    def _eigh(self, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All eigenpairs of ``c`` in ``precision``, by decreasing eigenvalue."""
        dt = np.float64 if self.precision == "float64" else np.float32
        if jax.default_backend() == "cpu":
            # LAPACK through numpy: ~10x faster than XLA:CPU's eigh at D = 576 on 2 cores.
            w, v = np.linalg.eigh(c.astype(dt))
            return np.asarray(w[::-1], np.float64), np.ascontiguousarray(v[:, ::-1])
        with x64(self.precision):
            w, v = _eigh_desc(jnp.asarray(c, dt))
            return np.asarray(w, np.float64), np.asarray(v)
