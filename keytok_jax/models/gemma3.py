"""Gemma3 text family (``gemma3_text``, Gemma3ForCausalLM; also EmbeddingGemma-style checkpoints
with ``use_bidirectional_attention``). Gemma RMSNorm (1 + w), four norms per block (sandwich
norms around attention and MLP), per-head q/k RMSNorm, embeddings scaled by sqrt(hidden), GeGLU,
``query_pre_attn_scalar`` attention scale, sliding/full layer pattern with a separate rotary table
for the sliding layers, optional final-logit softcapping, tied LM head.

Notes on transformers 5.x behaviour this port reproduces:

* ``attn_logit_softcapping`` is stored by ``Gemma3Attention`` but never passed to the attention
  function, so transformers ignores it (unlike Gemma2). The port ignores it too.
* With ``use_bidirectional_attention=True``, ``Gemma3TextConfig`` replaces ``sliding_window`` W by
  W // 2 + 1 and sliding layers attend to |q - k| < W // 2 + 1 (config.json keeps W). The port
  stores the causal window W in ``layer_windows`` and a bidirectional module applies the same
  halving, so keytok's call-time ``attention="bidirectional"`` matches transformers built with the
  flag, and ``attention="causal"`` matches it built without, whichever the checkpoint declares.
* ``is_causal: false`` without ``use_bidirectional_attention`` makes transformers build its
  generic bidirectional masks (sliding layers: ``|q - k| <= W``); with sliding layers the port
  refuses such a config rather than run another window.
"""
from __future__ import annotations

import logging

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from .config import DecoderConfig, UnsupportedConfigError, refuse_unless, whole_head_rope
from .decoder import Block, Decoder
from .layers import Attention, GatedMLP, RMSNorm, attention_mask

log = logging.getLogger("keytok_jax")

MODEL_TYPES = ("gemma3_text", "gemma3")
_LAYER_TYPES = ("full_attention", "sliding_attention")
_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu", "gelu_new", "gelu_fast", "silu", "swish", "relu")


def _layer_rope(hf, layer_type: str, head_dim: int):
    params = getattr(hf, "rope_parameters", None) or {}
    if layer_type not in params:
        raise UnsupportedConfigError(
            f"gemma3_text: rope_parameters has no entry for {layer_type!r} (expected nested per-layer-type "
            f"rope parameters, as transformers 5 writes them)")
    return whole_head_rope(hf, head_dim, "gemma3_text", params=dict(params[layer_type]),
                           where=f"{layer_type}: ")


def config_from_hf(hf) -> DecoderConfig:
    if hf.model_type == "gemma3":
        raise UnsupportedConfigError(
            "gemma3: this is a multimodal Gemma3ForConditionalGeneration checkpoint (vision tower + "
            "language model); keytok_jax ports only the text model. Use a text-only checkpoint "
            "(model_type 'gemma3_text', Gemma3ForCausalLM, e.g. google/gemma-3-1b-it or 270m), or "
            "extract the language model into one.")
    family = "gemma3_text"
    refuse_unless(hf, {"hidden_activation": _ACTIVATIONS}, family)
    layer_types = tuple(hf.layer_types)
    if len(layer_types) != hf.num_hidden_layers:
        raise UnsupportedConfigError(
            f"{family}: layer_types lists {len(layer_types)} layers, num_hidden_layers={hf.num_hidden_layers}")
    unknown = set(layer_types) - set(_LAYER_TYPES)
    if unknown:
        raise UnsupportedConfigError(f"{family}: layer_types {sorted(unknown)} not implemented "
                                     f"(supported: {', '.join(_LAYER_TYPES)})")
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    sliding = "sliding_attention" in layer_types
    window = 0
    if sliding:
        window = int(hf.sliding_window or 0)
        if window <= 0:
            raise UnsupportedConfigError(f"{family}: sliding_attention layers need sliding_window > 0, "
                                         f"got {hf.sliding_window!r}")
        if getattr(hf, "use_bidirectional_attention", False):
            # Gemma3TextConfig.__post_init__ turned the config.json window W into W // 2 + 1; undo it.
            window = (window - 1) * 2
        elif getattr(hf, "is_causal", True) is False:
            raise UnsupportedConfigError(
                f"{family}: is_causal=false without use_bidirectional_attention is not implemented: "
                f"transformers then lets sliding layers see |q - k| <= sliding_window, keytok_jax's "
                f"bidirectional Gemma3 follows EmbeddingGemma (use_bidirectional_attention: "
                f"|q - k| < sliding_window // 2 + 1)")
    if getattr(hf, "attn_logit_softcapping", None) is not None:
        log.info("gemma3_text: attn_logit_softcapping=%s is ignored, as transformers' Gemma3 ignores it",
                 hf.attn_logit_softcapping)
    bias = bool(getattr(hf, "attention_bias", False))
    final_cap = getattr(hf, "final_logit_softcapping", None)
    return DecoderConfig(
        family="gemma3", model_type=family,
        vocab_size=hf.vocab_size, hidden_size=hf.hidden_size, num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        num_kv_heads=getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads,
        head_dim=head_dim, intermediate_size=hf.intermediate_size, norm_eps=hf.rms_norm_eps,
        activation=hf.hidden_activation, tie_word_embeddings=bool(hf.tie_word_embeddings),
        max_positions=hf.max_position_embeddings,
        qkv_bias=bias, out_bias=bias, mlp_bias=False,
        attn_scale=float(hf.query_pre_attn_scalar) ** -0.5,
        attn_softcap=None,
        layer_windows=tuple(window if kind == "sliding_attention" else 0 for kind in layer_types),
        rope=_layer_rope(hf, "full_attention", head_dim),
        local_rope=_layer_rope(hf, "sliding_attention", head_dim) if sliding else None,
        embed_scale=float(hf.hidden_size) ** 0.5,
        final_logit_softcap=float(final_cap) if final_cap is not None else None,
    )



class Gemma3Block(Block):
    @nn.compact
    def __call__(self, hidden, positions, texts, rope, layer):
        cfg, dt = self.cfg, self.dtype
        window = layer["window"]
        if not self.causal:
            # transformers' bidirectional Gemma3: sliding layers see |q - k| < W // 2 + 1
            window = jnp.where(window > 0, window // 2 + 1, 0)
        mask = attention_mask(positions, texts, self.causal, window)
        h = RMSNorm(cfg.norm_eps, dt, gemma=True, name="attn_norm")(hidden)
        h = Attention(cfg, dt, causal=self.causal, impl=self.attention_impl, qk_norm=True,
                      name="attn")(h, mask, self.layer_rope(rope, layer))
        hidden = hidden + RMSNorm(cfg.norm_eps, dt, gemma=True, name="post_attn_norm")(h)
        h = RMSNorm(cfg.norm_eps, dt, gemma=True, name="mlp_norm")(hidden)
        h = GatedMLP(cfg, dt, name="mlp")(h)
        hidden = hidden + RMSNorm(cfg.norm_eps, dt, gemma=True, name="post_mlp_norm")(h)
        return self.out(hidden)


class Gemma3(Decoder):
    Block = Gemma3Block

    def setup_family(self):
        self.final_norm = RMSNorm(self.cfg.norm_eps, self.dtype, gemma=True, name="final_norm")

    def embed_tokens(self, input_ids, positions):
        # transformers keeps sqrt(hidden) as a float32 buffer and casts it to the weight dtype
        # (bf16: sqrt(3072) = 55.4256 becomes 55.5).
        scale = jnp.asarray(np.float32(self.cfg.embed_scale)).astype(self.dtype)
        return self.embed(input_ids) * scale

    def finish(self, hidden):
        return self.final_norm(hidden)
