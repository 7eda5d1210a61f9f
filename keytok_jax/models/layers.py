"""Layers shared by every family: norms, rotary embeddings, masks, attention, MLPs.

Parameters carry logical axis names (see ``keytok_jax/sharding.py`` for the one table that maps
them to mesh axes). Norms, softmax and rotary tables are computed in float32 whatever the
parameter dtype, as transformers does.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .config import DecoderConfig, RopeConfig

Dtype = Any
_init = nn.initializers.normal(0.02)


def logical(init, names):
    return nn.with_logical_partitioning(init, names)


class Linear(nn.Module):
    """``x @ kernel (+ bias)``, kernel [in, out] (transformers stores [out, in]), as ``nn.Dense``.

    When the parameters passed to ``apply`` also hold ``lora_a [in, r]`` and ``lora_b [r, out]``
    beside the kernel (fine-tuning, keytok_jax/train/objectives.py), it adds ``(x @ lora_a) @ lora_b``:
    the frozen kernel then never needs a gradient, which halves the backward pass compared with
    differentiating a merged ``kernel + lora_a @ lora_b``. Checkpoints never hold them."""
    features: int
    use_bias: bool
    names: tuple[str, str]
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", logical(_init, self.names), (x.shape[-1], self.features), self.dtype)
        y = jnp.dot(x, kernel.astype(x.dtype))
        if self.has_variable("params", "lora_a"):
            a, b = self.get_variable("params", "lora_a"), self.get_variable("params", "lora_b")
            y = y + jnp.dot(jnp.dot(x, a.astype(x.dtype)), b.astype(x.dtype))
        if self.use_bias:
            y = y + self.param("bias", logical(nn.initializers.zeros_init(), self.names[-1:]),
                               (self.features,), self.dtype).astype(x.dtype)
        return y


def dense(features: int, use_bias: bool, names: tuple[str, str], dtype: Dtype, name: str) -> Linear:
    return Linear(features, use_bias, names, dtype, name=name)


ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


class RMSNorm(nn.Module):
    eps: float
    dtype: Dtype = jnp.float32
    gemma: bool = False   # Gemma stores (weight - 1) and multiplies before the cast back

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.zeros_init() if self.gemma else nn.initializers.ones_init()
        scale = self.param("scale", logical(init, ("norm",)), (x.shape[-1],), self.dtype)
        h = x.astype(jnp.float32)
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
        if self.gemma:
            return (h * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)
        return scale * h.astype(x.dtype)


class LayerNorm(nn.Module):
    eps: float
    dtype: Dtype = jnp.float32
    affine: bool = True
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        h = x.astype(jnp.float32)
        mean = jnp.mean(h, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(h - mean), axis=-1, keepdims=True)
        h = (h - mean) * jax.lax.rsqrt(var + self.eps)
        if self.affine:
            d = x.shape[-1]
            h = h * self.param("scale", logical(nn.initializers.ones_init(), ("norm",)), (d,), self.dtype)
            if self.use_bias:
                h = h + self.param("bias", logical(nn.initializers.zeros_init(), ("norm",)), (d,), self.dtype)
        return h.astype(x.dtype)


# ----------------------------------------------------------------------------- positions

def positions_from_mask(segments):
    """Position of each token counted from the first real token of its text; padding before
    every text gets 0, padding after one continues its count (neither is ever attended).

    ``segments [B, T]``: 0 for padding, else the number of the text the token belongs to; a
    plain 0/1 attention mask is one text per row, and several numbers are texts packed into one
    row (contiguous, each with its own positions from 0)."""
    segments = segments.astype(jnp.int32)
    valid = segments > 0
    count = jnp.cumsum(valid.astype(jnp.int32), axis=1)                  # real tokens so far
    before = jnp.pad(segments[:, :-1], ((0, 0), (1, 0)))
    first = valid & (segments != before)                                 # a text's first token
    start = jax.lax.cummax(jnp.where(first, count - 1, 0), axis=1)       # real tokens before it
    return jnp.maximum(count - 1 - start, 0)


def rope_inv_freq(rope: RopeConfig) -> np.ndarray:
    """Inverse frequencies in float32, computed as transformers computes them."""
    dim = rope.rotary_dim
    exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv = (np.float32(1.0) / (np.float32(rope.theta) ** exponent)).astype(np.float32)
    if rope.kind == "linear":
        inv = inv / np.float32(rope.factor)
    elif rope.kind == "llama3":
        old = rope.original_max_positions
        low_wavelen = old / rope.low_freq_factor
        high_wavelen = old / rope.high_freq_factor
        wavelen = 2 * np.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / rope.factor, inv)
        smooth = (old / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv = np.where(medium, smoothed, scaled).astype(np.float32)
    return inv


def rope_table(rope: RopeConfig, positions):
    """(cos, sin), each [batch, seq, rotary_dim], float32."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(rope_inv_freq(rope))
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x, cos, sin):
    """Rotate the first rotary_dim dims of each head (x: [batch, seq, heads, head_dim])."""
    rd = cos.shape[-1]
    rot, rest = x[..., :rd], x[..., rd:]
    x1, x2 = rot[..., : rd // 2], rot[..., rd // 2:]
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    rotated = rot * cos + jnp.concatenate([-x2, x1], axis=-1) * sin
    return jnp.concatenate([rotated, rest], axis=-1) if rest.shape[-1] else rotated


# ----------------------------------------------------------------------------- attention

def text_mask(segments):
    """Boolean [batch, q, k]: the key is real and of the query's text. ``segments`` as in
    :func:`positions_from_mask`. A padding query takes the text before it (the first text when
    none is): its output is never read, but it needs a real key to attend to, as under a plain
    padding mask. One comparison per query-key pair, computed once outside the scan over layers."""
    segments = segments.astype(jnp.int32)
    query_text = jnp.maximum(jax.lax.cummax(segments, axis=1), 1)
    return segments[:, None, :] == query_text[:, :, None]


def attention_mask(positions, texts, causal: bool, window):
    """Boolean [batch, 1, q, k]: ``texts`` (:func:`text_mask`'s) and (causal) the key not in the
    future, and inside the window.

    ``window`` may be a traced per-layer scalar; 0 means full attention. Distances use positions,
    not indices, so left and right padding give the same masks for the real tokens.
    """
    diff = positions[:, :, None] - positions[:, None, :]
    allowed = texts
    if causal:
        allowed = allowed & (diff >= 0)
        in_window = diff < window
    else:
        in_window = jnp.abs(diff) < window
    allowed = allowed & ((window <= 0) | in_window)
    return allowed[:, None]


ATTENTION_BLOCK = 64
ATTENTION_IMPLS = ("xla", "fused")


def check_attention_impl(impl: str) -> str:
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
    return impl


def resolve_attention_impl(impl: str, dtype, device) -> str:
    """``"auto"`` → ``"fused"`` where cuDNN's fused attention runs (an NVIDIA GPU and a bfloat16 or
    float16 model: 1.14x the einsums' tokens/s for SmolLM2 on an H200, README), else ``"xla"``
    (on CPU jax's version took 1.5-4.4x the einsums' time). Other values are checked and kept."""
    if impl != "auto":
        return check_attention_impl(impl)
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    cuda = device.platform in ("gpu", "cuda") and "rocm" not in str(
        getattr(device.client, "platform_version", "")).lower()
    return "fused" if half and cuda else "xla"


def attend(q, k, v, mask, scale: float, softcap: float | None = None, causal: bool = False,
           block: int = ATTENTION_BLOCK, impl: str = "xla"):
    """Grouped-query attention. q [B,T,H,hd], k/v [B,S,K,hd], mask [B,1,T,S] → [B,T,H,hd].

    Two implementations, chosen by ``impl`` (a static module attribute: each is its own compiled
    program). ``"fused"`` is :func:`attend_fused`, ``jax.nn.dot_product_attention``: on GPU cuDNN's
    fused (flash) attention, which never writes the per-head [T, S] scores to memory (jax hands it
    the mask as one additive [B, 1, T, S] bias); elsewhere jax's XLA version of the same math. ``"xla"`` (the default) is the blocked einsums below, written for
    XLA:CPU, where jax's version took 2.8-4.4x their time causal and 1.5-1.7x bidirectional (one
    layer's attention, 4 x 512 tokens, 8 heads over 2 KV heads of 64; two noisy runs on a busy
    2-core machine). Both give the real tokens the same outputs (tests/test_attention_impl.py).

    Heads go first and a KV head's query group is folded into the rows (``[B, K, G*Tb, hd]``), so
    both products are plain batched matmuls with the contraction last: XLA:CPU runs other
    layouts of the same einsum about 2x slower. Queries go in blocks of ``block`` rows so the
    float32 scores stay cache-sized; with ``causal`` a block only reads keys up to its last query
    (later keys are masked anyway: positions grow with the index among real tokens), which
    halves the work on long sequences; blocks of 64 compute less of the masked upper triangle than
    128 (a SmolLM2 layer's attention was 3-21% faster over noisy runs at 256 and 512 tokens)."""
    if check_attention_impl(impl) == "fused":
        return attend_fused(q, k, v, mask, scale, softcap, causal)
    b, t, h, hd = q.shape
    s, kv = k.shape[1], k.shape[2]
    g = h // kv
    q = q.reshape(b, t, kv, g, hd).transpose(0, 2, 3, 1, 4)        # [B, K, G, T, hd]
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)          # [B, K, S, hd]
    outs = []
    for start in range(0, t, block):
        stop = min(start + block, t)
        keys = min(stop, s) if causal else s
        outs.append(_attend(q[:, :, :, start:stop], k[:, :, :keys], v[:, :, :keys],
                            mask[:, :, start:stop, :keys], scale, softcap))
    return jnp.concatenate(outs, axis=3).transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd)


def _attend(q, k, v, mask, scale, softcap):
    """One query block: q [B,K,G,Tb,hd], k/v [B,K,Sb,hd], mask [B,1,Tb,Sb] → [B,K,G,Tb,hd]."""
    b, kv, g, t, hd = q.shape
    s = k.shape[2]
    scores = jnp.einsum("bkmd,bksd->bkms", q.reshape(b, kv, g * t, hd), k,
                        preferred_element_type=jnp.float32).reshape(b, kv, g, t, s) * scale
    if softcap:
        scores = jnp.tanh(scores / softcap) * softcap
    scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkms,bksd->bkmd", probs.reshape(b, kv, g * t, s), v)
    return out.reshape(b, kv, g, t, hd)


def attend_fused(q, k, v, mask, scale: float, softcap: float | None = None, causal: bool = False):
    """:func:`attend` through ``jax.nn.dot_product_attention`` (same shapes).

    Scores and softmax are float32 as in :func:`_attend` (jax promotes the logits to float32 and
    casts the probabilities to v's dtype; cuDNN keeps its softmax statistics in float32). The
    boolean mask goes in whole: windows are traced per layer under the scan and padding may be on
    either side, which neither ``local_window_size`` nor sequence lengths express. With ``causal``
    the mask is also cut to the lower triangle of indices (the same keys for real tokens: positions
    grow with the index among them) and ``is_causal`` lets cuDNN skip the blocks above it. Query
    rows left with no key (padding) come out as zeros, so nothing non-finite reaches later layers
    through the padding positions' keys and values; the real rows equal :func:`attend`'s."""
    if softcap:
        raise ValueError(f"attention impl 'fused' does not support attention logit softcapping "
                         f"(attn_softcap={softcap}): jax.nn.dot_product_attention has no softcap; "
                         f"use impl='xla'")
    implementation = _fused_implementation(q.dtype)
    if causal:
        mask = mask & jnp.tril(jnp.ones(mask.shape[-2:], bool))
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, is_causal=causal,
                                       implementation=implementation)
    has_key = jnp.any(mask, axis=-1)[:, 0, :, None, None]           # [B, T, 1, 1]
    return jnp.where(has_key, out, jnp.zeros((), out.dtype))


def _fused_implementation(dtype) -> str:
    """cuDNN on GPU (jax's default, None, is XLA everywhere), which takes bfloat16 or float16 only."""
    if jax.default_backend() != "gpu":
        return "xla"
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        raise ValueError(f"attention impl 'fused' runs cuDNN fused attention on GPU, which takes "
                         f"bfloat16 or float16, not {jnp.dtype(dtype)}; use impl='xla' or a bfloat16 model")
    return "cudnn"


class Attention(nn.Module):
    cfg: DecoderConfig
    dtype: Dtype = jnp.float32
    qk_norm: bool = False   # per-head q/k RMSNorm before RoPE (Gemma3, Qwen3)
    causal: bool = True
    qk_norm_gemma: bool = True  # Gemma3's (1 + w) scale; False: Qwen3's plain w
    impl: str = "xla"           # see attend (the decoder's attention_impl, through its block)

    @nn.compact
    def __call__(self, x, mask, rope=None):
        cfg = self.cfg
        b, t, _ = x.shape
        hd = cfg.head_dim
        q = dense(cfg.num_heads * hd, cfg.qkv_bias, ("embed", "heads"), self.dtype, "q")(x)
        k = dense(cfg.num_kv_heads * hd, cfg.qkv_bias, ("embed", "kv_heads"), self.dtype, "k")(x)
        v = dense(cfg.num_kv_heads * hd, cfg.qkv_bias, ("embed", "kv_heads"), self.dtype, "v")(x)
        q = q.reshape(b, t, cfg.num_heads, hd)
        k = k.reshape(b, t, cfg.num_kv_heads, hd)
        v = v.reshape(b, t, cfg.num_kv_heads, hd)
        if self.qk_norm:
            q = RMSNorm(cfg.norm_eps, self.dtype, gemma=self.qk_norm_gemma, name="q_norm")(q)
            k = RMSNorm(cfg.norm_eps, self.dtype, gemma=self.qk_norm_gemma, name="k_norm")(k)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        scale = cfg.attn_scale if cfg.attn_scale is not None else hd ** -0.5
        out = attend(q, k, v, mask, scale, cfg.attn_softcap, causal=self.causal,
                     impl=self.impl)
        return dense(cfg.hidden_size, cfg.out_bias, ("heads", "embed"), self.dtype, "o")(
            out.reshape(b, t, cfg.num_heads * hd))


class MLP(nn.Module):
    """fc_in → activation → fc_out (GPT-2, GPT-Neo, OPT, GPT-NeoX)."""
    cfg: DecoderConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        h = dense(cfg.intermediate_size, cfg.mlp_bias, ("embed", "mlp"), self.dtype, "fc_in")(x)
        h = ACTIVATIONS[cfg.activation](h)
        return dense(cfg.hidden_size, cfg.mlp_bias, ("mlp", "embed"), self.dtype, "fc_out")(h)


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)): SwiGLU (Llama) or GeGLU (Gemma)."""
    cfg: DecoderConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        gate = dense(cfg.intermediate_size, cfg.mlp_bias, ("embed", "mlp"), self.dtype, "gate")(x)
        up = dense(cfg.intermediate_size, cfg.mlp_bias, ("embed", "mlp"), self.dtype, "up")(x)
        return dense(cfg.hidden_size, cfg.mlp_bias, ("mlp", "embed"), self.dtype, "down")(
            ACTIVATIONS[cfg.activation](gate) * up)


def embed(num: int, dim: int, dtype: Dtype, name: str, names=("vocab", "embed")) -> nn.Embed:
    return nn.Embed(num, dim, dtype=dtype, param_dtype=dtype, name=name, embedding_init=logical(_init, names))
