"""Analytic FLOP counts of the embedding pipeline, from a :class:`~keytok_jax.models.DecoderConfig`.

Pure Python (no JAX arrays, no torch): every function takes a config and sequence lengths and
returns numbers, so benchmarks can turn tokens/s into FLOP/s and MFU, and compare pipelines.

Conventions
-----------
A multiply-add is 2 FLOPs; a matmul ``[m, k] @ [k, n]`` is ``2 m k n``. Per token, the dense
layers cost ``2 * linear_params(cfg)``: q, k, v (``num_kv_heads`` heads each with GQA/MQA), o,
the MLP (three matrices when gated: Llama/Qwen3 SwiGLU, Gemma GeGLU; two otherwise) in every layer,
plus OPT's ``project_in``/``project_out``. The token embedding is a gather (0 FLOPs).

Attention costs ``4 * num_heads * head_dim`` per (query, key) pair and layer (``QK^T`` and
``PV``, each ``2 hd`` per pair and head; shared K/V heads do not reduce it). How many pairs are
counted is the ``count`` argument:

- ``"useful"``: the pairs the model needs. Causal: key ``s <= t`` (``T (T + 1) / 2`` pairs, about
  half), only the last ``window`` keys for sliding-window layers; bidirectional: all ``T^2``
  (within ``|t - s| < window``). This is the count behind achieved FLOP/s and MFU.
- ``"implemented"``: what :func:`keytok_jax.models.layers.attend` computes. Up to
  ``ATTENTION_BLOCK`` queries: the full ``T^2`` (masked scores are still computed); longer
  sequences go in query blocks of ``ATTENTION_BLOCK`` and, causal, a block reads keys up to its
  last query (``sum_b len_b * stop_b`` pairs: 3/4 of ``T^2`` at 2 blocks, 5/8 at 4, 9/16 at 8, i.e. T = 128, 256, 512);
  windows are masked, never skipped. It also adds ``elementwise`` (below).
- ``"full"``: ``T^2`` pairs, as a dense masked implementation computes them (e.g. transformers'
  eager / SDPA attention with a padding mask on CPU).

``"implemented"`` also includes an estimate of the elementwise work *as XLA's cost analysis counts
it* (1 FLOP per elementwise add/multiply/compare/select/reduce element, transcendentals such as
``exp``, ``rsqrt``, ``erf``'s polynomial aside counted separately by XLA): RMSNorm 4 per element (Gemma3's and Qwen3's per-head q/k norms too),
LayerNorm 8 (6 without affine), residual adds 1, biases 1, rotary 3.5 per rotated q/k element,
SiLU 4 (GELU tanh 8, exact GELU 64, ReLU 1) plus 1 for the gate product, 6 per attention score
(scale, mask select, max, subtract, sum, divide; +2 with a softcap), 6 per (query, key) position
pair per layer for the mask itself (built for the full ``T x T`` whatever the blocking), ~19 per
token for positions, 1 per hidden element for ``last`` pooling's select, 2 per logit in the
chunked top-k. These coefficients were read off ``jax.jit(f).lower(...).compile().cost_analysis()``
of each layer on XLA:CPU; they matter only for tiny models (hidden 64: ~5% of the total; SmolLM2:
<1%). ``useful`` and ``full`` carry no elementwise term: the matmul/attention count is the
convention for MFU.

Cross-checking against XLA (``benchmarks/flops.py``, ``tests/test_flops.py``): XLA's
``cost_analysis()['flops']`` counts the body of a ``while`` loop *once*, whatever its trip count.
The decoder scans its layers (``nn.scan``) and the top-k scans the vocabulary in chunks, so the
raw number covers one layer and one vocabulary chunk. The cross-check measures one layer inside
the real program, ``raw(model) - raw(the same model with 0 layers)``, and adds ``num_layers - 1``
of it, plus ``chunks - 1`` one-chunk projections compiled alone. The ``implemented`` count matches
that within 1% (tiny config, T = 64 .. 1024: <0.5%). How XLA counts the
mask depends on fusion: inside the layer loop about once per (query, key) pair and layer (part of
it is hoisted out of the loop), but a block compiled alone counts it once per query block (each
block's fusion recomputes it) — which is why the layer is measured in context. Work hoisted out
of the loop and the rotary table (dropped from the 0-layer model) are counted ``num_layers - 1``
extra times by the correction: negligible beyond tiny models and long sequences.

The LM head (sparse pipeline) is applied once per document to the pooled vector:
``2 * output_dim * vocab_size`` (``"useful"``); the chunked scan of
:func:`keytok_jax.projection.topk_projection` computes ``ceil(V / c) * c`` rows (the last chunk
overlaps the previous one when ``c`` does not divide ``V``) — pass ``vocab_chunk`` to count that.
Top-k selection and sorting are not FLOPs (XLA counts them as 0 as well).

Per query: an inference-free query (tokens only: the query's token ids are the sparse vector)
costs 0 model FLOPs; an encoded query costs the forward pass of its T tokens plus the LM-head
projection (sparse) — the same as a document of that length.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .models.config import DecoderConfig
from .models.layers import ATTENTION_BLOCK

COUNTS = ("useful", "implemented", "full")
DOC_MODES = ("dense", "sparse")
QUERY_MODES = ("tokens", "encode")

# XLA cost-analysis FLOPs per element (see the module docstring).
_ACTIVATION = {"silu": 4, "swish": 4, "gelu": 64, "gelu_new": 8, "gelu_fast": 8,
               "gelu_pytorch_tanh": 8, "relu": 1}
_RMSNORM, _LAYERNORM, _LAYERNORM_NO_AFFINE = 4.0, 8.0, 6.0
_ROPE_PER_ELEMENT = 3.5
_SCORE, _SOFTCAP, _MASK_PAIR = 6.0, 2.0, 6.0
_POSITIONS_PER_TOKEN, _ROPE_TABLE_PER_DIM = 19.0, 1.125
_TOPK_PER_LOGIT = 2.0


@dataclass(frozen=True)
class Flops:
    """A FLOP count split by where it goes. ``model`` = matmul + attention + lm_head (the count
    used for FLOP/s and MFU); ``total`` adds the elementwise estimate (``implemented`` only)."""
    matmul: float = 0.0
    attention: float = 0.0
    lm_head: float = 0.0
    elementwise: float = 0.0

    @property
    def model(self) -> float:
        return self.matmul + self.attention + self.lm_head

    @property
    def total(self) -> float:
        return self.model + self.elementwise

    def __add__(self, other: Flops) -> Flops:
        return Flops(self.matmul + other.matmul, self.attention + other.attention,
                     self.lm_head + other.lm_head, self.elementwise + other.elementwise)

    def __mul__(self, n: float) -> Flops:
        return Flops(self.matmul * n, self.attention * n, self.lm_head * n, self.elementwise * n)

    __rmul__ = __mul__

    def as_dict(self) -> dict:
        return {**asdict(self), "model": self.model, "total": self.total}


def _check_count(count: str) -> None:
    if count not in COUNTS:
        raise ValueError(f"count must be one of {COUNTS}, got {count!r}")


def _gated(cfg: DecoderConfig) -> bool:
    return cfg.family in ("llama", "gemma3", "qwen3")


def linear_params(cfg: DecoderConfig) -> int:
    """Weights that multiply every token (all layers): q/k/v/o and the MLP, plus OPT's
    project_in/out. Excludes the embedding (a gather), norms, biases and the LM head."""
    d, hd = cfg.hidden_size, cfg.head_dim
    attn = d * cfg.num_heads * hd * 2 + d * cfg.num_kv_heads * hd * 2      # q, o; k, v
    mlp = (3 if _gated(cfg) else 2) * d * cfg.intermediate_size
    extra = 2 * cfg.word_embed_proj_dim * d if cfg.word_embed_proj_dim else 0
    return cfg.num_layers * (attn + mlp) + extra


def matmul_flops_per_token(cfg: DecoderConfig) -> float:
    """``2 * linear_params``: the dense layers' FLOPs for one token."""
    return 2.0 * linear_params(cfg)


def attention_pairs(T: int, *, causal: bool = True, window: int = 0, count: str = "useful",
                    block: int = ATTENTION_BLOCK) -> int:
    """(query, key) pairs whose scores one head of one layer computes for a sequence of ``T``."""
    _check_count(count)
    if T <= 0:
        return 0
    if count == "full":
        return T * T
    if count == "implemented":
        if T <= block or not causal:
            return T * T
        return sum((min(s + block, T) - s) * min(s + block, T) for s in range(0, T, block))
    if causal:
        if window <= 0 or window >= T:
            return T * (T + 1) // 2
        # query t sees min(t + 1, window) keys
        return window * (window + 1) // 2 + (T - window) * window
    if window <= 0 or window >= T:
        return T * T
    # |t - s| < window: T diagonal pairs, and 2 (T - j) pairs at each distance j = 1 .. window-1
    return T + sum(2 * (T - j) for j in range(1, window))


def attention_flops(cfg: DecoderConfig, T: int, *, causal: bool = True, count: str = "useful") -> float:
    """QK^T and PV FLOPs of all layers for one sequence of ``T`` tokens (4 hd H per pair)."""
    per_pair = 4.0 * cfg.num_heads * cfg.head_dim
    windows = cfg.windows
    if count != "useful":   # windows are masked, not skipped, by the implementation
        return per_pair * cfg.num_layers * attention_pairs(T, causal=causal, count=count)
    by_window: dict[int, int] = {}
    for w in windows:
        by_window[w] = by_window.get(w, 0) + 1
    return per_pair * sum(n * attention_pairs(T, causal=causal, window=w) for w, n in by_window.items())


def lm_head_flops(cfg: DecoderConfig, vocab_chunk: int | None = None) -> float:
    """LM-head projection of one pooled vector: ``2 * output_dim * vocab`` (or the rows the
    chunked top-k actually scans when ``vocab_chunk`` is given)."""
    v = cfg.vocab_size
    if vocab_chunk:
        c = min(vocab_chunk, v)
        v = -(-v // c) * c
    return 2.0 * cfg.output_dim * v


def _norm(cfg: DecoderConfig) -> float:
    if cfg.family in ("llama", "gemma3", "qwen3"):
        return _RMSNORM
    return _LAYERNORM if cfg.norm_affine else _LAYERNORM_NO_AFFINE


def elementwise_flops(cfg: DecoderConfig, T: int, *, causal: bool = True, pooling: bool = False,
                      vocab_chunk: int | None = None, sparse: bool = False) -> float:
    """XLA-convention estimate of the non-matmul FLOPs of one sequence of ``T`` tokens (padded
    length: padding is computed too), see the module docstring. ``pooling``: add the pooling
    select; ``sparse``: add the chunked top-k's per-logit work."""
    d, hd, h, kv, i = cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size
    norms = 4 if cfg.family == "gemma3" else 2
    per_token = norms * _norm(cfg) * d + 2 * d
    if cfg.family in ("gemma3", "qwen3"):
        per_token += _RMSNORM * (h + kv) * hd          # per-head q/k norms
    if cfg.rope is not None:
        per_token += _ROPE_PER_ELEMENT * (h + kv) * cfg.rope.rotary_dim
    per_token += _ACTIVATION.get(cfg.activation, 4) * i + (i if _gated(cfg) else 0)
    if cfg.qkv_bias:
        per_token += (h + 2 * kv) * hd
    if cfg.out_bias:
        per_token += d
    if cfg.mlp_bias:
        per_token += i * (2 if _gated(cfg) else 1) + d
    score = _SCORE + (_SOFTCAP if cfg.attn_softcap else 0.0)
    per_layer = (per_token * T + score * h * attention_pairs(T, causal=causal, count="implemented")
                 + _MASK_PAIR * T * T)
    outside = _POSITIONS_PER_TOKEN * T
    if cfg.final_norm:
        outside += _norm(cfg) * cfg.output_dim * T
    if cfg.rope is not None:
        outside += _ROPE_TABLE_PER_DIM * cfg.rope.rotary_dim * T * (2 if cfg.local_rope else 1)
    if cfg.embed_scale != 1.0:
        outside += d * T
    if cfg.family in ("gpt2", "gpt_neo", "opt"):
        outside += d * T                                # learned position embeddings
    if pooling:
        outside += cfg.output_dim * T
    if sparse:
        outside += _TOPK_PER_LOGIT * lm_head_flops(cfg, vocab_chunk) / (2.0 * cfg.output_dim)
    return cfg.num_layers * per_layer + outside


def forward_flops(cfg: DecoderConfig, T: int, *, count: str = "useful", causal: bool = True) -> Flops:
    """One forward pass over ``T`` tokens (no LM head)."""
    _check_count(count)
    return Flops(matmul=matmul_flops_per_token(cfg) * T,
                 attention=attention_flops(cfg, T, causal=causal, count=count),
                 elementwise=elementwise_flops(cfg, T, causal=causal) if count == "implemented" else 0.0)


def doc_flops(cfg: DecoderConfig, T: int, mode: str = "sparse", *, count: str = "useful",
              causal: bool = True, vocab_chunk: int | None = None) -> Flops:
    """One document of ``T`` tokens. ``dense``: forward pass (pooling is negligible and not
    counted outside ``implemented``); ``sparse``: plus the LM-head projection of the pooled vector
    (``vocab_chunk`` only matters for ``implemented``)."""
    if mode not in DOC_MODES:
        raise ValueError(f"mode must be one of {DOC_MODES}, got {mode!r}")
    f = forward_flops(cfg, T, count=count, causal=causal)
    sparse = mode == "sparse"
    chunk = vocab_chunk if count == "implemented" else None
    lm = lm_head_flops(cfg, chunk) if sparse else 0.0
    extra = 0.0
    if count == "implemented":
        extra = (elementwise_flops(cfg, T, causal=causal, pooling=True, sparse=sparse, vocab_chunk=chunk)
                 - f.elementwise)
    return Flops(f.matmul, f.attention, lm, f.elementwise + extra)


def query_flops(cfg: DecoderConfig, T: int, mode: str = "tokens", *, count: str = "useful",
                causal: bool = True, sparse: bool = True, vocab_chunk: int | None = None) -> Flops:
    """One query of ``T`` tokens. ``tokens`` (inference-free: the query's own token ids are its
    sparse vector): 0. ``encode``: forward pass plus, if ``sparse``, the LM-head projection."""
    if mode not in QUERY_MODES:
        raise ValueError(f"mode must be one of {QUERY_MODES}, got {mode!r}")
    if mode == "tokens":
        return Flops()
    return doc_flops(cfg, T, "sparse" if sparse else "dense", count=count, causal=causal,
                     vocab_chunk=vocab_chunk)


def step_flops(cfg: DecoderConfig, rows: int, seq: int, *, sparse: bool = True, count: str = "implemented",
               causal: bool = True, vocab_chunk: int | None = 4096) -> Flops:
    """One padded batch ``[rows, seq]`` as the embedder's jitted step runs it: every row computes
    all ``seq`` positions (padding included) and the LM head (``sparse``)."""
    return rows * doc_flops(cfg, seq, "sparse" if sparse else "dense", count=count, causal=causal,
                            vocab_chunk=vocab_chunk)


def corpus_flops(cfg: DecoderConfig, lengths, mode: str = "sparse", *, count: str = "useful",
                 causal: bool = True) -> Flops:
    """Sum of :func:`doc_flops` over documents of the given real lengths (padding excluded)."""
    total = Flops()
    seen: dict[int, Flops] = {}
    for t in lengths:
        t = int(t)
        if t not in seen:
            seen[t] = doc_flops(cfg, t, mode, count=count, causal=causal)
        total = total + seen[t]
    return total


def flops_per_token(cfg: DecoderConfig, T: int, mode: str = "sparse", *, count: str = "useful") -> float:
    """Model FLOPs per token of a document of length ``T`` (attention and LM head amortised)."""
    return doc_flops(cfg, T, mode, count=count).model / max(T, 1)


def human(x: float) -> str:
    """``1.23 GFLOP``-style rendering for tables."""
    if x == 0:
        return "0"
    units = ["", "K", "M", "G", "T", "P"]
    e = min(int(math.log10(abs(x)) // 3), len(units) - 1)
    return f"{x / 10 ** (3 * e):.3g} {units[e]}"


__all__ = [
    "COUNTS",
    "Flops",
    "attention_flops",
    "attention_pairs",
    "corpus_flops",
    "doc_flops",
    "elementwise_flops",
    "flops_per_token",
    "forward_flops",
    "human",
    "linear_params",
    "lm_head_flops",
    "matmul_flops_per_token",
    "query_flops",
    "step_flops",
]
