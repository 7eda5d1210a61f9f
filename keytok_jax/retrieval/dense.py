"""The dense index: a store's dense vectors, L2-normalised (cosine), searched on device by a
chunked matmul + top-k (:func:`keytok_jax.projection.topk_projection`); over several devices the
documents are split and the per-device top-k merged, with the same ids and ties."""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ..pooling import l2_normalize
from ..projection import sharded_topk_projection, topk_projection
from .sparse import open_store

__all__ = ["DenseIndex"]


class DenseIndex:
    """The documents' dense vectors ``[docs, dim]``, L2-normalised, on device; :meth:`search`
    returns cosine top-k. With ``mesh`` (a 1-axis mesh over ``axis``, or a device count > 1)
    the documents are split over the devices and each takes its own top-k before a merge."""

    def __init__(self, vectors, ids: Sequence[str], *, mesh=None, axis: str = "docs",
                 chunk: int = 16384):
        vectors = np.asarray(vectors, np.float32)
        if vectors.ndim != 2 or len(vectors) != len(ids):
            raise ValueError(f"vectors {vectors.shape} and {len(ids)} ids do not agree")
        self.ids = list(ids)
        self.dim = vectors.shape[1]
        self.chunk = chunk
        self.axis = axis
        if isinstance(mesh, int):
            mesh = Mesh(np.array(jax.devices()[:mesh]), (axis,)) if mesh > 1 else None
        self.mesh = mesh
        docs = np.asarray(l2_normalize(jnp.asarray(vectors)))
        if mesh is None:
            self.docs = jax.device_put(docs)
        else:
            pad = -len(docs) % mesh.shape[axis]  # padding rows are never returned (see sharded_topk_projection)
            self.docs = jax.device_put(np.pad(docs, ((0, pad), (0, 0))), NamedSharding(mesh, P(axis, None)))
        self._fns: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        return len(self.ids) * self.dim * 4

    @classmethod
    def from_store(cls, store, **kw) -> DenseIndex:
        store = open_store(store)
        if store.dense is None:
            raise ValueError(f"{store.path} has no dense vectors (embed with --dense)")
        return cls(store.dense.read().result(), store.ids, **kw)

    def _fn(self, k: int):
        if k not in self._fns:
            n, chunk, mesh, axis = len(self.ids), self.chunk, self.mesh, self.axis
            if mesh is None:
                def f(q, docs):
                    return topk_projection(q, docs, k, chunk=chunk)
            else:
                def f(q, docs):
                    # Rows past the real documents are zero padding: score them below any cosine.
                    return sharded_topk_projection(q, docs, k, mesh, chunk=chunk, axis=axis, batch_axis=None,
                                                   num_valid=n)
            self._fns[k] = jax.jit(f)
        return self._fns[k]

    def search(self, query_vectors, k: int = 10, *, batch: int = 256
               ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top-k ``(rows, cosines)`` per query vector ``[queries, dim]`` (normalised here)."""
        q = np.asarray(query_vectors, np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query vectors {q.shape}, the index has dim {self.dim}")
        k = min(k, len(self.ids))
        fn, out = self._fn(k), []
        for start in range(0, len(q), batch):
            part = q[start:start + batch]
            # Pad the batch to a fixed shape: one compilation per k.
            padded = np.zeros((batch if len(q) > batch else max(len(part), 1), self.dim), np.float32)
            padded[: len(part)] = part
            rows, scores = fn(l2_normalize(jnp.asarray(padded)), self.docs)
            rows, scores = np.asarray(rows), np.asarray(scores)
            out.extend((rows[i].astype(np.int64), scores[i]) for i in range(len(part)))
        return out
