"""The embedder: texts → dense vectors and sparse aligned-token vectors, on device.

One jitted step per padded shape does the whole device side: forward pass → pooling → optional
first-component shift → chunked LM-head top-k. Only pooled vectors and top-k come back to the
host. Shapes come from a small fixed set: sequence buckets that are multiples of 32, and per
bucket a fixed row count from the token budget, so a job compiles at most one program per bucket.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .model import ATTENTION_MODES, KeytokModel
from .pooling import POOLING_METHODS, l2_normalize, pool
from .projection import WEIGHTINGS, sharded_topk_projection, topk_projection
from .prompts import DocTokenizer, Template, TokenizedDoc, pad_batch
from .store import FLAG_EMPTY

SHIFT_FORMAT = "keytok-shift/1"


@dataclass(frozen=True)
class EmbedSettings:
    """Everything that changes an embedding. A store records these; a resumed job must match."""
    pooling: str = "mean"               # last | mean | weighted_mean
    prompt: str = "none"                # a PROMPTS name or a template with {text}
    instruction: str | None = None
    instruction_format: str = "plain"   # an INSTRUCTION_FORMATS name or a template
    pool_instruction: bool = False      # pool instruction tokens too (default: keep them out)
    add_eos: bool = False
    attention: str = "causal"           # causal | bidirectional
    max_length: int = 512
    top_k: int = 64
    weighting: str = "relu"             # logit | relu | log1p_relu
    normalize: bool = False             # L2-normalise the dense vector
    matryoshka_dim: int | None = None   # keep the first dims of the dense vector

    def __post_init__(self):
        if self.pooling not in POOLING_METHODS:
            raise ValueError(f"pooling must be one of {POOLING_METHODS}, got {self.pooling!r}")
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {self.attention!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.max_length < 1 or self.top_k < 1:
            raise ValueError("max_length and top_k must be positive")

    def template(self) -> Template:
        return Template(self.prompt, self.instruction, self.instruction_format, self.pool_instruction,
                        self.add_eos)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Shift:
    """First-component shift ``e + lam * direction`` applied to pooled vectors before projection."""
    direction: np.ndarray
    lam: float
    model_hash: str | None = None

    @classmethod
    def load(cls, path) -> "Shift":
        data = json.loads(Path(path).read_text())
        if data.get("format") != SHIFT_FORMAT:
            raise ValueError(f"{path}: not a keytok shift file (format {data.get('format')!r}, "
                             f"expected {SHIFT_FORMAT!r})")
        return cls(np.asarray(data["direction"], np.float32), float(data["lambda"]), data.get("model_hash"))

    def save(self, path) -> None:
        Path(path).write_text(json.dumps({"format": SHIFT_FORMAT, "lambda": self.lam,
                                          "model_hash": self.model_hash,
                                          "direction": [float(x) for x in self.direction]}))

    def fingerprint(self) -> str:
        import hashlib

        h = hashlib.sha256(np.asarray(self.direction, np.float32).tobytes())
        h.update(np.float64(self.lam).tobytes())
        return h.hexdigest()[:16]


@dataclass
class EmbedOutput:
    dense: np.ndarray          # float32 [N, D] (D = matryoshka_dim when set)
    token_ids: np.ndarray      # int32 [N, k], best first; -1 for empty texts
    token_weights: np.ndarray  # float32 [N, k]; 0 for empty texts
    lengths: np.ndarray        # int32 [N] tokens the model saw
    flags: np.ndarray          # uint8 [N] store.FLAG_* bits


@dataclass
class RunStats:
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


def seq_buckets(max_length: int) -> list[int]:
    """Padded sequence lengths: every multiple of 32 up to 512, then multiples of 64 growing by
    about 1.125x (576, 704, 832, ...), ending at max_length rounded up to 64. Fine enough that
    natural text pads little, coarse enough that a job compiles a handful of programs: on SciFact
    (SmolLM2, PromptEOL, max length 512, shards of 1024) the plan pads 6.2% of the tokens with
    21 shapes; steps of 64 padded 10.2% with 15."""
    top = -(-max_length // 64) * 64
    out, t = [], 32
    while t < top:
        out.append(t)
        t = t + 32 if t < 512 else max(t + 64, -(-int(t * 1.125) // 64) * 64)
    return out + [top]


class Embedder:
    """Dense and sparse (aligned-token) embeddings from a decoder LM.

    ``encode(texts)`` follows the sentence-transformers / MTEB convention and returns the dense
    ``np.ndarray [N, D]``; ``encode(texts, output_value=None)`` returns an :class:`EmbedOutput`
    with ``dense``, ``token_ids [N, k]``, ``token_weights [N, k]``, ``lengths`` and ``flags``.

    The sparse side projects the pooled vector (before normalisation and truncation, after the
    optional shift) through the LM head and keeps the top-k tokens; selection is by raw logit,
    ties go to the lower token id; ``weighting`` maps logits to weights (``logit``; ``relu`` =
    max(logit, 0); ``log1p_relu`` = log(1 + max(logit, 0))).

    ``mesh`` (a ``jax.sharding.Mesh`` or ``"data=D,model=M"``; default: the model's own, else one
    device) shards the step as :mod:`keytok_jax.sharding` says: parameters by the rules, batches
    over ``data`` (rows per batch rounded up to a multiple of its size), the top-k over ``model``
    (:func:`~keytok_jax.projection.sharded_topk_projection`: same ids and ties).
    """

    def __init__(self, model: KeytokModel, settings: EmbedSettings | None = None, *,
                 shift: Shift | None = None, batch_tokens: int = 8192, vocab_chunk: int = 4096,
                 mesh=None):
        self.model = model
        self.settings = settings or EmbedSettings()
        if model.tokenizer is None:
            raise ValueError(f"{model.source} has no tokenizer; the embedder needs one")
        self.doc_tokenizer = DocTokenizer(model.tokenizer, self.settings.template(), self.settings.max_length)
        if self.settings.top_k > model.config.vocab_size:
            raise ValueError(f"top_k={self.settings.top_k} exceeds the vocabulary ({model.config.vocab_size})")
        md = self.settings.matryoshka_dim
        if md is not None and not 1 <= md <= model.config.output_dim:
            raise ValueError(f"matryoshka_dim must be in [1, {model.config.output_dim}], got {md}")
        self.shift = shift
        if shift is not None and shift.direction.shape != (model.config.output_dim,):
            raise ValueError(f"shift direction has shape {shift.direction.shape}, the model's "
                             f"embeddings have dim {model.config.output_dim}")
        self.batch_tokens = batch_tokens
        self.vocab_chunk = vocab_chunk
        self.buckets = seq_buckets(self.settings.max_length)
        self.stats = RunStats()
        self._compiled: dict[tuple[int, int], Any] = {}
        self._shift_vec = jnp.asarray(
            shift.lam * shift.direction if shift is not None else np.zeros(model.config.output_dim),
            jnp.float32)
        self._setup_mesh(mesh)

    def _setup_mesh(self, mesh):
        """Without a mesh (and a model loaded without one) everything runs on the default device.
        With one, parameters follow :mod:`keytok_jax.sharding` (moved there once if the model was
        loaded elsewhere), batches are split over ``data`` and the top-k over ``model``."""
        from . import sharding

        self.mesh = sharding.parse_mesh(mesh) if mesh is not None else self.model.mesh
        self.params = self.model.params
        self.data_size = sharding.axis_size(self.mesh, "data")
        # A mesh over several processes runs in lock-step: each process feeds the rows of its own
        # data indices (``_data_held`` of ``data_size``) and all run one agreed schedule of shapes.
        self.lockstep = sharding.spans_processes(self.mesh)
        # (group, groups, data indices held, writes): see sharding.process_groups
        self.process_group = sharding.process_groups(self.mesh) if self.lockstep else None
        self._data_held = self.process_group[2] if self.lockstep else self.data_size
        if self.mesh is None:
            return
        from .loading.convert import abstract_variables

        self._param_shardings = sharding.param_shardings(
            abstract_variables(self.model.config, jnp.dtype(self.model.dtype)), self.mesh, self.model.config)
        self.params = sharding.place(self.params, self._param_shardings)
        self._batch_sharding = sharding.batch_sharding(self.mesh)
        self._replicated = sharding.replicated(self.mesh)
        self._shift_vec = sharding.place(np.asarray(self._shift_vec), self._replicated)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, model: str | KeytokModel = "smollm2-135m", *, dtype: str = "float32",
                        shift: Shift | str | None = None, batch_tokens: int = 8192,
                        vocab_chunk: int = 4096, mesh=None, **settings) -> "Embedder":
        """``Embedder.from_pretrained("smollm2-135m", pooling="mean", prompt=..., instruction=...,
        attention="causal", max_length=512, top_k=64, weighting="relu", mesh="data=4,model=2")``."""
        if isinstance(model, str):
            from .loading import load_model

            model = load_model(model, dtype=dtype, mesh=mesh)
        if isinstance(shift, (str, Path)):
            shift = Shift.load(shift)
        return cls(model, EmbedSettings(**settings), shift=shift, batch_tokens=batch_tokens,
                   vocab_chunk=vocab_chunk, mesh=mesh)

    # ------------------------------------------------------------------ device step
    def _step_fn(self):
        module = self.model.module(self.settings.attention)
        s, chunk = self.settings, self.vocab_chunk
        head = "embed" if self.model.config.tie_word_embeddings else "lm_head"

        mesh = self.mesh

        def step(params, ids, mask, pool_mask, shift_vec):
            hidden = module.apply({"params": params}, ids, mask)
            pooled = pool(hidden, pool_mask, s.pooling)
            if mesh is None:
                tok_ids, tok_w = topk_projection(pooled + shift_vec, params[head]["embedding"], s.top_k,
                                                 chunk=chunk, weighting=s.weighting)
            else:
                tok_ids, tok_w = sharded_topk_projection(pooled + shift_vec, params[head]["embedding"],
                                                         s.top_k, mesh, chunk=chunk, weighting=s.weighting)
            dense = pooled[:, : s.matryoshka_dim] if s.matryoshka_dim else pooled
            if s.normalize:
                dense = l2_normalize(dense)
            return dense, tok_ids, tok_w

        if mesh is None:
            return jax.jit(step)
        rows = self._batch_sharding
        # pjit semantics: parameters per the rules, batches split over data, outputs too.
        return jax.jit(step, in_shardings=(self._param_shardings, rows, rows, rows, self._replicated),
                       out_shardings=(rows, rows, rows))

    def _executable(self, rows: int, seq: int):
        key = (rows, seq)
        if key not in self._compiled:
            if not hasattr(self, "_step"):
                self._step = self._step_fn()
            t0 = time.perf_counter()
            spec = jax.ShapeDtypeStruct((rows, seq), jnp.int32)
            self._compiled[key] = self._step.lower(self.params, spec, spec, spec, self._shift_vec).compile()
            self.stats.compile_seconds += time.perf_counter() - t0
            self.stats.compiles += 1
            self.stats.shapes.add(key)
        return self._compiled[key]

    def rows_for(self, seq: int, remaining: int | None = None) -> int:
        """Rows of a batch of length ``seq``: the token budget's share, or for a bucket's last
        batch the smallest of cap, cap/4, cap/16, ... that holds ``remaining`` (few shapes, little
        padding for small inputs). On a mesh, rounded up to a multiple of the ``data`` axis."""
        return self._rows_at(seq, self._variant(seq, remaining))

    def _variant(self, seq: int, remaining: int | None) -> int:
        """How many times the budget's rows are quartered for ``remaining`` docs (this process's
        share of the rows when the mesh spans processes)."""
        rows, v = max(1, self.batch_tokens // seq), 0
        while remaining is not None and rows > 1 and self._local_rows(rows // 4) >= remaining:
            rows, v = rows // 4, v + 1
        return v

    def _rows_at(self, seq: int, variant: int) -> int:
        rows = max(1, max(1, self.batch_tokens // seq) // 4 ** variant)
        d = self.data_size
        return -(-rows // d) * d

    def _local_rows(self, rows: int) -> int:
        """This process's rows of a batch of ``rows`` (all of them unless the mesh spans processes)."""
        if not self.lockstep:
            return rows
        return -(-rows // self.data_size) * self._data_held

    # ------------------------------------------------------------------ host loop
    def tokenize(self, texts: Sequence[str]) -> list[TokenizedDoc]:
        return self.doc_tokenizer(list(texts))

    def embed_tokenized(self, docs: Sequence[TokenizedDoc], in_flight: int = 2,
                        on_batch=None) -> EmbedOutput:
        """Embed a window of tokenized docs; rows come back in input order.

        Docs are sorted by length inside the window, grouped into fixed (rows, seq) shapes and
        dispatched asynchronously with ``in_flight`` batches queued before the host waits.
        ``on_batch(docs, real_tokens, padded_tokens)`` is called as each batch's results arrive."""
        n = len(docs)
        k, dim = self.settings.top_k, self.settings.matryoshka_dim or self.model.config.output_dim
        out = EmbedOutput(np.zeros((n, dim), np.float32), np.full((n, k), -1, np.int32),
                          np.zeros((n, k), np.float32),
                          np.array([len(d.ids) for d in docs], np.int32),
                          np.array([d.flags for d in docs], np.uint8))
        pending: deque = deque()

        def collect():
            rows, padded, result = pending.popleft()
            dense, ids, weights = (np.asarray(self._local_part(a)) for a in result)
            m = len(rows)
            out.dense[rows], out.token_ids[rows], out.token_weights[rows] = dense[:m], ids[:m], weights[:m]
            if on_batch is not None and m:
                on_batch(m, int(out.lengths[rows].sum()), padded)

        for rows, seq, variant in self._schedule(out.lengths):
            batch_rows = self._rows_at(seq, variant)
            local_rows = self._local_rows(batch_rows)
            ids, mask, pool_mask = pad_batch([docs[r] for r in rows], local_rows, seq)
            exe = self._executable(batch_rows, seq)
            if self.mesh is not None:
                ids, mask, pool_mask = (self._put_rows(a) for a in (ids, mask, pool_mask))
            pending.append((np.asarray(rows, np.int64), local_rows * seq,
                            exe(self.params, ids, mask, pool_mask, self._shift_vec)))
            self.stats.batches += 1
            self.stats.padded_tokens += local_rows * seq
            while len(pending) > in_flight:
                collect()
        while pending:
            collect()
        empty = (out.flags & FLAG_EMPTY).astype(bool) | (out.lengths == 0)
        out.token_ids[empty], out.token_weights[empty] = -1, 0.0
        out.flags[out.lengths == 0] |= FLAG_EMPTY
        self.stats.docs += n
        self.stats.real_tokens += int(out.lengths.sum())
        return out

    def _put_rows(self, host: np.ndarray):
        """A host batch split over ``data`` (each device gets only its rows). With a mesh over
        several processes ``host`` holds only this process's rows, which become its part of the
        global batch."""
        if self.lockstep:
            from jax.experimental import multihost_utils

            return multihost_utils.host_local_array_to_global_array(host, self.mesh, self._batch_sharding.spec)
        return jax.make_array_from_callback(host.shape, self._batch_sharding, lambda idx: host[idx])

    def _local_part(self, result):
        """This process's rows of a step output (the whole output on one process)."""
        if not self.lockstep:
            return result
        from jax.experimental import multihost_utils

        return multihost_utils.global_array_to_host_local_array(result, self.mesh, self._batch_sharding.spec)

    def _schedule(self, lengths: np.ndarray) -> Iterable[tuple[list[int], int, int]]:
        """(rows, seq, variant) batches of :meth:`_plan`. With a mesh over several processes, every
        process runs the same steps: the per-process counts of each (seq, variant) shape are
        gathered and each process runs the largest count, with empty rows where it has no batch of
        that shape (e.g. its shard is finished, or it has fewer long documents)."""
        batches = [(rows, seq, self._variant(seq, len(rows))) for rows, seq in self._plan(lengths)]
        if not self.lockstep:
            yield from batches
            return
        from jax.experimental import multihost_utils

        index = {seq: b for b, seq in enumerate(self.buckets)}
        counts = np.zeros((len(self.buckets), 32), np.int32)
        mine: dict[tuple[int, int], list] = {}
        for rows, seq, v in batches:
            counts[index[seq], v] += 1
            mine.setdefault((seq, v), []).append(rows)
        agreed = np.asarray(multihost_utils.process_allgather(counts)).max(axis=0)
        for b, v in zip(*np.nonzero(agreed)):
            seq, v = self.buckets[b], int(v)
            own = mine.get((seq, v), [])
            for i in range(int(agreed[b, v])):
                yield (own[i] if i < len(own) else []), seq, v

    def _plan(self, lengths: np.ndarray) -> Iterable[tuple[list[int], int]]:
        """(rows, seq) batches. Rows are sorted by length and fill each bucket's batches; a
        bucket's leftover (its longest docs, too few for a full batch) moves up into the next
        bucket when that pads fewer tokens than running a mostly empty batch."""
        order = np.argsort(lengths, kind="stable")
        bucket_of = np.searchsorted(np.asarray(self.buckets), lengths[order], side="left")
        carry: list[int] = []
        last = len(self.buckets) - 1
        for b, seq in enumerate(self.buckets):
            rows = carry + order[bucket_of == b].tolist()
            cap = self._local_rows(self.rows_for(seq))
            full = len(rows) // cap * cap
            for i in range(0, full, cap):
                yield rows[i:i + cap], seq
            carry = rows[full:]
            if carry and (b == last or self._local_rows(self.rows_for(seq, len(carry))) * seq
                          <= len(carry) * self.buckets[b + 1]):
                yield carry, seq
                carry = []

    def encode(self, sentences: str | Sequence[str], batch_size: int | None = None,
               show_progress_bar: bool = False, output_value: str | None = "sentence_embedding",
               window: int = 4096, **kwargs):
        """sentence-transformers / MTEB ``encode``: dense ``np.ndarray [N, D]`` (``[D]`` for one
        string). ``batch_size`` is accepted for compatibility; batches are formed by token budget
        (``batch_tokens``) over fixed shapes. ``output_value=None`` returns :class:`EmbedOutput`."""
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        parts = []
        it = range(0, len(texts), window)
        if show_progress_bar:
            from tqdm.auto import tqdm

            it = tqdm(it, desc="encode", unit="window")
        for start in it:
            parts.append(self.embed_tokenized(self.tokenize(texts[start: start + window])))
        if parts:
            result = EmbedOutput(*(np.concatenate([getattr(p, f.name) for p in parts])
                                   for f in dataclasses.fields(EmbedOutput)))
        else:
            result = self.embed_tokenized([])
        if output_value is None:
            return result
        if output_value != "sentence_embedding":
            raise ValueError(f"output_value must be 'sentence_embedding' or None, got {output_value!r}")
        return result.dense[0] if single else result.dense
