"""Step: one jitted program per batch shape does the whole device side of the embedding.

forward pass → pooling → correction (:func:`keytok_jax.projection.correct`: the fitted
corpus correction and the optional first-component shift, a runtime argument, so fitting it
needs no second compilation) → LM-head top-k over vocabulary chunks; the dense side of a sentence-transformers folder goes on through its Dense and
Normalize modules (the top-k projects the pooled vector before them, through the backbone's head). Only the dense and pooled vectors and the top-k come back to the host. Programs are compiled
once per ``(rows, seq)`` shape and kept. With a mesh, parameters are placed by the rules of
:mod:`keytok_jax.sharding`, batches are split over ``data`` and the top-k over ``model``
(:func:`~keytok_jax.projection.sharded_topk_projection`: same ids and ties).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import sharding
from ..loading.convert import abstract_variables
from ..model import KeytokModel
from ..loading.st_folder import SentenceTransformerModules
from ..pooling import dense_layer, l2_normalize, pool
from ..projection import correct, literal_projection, sharded_topk_projection, topk_projection
from ..records import Batch
from ..settings import EmbedSettings

__all__ = ["RunStats", "Feed", "Step"]


@dataclass
class RunStats:
    """What the device did: texts, real and padded tokens, batches, compilations."""
    docs: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    batches: int = 0
    compiles: int = 0
    compile_seconds: float = 0.0
    shapes: set = field(default_factory=set)

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.real_tokens / self.padded_tokens if self.padded_tokens else 0.0


class Feed:
    """How this process feeds host batches to its devices and reads the results back: the default
    device (no mesh), or a mesh of this process's devices, each device getting only its rows.
    :class:`keytok_jax.pipeline.lockstep.LockstepFeed` is the feed of a mesh spanning processes."""

    def __init__(self, mesh):
        self.mesh = mesh
        self.data_size = sharding.axis_size(mesh, "data")
        self.rows = sharding.batch_sharding(mesh) if mesh is not None else None

    def host_rows(self, rows: int) -> int:
        """Rows this process feeds of a batch of ``rows``."""
        return rows

    def schedule(self, batches: list[Batch], buckets) -> list[Batch]:
        """The batches this process steps through, in order."""
        return batches

    def agree_width(self, width: int) -> int:
        """The literal-token width of a batch, as every process feeding it must use."""
        return width

    def put(self, host: np.ndarray):
        if self.mesh is None:
            return host
        return jax.make_array_from_callback(host.shape, self.rows, lambda idx: host[idx])

    def local(self, result):
        """This process's rows of a step output."""
        return result


def module_params(modules: SentenceTransformerModules | None) -> tuple:
    """The Dense layers' arrays, one ``(weight, bias or None)`` per layer (a step argument)."""
    if modules is None:
        return ()
    return tuple((jnp.asarray(d.weight), None if d.bias is None else jnp.asarray(d.bias))
                 for d in modules.dense_layers)


def _post(modules: SentenceTransformerModules | None):
    """The folder's modules after pooling, ``(x, dense params) → x``."""
    kinds = () if modules is None else tuple(
        (kind, layer.activation if layer is not None else None) for kind, layer in modules.post)

    def apply(x, dense_params):
        i = 0
        for kind, activation in kinds:
            if kind == "dense":
                weight, bias = dense_params[i]
                x, i = dense_layer(x, weight, bias, activation), i + 1
            else:
                x = l2_normalize(x)
        return x

    return apply


def _device_step(model: KeytokModel, settings: EmbedSettings, chunk: int, mesh,
                 modules: SentenceTransformerModules | None = None, attention_impl: str = "xla"):
    """The step function: ``(params, batch, correction) → (dense, pooled, token ids, token
    weights)``, ``batch = (ids, mask, pool_mask)``, with the texts' literal tokens as a fourth
    array when ``doc_tokens="literal"``; a sentence-transformers folder's step takes its Dense
    layers' arrays (:func:`module_params`) as a fourth argument."""
    module = model.module(settings.attention, impl=attention_impl)
    s = settings
    head = "embed" if model.config.tie_word_embeddings else "lm_head"
    post = _post(modules)
    method = modules.pooling if modules is not None else s.pooling   # the folder's may be cls
    # sentence-transformers ranks weightedmean positions over every real token (prompt included)
    rank_by_mask = modules is not None and method == "weighted_mean"

    def sparse(corrected, lm_head, literal):
        if s.doc_tokens == "literal":
            return literal_projection(corrected, lm_head, literal, s.top_k)
        if mesh is None:
            return topk_projection(corrected, lm_head, s.top_k, chunk=chunk, weighting=s.weighting)
        return sharded_topk_projection(corrected, lm_head, s.top_k, mesh, chunk=chunk,
                                       weighting=s.weighting)

    def step(params, batch, correction, dense_params=()):
        ids, mask, pool_mask, *literal = batch
        hidden = module.apply({"params": params}, ids, mask)
        pooled = pool(hidden, pool_mask, method, mask if rank_by_mask else None)
        tok_ids, tok_w = sparse(correct(pooled, correction), params[head]["embedding"],
                                literal[0] if literal else None)
        dense = post(pooled, dense_params)
        dense = dense[:, : s.matryoshka_dim] if s.matryoshka_dim else dense
        if s.normalize:
            dense = l2_normalize(dense)
        return dense, pooled.astype(jnp.float32), tok_ids, tok_w

    if modules is None:
        return lambda params, batch, correction: step(params, batch, correction)
    return step


class Step:
    """The compiled device step of a model and settings, on ``feed``'s devices; ``correction``
    (``[3, D]``, :func:`keytok_jax.pipeline.correction.correction_vectors`) can be replaced
    between batches (:meth:`set_correction`) without recompiling."""

    def __init__(self, model: KeytokModel, settings: EmbedSettings, correction: np.ndarray,
                 vocab_chunk: int, feed: Feed, modules: SentenceTransformerModules | None = None,
                 attention_impl: str = "xla"):
        self.model, self.settings, self.vocab_chunk, self.feed = model, settings, vocab_chunk, feed
        self.attention_impl = attention_impl
        self.modules = modules
        # the step's arguments after the shift vector: the Dense layers' arrays, if any
        self.extra = () if modules is None else (module_params(modules),)
        self.mesh = feed.mesh
        self.params = model.params
        self._jitted = None
        self._compiled: dict[tuple[int, int], Any] = {}
        if self.mesh is not None:
            self._place_on_mesh()
        self.set_correction(correction)

    def set_correction(self, correction: np.ndarray) -> None:
        """The ``[a, u, w]`` vectors applied to pooled vectors before the top-k from now on."""
        correction = np.asarray(correction, np.float32)
        if correction.shape != (3, self.model.config.output_dim):
            raise ValueError(f"correction vectors must be [3, {self.model.config.output_dim}], "
                             f"got {correction.shape}")
        self.correction = (jnp.asarray(correction) if self.mesh is None
                           else sharding.place(correction, sharding.replicated(self.mesh)))

    def _place_on_mesh(self) -> None:
        """Parameters by the rules (moved once if the model was loaded elsewhere); the Dense
        layers replicated."""
        model = self.model
        self.param_shardings = sharding.param_shardings(
            abstract_variables(model.config, jnp.dtype(model.dtype)), self.mesh, model.config)
        self.params = sharding.place(self.params, self.param_shardings)
        self.extra = jax.tree.map(
            lambda a: sharding.place(np.asarray(a), sharding.replicated(self.mesh)), self.extra)

    def _jit(self):
        fn = _device_step(self.model, self.settings, self.vocab_chunk, self.mesh, self.modules,
                          self.attention_impl)
        if self.mesh is None:
            return jax.jit(fn)
        rows = self.feed.rows
        # pjit semantics: parameters per the rules, batches split over data, outputs too.
        replicated = sharding.replicated(self.mesh)
        return jax.jit(fn, in_shardings=(self.param_shardings, (rows,) * self.batch_arrays, replicated)
                       + (replicated,) * len(self.extra),
                       out_shardings=(rows, rows, rows, rows))

    @property
    def batch_arrays(self) -> int:
        """Host arrays per batch: ids, mask, pool_mask, and the literal tokens if used."""
        return 4 if self.settings.doc_tokens == "literal" else 3

    def executable(self, rows: int, seq: int, stats: RunStats | None = None, literal_width: int = 0):
        """The compiled program for ``[rows, seq]`` batches (and ``[rows, literal_width]``
        literal tokens, with ``doc_tokens="literal"``), compiled on first use, counted in
        ``stats``."""
        key = (rows, seq) if self.batch_arrays == 3 else (rows, seq, literal_width)
        if key not in self._compiled:
            if self._jitted is None:
                self._jitted = self._jit()
            t0 = time.perf_counter()
            spec = jax.ShapeDtypeStruct((rows, seq), jnp.int32)
            batch = (spec,) * 3 + ((jax.ShapeDtypeStruct((rows, literal_width), jnp.int32),)
                                   if self.batch_arrays == 4 else ())
            self._compiled[key] = self._jitted.lower(self.params, batch, self.correction,
                                                     *self.extra).compile()
            if stats is not None:
                stats.compile_seconds += time.perf_counter() - t0
                stats.compiles += 1
                stats.shapes.add(key)
        return self._compiled[key]

    def __call__(self, rows: int, seq: int, host_arrays, stats: RunStats | None = None):
        """Dispatch one batch (``ids, mask, pool_mask[, literal]`` of this process's rows);
        returns the device outputs without waiting for them."""
        width = host_arrays[3].shape[1] if len(host_arrays) == 4 else 0
        exe = self.executable(rows, seq, stats, width)
        return exe(self.params, tuple(self.feed.put(a) for a in host_arrays), self.correction,
                   *self.extra)
