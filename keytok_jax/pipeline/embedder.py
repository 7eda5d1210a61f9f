"""The embedder: texts → dense vectors and sparse aligned-token vectors, as tokenize → plan → step.

:class:`Embedder` holds the three stages for one model and settings; ``embed_tokenized`` runs a
window of tokenized texts through the plan and the device step, and ``encode`` is the
sentence-transformers / MTEB entry point over raw texts.

Model limits. A model with learned absolute position embeddings (GPT-2, GPT-Neo, OPT: families
without rotary positions) has one embedding per position, ``config.max_positions`` of them; a
longer sequence would read past the table (NaN under jit). ``max_length`` above it is refused when
the Embedder is built (:func:`position_limit`), naming both numbers. Rotary families (Llama,
Mistral, Qwen2, GPT-NeoX, Gemma3) have no table: positions beyond ``max_position_embeddings`` (the
trained context) compute finite values, extrapolated, so they are accepted.

Outputs are checked as each batch's results reach the host (:func:`check_outputs`): a NaN or
infinite dense value or token weight, or a token id outside ``[-1, vocab_size)``, raises
:class:`EmbedError` naming the texts, instead of reaching a store or a caller.
"""
from __future__ import annotations

import dataclasses
import time
from collections import deque
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from .. import sharding
from ..errors import KeytokError, SettingsError
from ..loading import load_model
from ..loading.st_folder import SentenceTransformerModules, declares_bidirectional, read_st_folder
from ..model import KeytokModel
from ..models.layers import resolve_attention_impl
from ..pooling import POOLING_METHODS
from ..records import FLAG_EMPTY, Batch, EmbedOutput, TokenizedDoc
from ..settings import EmbedSettings
from .correction import CorrectionFit, Moments, Shift, correction_vectors, model_hash
from .lockstep import feed_for
from .plan import Shapes, default_batching, literal_width, pad_batch, pad_literal, seq_buckets
from .step import RunStats, Step
from .literal import LiteralTokens
from .tokenize import DocTokenizer

__all__ = ["Embedder", "EmbedError", "model_identity", "position_limit", "check_outputs",
           "follow_model"]

# The Hugging Face config field holding each learned-position family's limit (for messages).
_POSITION_FIELDS = {"gpt2": "n_positions"}
_SHOWN_ROWS = 10


def model_identity(model: KeytokModel) -> dict:
    """Name and size of each source file of a model, as a store records it: stable across
    reinstalls (unlike mtimes); with a borrowed LM head (``--lm-head``), its source and files too
    (absent otherwise, so stores written before it still resume)."""
    ident = {"source": Path(model.source).name,
             "files": [[Path(f).name, Path(f).stat().st_size] for f in model.load_info["files"]]}
    head = model.load_info.get("lm_head")
    if head:
        ident["lm_head"] = {"source": Path(head["source"]).name,
                            "files": [[Path(f).name, Path(f).stat().st_size] for f in head["files"]]}
    return ident


def position_limit(config) -> int | None:
    """The most tokens a text may have for this model: ``max_positions`` for learned absolute
    position embeddings (no rotary table: GPT-2, GPT-Neo, OPT), None (no hard limit) for rotary
    families."""
    return config.max_positions if config.rope is None else None


def _special_suffix(tokenizer) -> list[int]:
    """The special tokens the tokenizer appends to a text (its post-processor), e.g. ``[eos]``."""
    with_special = list(tokenizer("a")["input_ids"])
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start: start + len(plain)] == plain:
            return with_special[start + len(plain):]
    return []


def st_prompt_length(tokenizer, prompt: str | None) -> int | None:
    """Tokens sentence-transformers keeps out of pooling for ``prompt`` (``include_prompt=False``):
    the prompt tokenized alone with the special tokens, less a trailing special token. A prompt
    whose last piece merges with the text (a trailing space as its own token) still counts it, as
    sentence-transformers does."""
    if not prompt:
        return None
    ids = list(tokenizer(prompt)["input_ids"])
    if ids and ids[-1] in set(getattr(tokenizer, "all_special_ids", ())):
        ids = ids[:-1]
    return len(ids)


def follow_model(model: KeytokModel, settings: EmbedSettings
                 ) -> tuple[EmbedSettings, SentenceTransformerModules | None]:
    """The settings the model is embedded with, and its sentence-transformers modules (None for
    other models). With ``model_declares="follow"``: a config declaring bidirectional attention
    gets ``attention="bidirectional"``; a sentence-transformers folder (``modules.json``) gets its
    Pooling method (``cls``, no settings choice, is read by the step from the modules), its
    max_seq_length, its prompt (``prompt_name``, else the folder's ``default_prompt_name``, else
    the settings' ``instruction`` as plain text) tokenized with each text as one string and pooled
    iff the Pooling's ``include_prompt``,
    the EOS its tokenizer appends, and ``normalize=False`` (its Normalize modules apply in order
    after its Dense layers)."""
    if settings.model_declares == "ignore":
        if settings.prompt_name is not None:
            raise SettingsError("prompt_name needs model_declares='follow' (the prompts are the "
                                "folder's)")
        return settings, None
    changes: dict = {}
    if declares_bidirectional(model.hf_config or {}):
        changes["attention"] = "bidirectional"
    modules = read_st_folder(model.source)
    if modules is None:
        if settings.prompt_name is not None:
            raise SettingsError(f"prompt_name {settings.prompt_name!r}: {model.source} is not a "
                                "sentence-transformers folder (no modules.json)")
        return dataclasses.replace(settings, **changes), None
    suffix = _special_suffix(model.tokenizer) if model.tokenizer is not None else []
    eos = getattr(model.tokenizer, "eos_token_id", None)
    if suffix not in ([], [eos]):
        raise SettingsError(f"{model.source}: the tokenizer appends {suffix} to every text; only "
                            "an EOS token is supported")
    prompt = modules.prompt(settings.prompt_name)
    if modules.pooling in POOLING_METHODS:   # cls is no settings choice: the step reads the folder's
        changes["pooling"] = modules.pooling
    if prompt is None:   # no named or default prompt: a given instruction is the prompt text
        prompt = settings.instruction
    changes.update(normalize=False, prompt="{text}", instruction=prompt or None,
                   instruction_format="plain", pool_instruction=modules.include_prompt,
                   add_eos=bool(suffix))
    if modules.max_length:
        changes["max_length"] = modules.max_length
    return dataclasses.replace(settings, **changes), modules


def _check(model: KeytokModel, settings: EmbedSettings, dim: int) -> None:
    """Refuse settings this model cannot embed with."""
    if model.tokenizer is None:
        raise SettingsError(f"{model.source} has no tokenizer; the embedder needs one")
    limit = position_limit(model.config)
    if limit is not None and settings.max_length > limit:
        field = _POSITION_FIELDS.get(model.config.family, "max_position_embeddings")
        raise SettingsError(f"--max-length {settings.max_length} exceeds the model's {limit} "
                            f"positions ({field}); use --max-length {limit} or less")
    if settings.doc_tokens == "aligned" and settings.top_k > model.config.vocab_size:
        # (literal tokens are a text's own: fewer than k leave -1 slots, as a short text does)
        raise SettingsError(f"top_k={settings.top_k} exceeds the vocabulary ({model.config.vocab_size})")
    md = settings.matryoshka_dim
    if md is not None and not 1 <= md <= dim:
        raise SettingsError(f"matryoshka_dim must be in [1, {dim}], got {md}")


class EmbedError(KeytokError):
    """The device step gave NaN/inf values or out-of-range token ids for some texts.

    ``problems`` maps what is wrong (e.g. ``"non-finite dense values"``) to the texts' indices
    (in the window given to :meth:`Embedder.embed_tokenized`; in ``encode``: in its input);
    :meth:`named` gives the same error naming each text (e.g. by ``FILE:LINE``)."""

    def __init__(self, problems: dict[str, list], names=None):
        self.problems = {what: [int(r) for r in rows] for what, rows in problems.items()}
        self.rows = sorted({r for rows in self.problems.values() for r in rows})
        self.names = names
        super().__init__(self._message())

    def _message(self) -> str:
        def show(rows):
            shown = [str(self.names[r]) if self.names is not None else str(r) for r in rows]
            more = f", ... ({len(rows)} texts)" if len(rows) > _SHOWN_ROWS else ""
            return ", ".join(shown[:_SHOWN_ROWS]) + more
        parts = "; ".join(f"{what} for texts {show(rows)}" for what, rows in self.problems.items())
        return (f"the model gave unusable outputs: {parts} (NaN/inf in its weights, or an "
                "overflow of its dtype: bfloat16 models may need --dtype float32)")

    def shifted(self, offset: int) -> "EmbedError":
        """The same error with every index moved by ``offset``."""
        return EmbedError({w: [r + offset for r in rows] for w, rows in self.problems.items()})

    def named(self, names) -> "EmbedError":
        """The same error naming text ``i`` as ``names[i]``."""
        return EmbedError(self.problems, names)


def check_outputs(dense: np.ndarray, ids: np.ndarray, weights: np.ndarray, vocab_size: int,
                  rows: np.ndarray) -> None:
    """Raise :class:`EmbedError` when a row of ``dense [m, D]`` or ``weights [m, k]`` holds NaN/inf
    or one of ``ids [m, k]`` lies outside ``[-1, vocab_size)``; row ``j`` is text ``rows[j]``."""
    checks = {"non-finite dense values (NaN/inf)": ~np.isfinite(dense).all(axis=1),
              "non-finite token weights (NaN/inf)": ~np.isfinite(weights).all(axis=1),
              f"token ids outside [-1, {vocab_size})": ((ids < -1) | (ids >= vocab_size)).any(axis=1)}
    problems = {what: rows[bad].tolist() for what, bad in checks.items() if bad.any()}
    if problems:
        raise EmbedError(problems)


@dataclass
class _InFlight:
    """A dispatched batch whose results have not been read yet."""
    rows: np.ndarray  # the window's texts it holds
    padded: int  # tokens this process fed, padding included
    result: tuple  # device arrays: dense, pooled, token ids, token weights


class Embedder:
    """Dense and sparse (aligned-token) embeddings from a decoder LM.

    ``encode(texts)`` follows the sentence-transformers / MTEB convention and returns the dense
    ``np.ndarray [N, D]``; ``encode(texts, output_value=None)`` returns an :class:`EmbedOutput`
    with ``dense``, ``token_ids [N, k]``, ``token_weights [N, k]``, ``lengths`` and ``flags``.

    The sparse side projects the pooled vector (before normalisation and truncation, after the
    settings' ``correction`` with its ``correction_fit`` and the optional shift) through the LM
    head and keeps the top-k tokens; selection is by raw logit,
    ties go to the lower token id; ``weighting`` maps logits to weights (``logit``; ``relu`` =
    max(logit, 0); ``log1p_relu`` = log(1 + max(logit, 0))).

    ``attention_impl``: ``"xla"``, ``"fused"`` (see :func:`keytok_jax.models.layers.attend`) or
    ``"auto"``: fused on an NVIDIA GPU with a half-precision model, else xla
    (:func:`~keytok_jax.models.layers.resolve_attention_impl`; the choice is ``self.attention_impl``).
    ``batch_tokens`` and ``bucket_step`` shape the batches (:func:`~.plan.seq_buckets`): texts are
    padded to a multiple of ``bucket_step`` and batched ``batch_tokens`` padded tokens at a time;
    by default :data:`~.plan.BATCHING`'s for the device (8192 and 32 on GPU/TPU, 1024 and 16 on
    CPU).
    ``mesh`` (a ``jax.sharding.Mesh`` or ``"data=D,model=M"``; default: the model's own, else one
    device) shards the step as :mod:`keytok_jax.sharding` says: parameters by the rules, batches
    over ``data`` (rows per batch rounded up to a multiple of its size), the top-k over ``model``.
    """

    def __init__(self, model: KeytokModel, settings: EmbedSettings | None = None, *,
                 shift: Shift | None = None, correction_fit: CorrectionFit | None = None,
                 batch_tokens: int | None = None, vocab_chunk: int = 4096, mesh=None,
                 attention_impl: str = "auto", bucket_step: int | None = None):
        self.model = model
        self.requested = settings or EmbedSettings()
        self.settings, self.st_modules = follow_model(model, self.requested)
        self.output_dim = (self.st_modules.output_dim(model.config.output_dim) if self.st_modules
                           else model.config.output_dim)
        _check(model, self.settings, self.output_dim)
        self.shift, self.vocab_chunk = shift, vocab_chunk
        self.correction_fit = None
        # checked now (a missing fit is allowed until the first text is embedded)
        correction = self._correction_vectors(correction_fit, allow_missing=True)
        self._prompt_tokenizers: dict = {}
        self.doc_tokenizer = self._new_tokenizer(self.settings.template())
        self.mesh = sharding.parse_mesh(mesh) if mesh is not None else model.mesh
        self.feed = feed_for(self.mesh)
        device = self.mesh.devices.flat[0] if self.mesh is not None else jax.devices()[0]
        default_tokens, default_step = default_batching(device.platform)
        self.batch_tokens = default_tokens if batch_tokens is None else batch_tokens
        self.bucket_step = default_step if bucket_step is None else bucket_step
        buckets = seq_buckets(self.settings.max_length, self.bucket_step)
        self.shapes = Shapes(self.batch_tokens, tuple(buckets), self.feed.data_size, self.feed.host_rows)
        self.attention_impl = resolve_attention_impl(attention_impl, model.dtype, device)
        self.step = Step(model, self.settings, correction, vocab_chunk, self.feed, self.st_modules,
                         self.attention_impl)
        self.correction_fit = correction_fit
        self.stats = RunStats()

    def _correction_vectors(self, fit: CorrectionFit | None, allow_missing: bool = False):
        if fit is not None:
            fit.check_model(self.model, "the correction fit")
        mode = self.settings.correction
        if fit is None and allow_missing:
            mode = "none"
        return correction_vectors(mode, self.model.config.output_dim, fit, self.shift)

    def set_correction_fit(self, fit: CorrectionFit) -> None:
        """Apply the settings' correction with these statistics from now on (no recompilation)."""
        self.step.set_correction(self._correction_vectors(fit))
        self.correction_fit = fit

    def fit_correction(self, texts: Sequence[str] | Sequence[TokenizedDoc],
                       sample: str | None = None) -> CorrectionFit:
        """Fit the corpus statistics of the correction on these texts (strings, or tokenized
        docs) and apply them from now on; returns the fit. Empty texts are left out."""
        docs = self.tokenize(texts) if texts and isinstance(texts[0], str) else list(texts)
        out = self.embed_tokenized(docs, keep_pooled=True, corrected=False)
        moments = Moments(self.model.config.output_dim)
        moments.add(out.pooled[~(out.flags & FLAG_EMPTY).astype(bool)])
        fit = CorrectionFit.from_moments(moments, sample or f"{len(docs)} texts", model_hash(self.model))
        self.set_correction_fit(fit)
        return fit

    @classmethod
    def from_pretrained(cls, model: str | KeytokModel = "smollm2-135m", *, dtype: str = "auto",
                        shift: Shift | str | None = None,
                        correction_fit: CorrectionFit | str | None = None,
                        batch_tokens: int | None = None, vocab_chunk: int = 4096, mesh=None,
                        lm_head: str | None = None, attention_impl: str = "auto",
                        bucket_step: int | None = None, **settings) -> "Embedder":
        """``Embedder.from_pretrained("smollm2-135m", pooling="mean", prompt=..., instruction=...,
        attention="causal", max_length=512, top_k=64, weighting="relu", correction="pc1",
        correction_fit="fit.json", mesh="data=4,model=2")``; ``lm_head`` borrows the head of a
        base checkpoint (see ``load_model``)."""
        if isinstance(model, str):
            model = load_model(model, dtype=dtype, mesh=mesh, lm_head=lm_head)
        if isinstance(shift, (str, Path)):
            shift = Shift.load(shift)
        if isinstance(correction_fit, (str, Path)):
            correction_fit = CorrectionFit.load(correction_fit)
        return cls(model, EmbedSettings(**settings), shift=shift, correction_fit=correction_fit,
                   batch_tokens=batch_tokens, vocab_chunk=vocab_chunk, mesh=mesh,
                   attention_impl=attention_impl, bucket_step=bucket_step)

    # ------------------------------------------------------------------ stages
    def tokenize(self, texts: Sequence[str]) -> list[TokenizedDoc]:
        return self.doc_tokenizer(list(texts))

    def plan(self, lengths: np.ndarray) -> list[Batch]:
        return self.shapes.plan(np.asarray(lengths))

    def rows_for(self, seq: int, remaining: int | None = None) -> int:
        return self.shapes.rows_for(seq, remaining)

    def executable(self, rows: int, seq: int, stats: RunStats | None = None):
        """The compiled step for ``[rows, seq]`` batches, texts with the default literal width
        (counted in ``stats``, default :attr:`stats`)."""
        return self.step.executable(rows, seq, self.stats if stats is None else stats,
                                    literal_width([], seq, self.settings.top_k))

    def batch_shapes(self, lengths=None) -> list[tuple[int, int]]:
        """``(rows, seq)`` of the batches of the plan for texts of ``lengths``; without them,
        every shape a plan can make: each bucket's full batch and its quartered last batches."""
        if lengths is None:
            return self.shapes.every_shape()
        return sorted({(self.rows_for(b.seq, len(b.rows)), b.seq) for b in self.plan(lengths)})

    def precompile(self, lengths=None) -> dict:
        """Compile the step for every shape of :meth:`batch_shapes` before the first batch (on an
        accelerator, compiling on first use stalls the device mid-run; ahead of time, the run
        compiles nothing). Not counted in :attr:`stats`: returns ``{"precompiled": n,
        "precompile_seconds": s}``. One shape at a time: compiling two at once in threads took as
        long (18.8 s against 18.3 s for SmolLM2's 11 shapes on 2 CPU cores; README)."""
        t0 = time.perf_counter()
        shapes = self.batch_shapes(lengths)
        for rows, seq in shapes:
            self.executable(rows, seq, stats=RunStats())
        return {"precompiled": len(shapes), "precompile_seconds": round(time.perf_counter() - t0, 2)}

    # ------------------------------------------------------------------ host loop
    def embed_tokenized(self, docs: Sequence[TokenizedDoc], in_flight: int = 2,
                        on_batch=None, keep_pooled: bool = False,
                        corrected: bool = True) -> EmbedOutput:
        """Embed a window of tokenized docs; rows come back in input order.

        Docs are sorted by length inside the window, grouped into fixed (rows, seq) shapes and
        dispatched asynchronously with ``in_flight`` batches queued before the host waits.
        ``on_batch(docs, real_tokens, padded_tokens)`` is called as each batch's results arrive.
        ``keep_pooled``: also return the pooled vectors (``out.pooled``). ``corrected=False``
        allows a correction without its fit (the fit pass: the top-k are then uncorrected)."""
        if corrected and self.correction_fit is None and self.settings.correction != "none" and docs:
            raise SettingsError(f"correction {self.settings.correction!r} needs a fit of corpus "
                                "statistics: Embedder.fit_correction(texts), or "
                                "correction_fit=CorrectionFit.load(path)")
        if self.settings.doc_tokens == "literal" and any(d.literal is None for d in docs):
            raise SettingsError("doc_tokens='literal' needs each text's literal tokens: tokenize "
                                "with Embedder.tokenize (TokenizedDoc.literal)")
        out = self._blank_output(docs)
        if keep_pooled:
            out.pooled = np.zeros((len(docs), self.model.config.output_dim), np.float32)
        pending: deque[_InFlight] = deque()
        for batch in self.feed.schedule(self.plan(out.lengths), self.shapes.buckets):
            pending.append(self._dispatch(docs, batch))
            while len(pending) > in_flight:
                self._collect(pending.popleft(), out, on_batch)
        while pending:
            self._collect(pending.popleft(), out, on_batch)
        empty = (out.flags & FLAG_EMPTY).astype(bool) | (out.lengths == 0)
        out.token_ids[empty], out.token_weights[empty] = -1, 0.0
        out.flags[out.lengths == 0] |= FLAG_EMPTY
        self.stats.docs += len(docs)
        self.stats.real_tokens += int(out.lengths.sum())
        return out

    def _blank_output(self, docs: Sequence[TokenizedDoc]) -> EmbedOutput:
        n = len(docs)
        k, dim = self.settings.top_k, self.settings.matryoshka_dim or self.output_dim
        return EmbedOutput(np.zeros((n, dim), np.float32), np.full((n, k), -1, np.int32),
                           np.zeros((n, k), np.float32),
                           np.array([len(d.ids) for d in docs], np.int32),
                           np.array([d.flags for d in docs], np.uint8))

    def host_arrays(self, docs: Sequence[TokenizedDoc], batch: Batch) -> tuple[int, int, tuple]:
        """``(rows, host_rows, arrays)`` of one planned batch: the step's host inputs (ids, mask,
        pool_mask, and the literal tokens with ``doc_tokens="literal"``) of this process's rows."""
        rows = self.shapes.rows_at(batch.seq, batch.variant)
        host_rows = self.feed.host_rows(rows)
        batch_docs = [docs[r] for r in batch.rows]
        arrays = pad_batch(batch_docs, host_rows, batch.seq)
        if self.settings.doc_tokens == "literal":
            width = self.feed.agree_width(literal_width(batch_docs, batch.seq, self.settings.top_k))
            arrays += (pad_literal([d.literal for d in batch_docs], host_rows, width),)
        return rows, host_rows, arrays

    def _dispatch(self, docs: Sequence[TokenizedDoc], batch: Batch) -> _InFlight:
        rows, host_rows, arrays = self.host_arrays(docs, batch)
        result = self.step(rows, batch.seq, arrays, self.stats)
        self.stats.batches += 1
        self.stats.padded_tokens += host_rows * batch.seq
        return _InFlight(np.asarray(batch.rows, np.int64), host_rows * batch.seq, result)

    def _collect(self, done: _InFlight, out: EmbedOutput, on_batch) -> None:
        rows, m = done.rows, len(done.rows)
        dense, pooled, ids, weights = done.result
        dense, ids, weights = (np.asarray(self.feed.local(a))[:m] for a in (dense, ids, weights))
        check_outputs(dense, ids, weights, self.model.config.vocab_size, rows)
        out.dense[rows], out.token_ids[rows], out.token_weights[rows] = dense, ids, weights
        if out.pooled is not None:   # read back only when asked (the fit pass)
            out.pooled[rows] = np.asarray(self.feed.local(pooled))[:m]
        if on_batch is not None and m:
            on_batch(m, int(out.lengths[rows].sum()), done.padded)

    # ------------------------------------------------------------------ API
    def encode(self, sentences: str | Sequence[str], batch_size: int | None = None,
               show_progress_bar: bool = False, output_value: str | None = "sentence_embedding",
               window: int = 4096, prompt_name: str | None = None, prompt: str | None = None,
               **kwargs):
        """sentence-transformers / MTEB ``encode``: dense ``np.ndarray [N, D]`` (``[D]`` for one
        string). ``batch_size`` is accepted for compatibility; batches are formed by token budget
        (``batch_tokens``) over fixed shapes. ``output_value=None`` returns :class:`EmbedOutput`.
        ``prompt_name`` (a sentence-transformers folder's named prompt) or ``prompt`` (a prompt
        text) replace the settings' prompt for this call, as in sentence-transformers."""
        if output_value not in (None, "sentence_embedding"):
            raise SettingsError(f"output_value must be 'sentence_embedding' or None, got {output_value!r}")
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        starts = range(0, len(texts), window)
        if show_progress_bar:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="encode", unit="window")
        tokenizer = self._tokenizer_for(prompt_name, prompt)
        parts = [self._encode_window(texts, s, window, tokenizer) for s in starts]
        if parts:
            result = EmbedOutput(*(np.concatenate([getattr(p, f.name) for p in parts])
                                   for f in dataclasses.fields(EmbedOutput) if f.name != "pooled"))
        else:
            result = self.embed_tokenized([])
        if output_value is None:
            return result
        return result.dense[0] if single else result.dense

    def _tokenizer_for(self, prompt_name: str | None, prompt: str | None) -> DocTokenizer:
        """The DocTokenizer of a call's prompt (the settings' one when neither is given)."""
        if prompt is None and prompt_name is None:
            return self.doc_tokenizer
        if prompt is None:
            if self.st_modules is None:
                raise SettingsError(f"prompt_name {prompt_name!r}: {self.model.source} is not a "
                                    "sentence-transformers folder followed (no modules.json, or "
                                    "model_declares='ignore'); pass prompt= instead")
            prompt = self.st_modules.prompt(prompt_name)
        if prompt not in self._prompt_tokenizers:
            pooled = self.st_modules.include_prompt if self.st_modules is not None else True
            template = dataclasses.replace(self.settings, instruction=prompt or None,
                                           instruction_format="plain", prompt="{text}",
                                           pool_instruction=pooled).template()
            self._prompt_tokenizers[prompt] = self._new_tokenizer(template)
        return self._prompt_tokenizers[prompt]

    def _new_tokenizer(self, template) -> DocTokenizer:
        """A DocTokenizer of ``template``. A sentence-transformers folder's prompt (the template's
        instruction) is tokenized with each text as one string and kept out of pooling as
        sentence-transformers counts it (:func:`st_prompt_length`)."""
        literal = self.literal_tokens if self.settings.doc_tokens == "literal" else None
        if self.st_modules is None:
            return DocTokenizer(self.model.tokenizer, template, self.settings.max_length, literal=literal)
        prompt = template.instruction or ""
        start = 0 if template.pool_instruction else st_prompt_length(self.model.tokenizer, prompt)
        return DocTokenizer(self.model.tokenizer, dataclasses.replace(template, instruction=None),
                            self.settings.max_length, start, joint_prompt=prompt, literal=literal)

    @cached_property
    def literal_tokens(self) -> LiteralTokens:
        """Texts → their literal token ids (documents' and token queries' one rule)."""
        return LiteralTokens(self.model.tokenizer, self.model.config.vocab_size)

    def _encode_window(self, texts: list[str], start: int, window: int,
                       tokenizer: DocTokenizer | None = None) -> EmbedOutput:
        try:
            return self.embed_tokenized((tokenizer or self.doc_tokenizer)(texts[start: start + window]))
        except EmbedError as e:   # name the texts by their index in encode's input
            raise e.shifted(start) from None
