"""Llama family: Llama 1-3 (rope scaling: linear, llama3), Mistral (sliding window), Qwen2
(q/k/v biases, per-layer sliding windows). RMSNorm, rotary, GQA/MQA, SwiGLU.

A causal sliding layer sees keys with ``0 <= q - k < W``; bidirectional, ``|q - k| <= W``, as
transformers 5's bidirectional masks (a config with ``is_causal: false``) have it."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from .config import DecoderConfig, UnsupportedConfigError, refuse_unless, whole_head_rope
from .decoder import Block, Decoder
from .layers import Attention, GatedMLP, RMSNorm, attention_mask

MODEL_TYPES = ("llama", "mistral", "qwen2")


def _sliding_windows(hf, n_layers: int) -> tuple[int, ...]:
    window = getattr(hf, "sliding_window", None) or 0
    layer_types = getattr(hf, "layer_types", None)
    if layer_types and any(k not in ("full_attention", "sliding_attention") for k in layer_types):
        raise UnsupportedConfigError(f"{hf.model_type}: layer_types {sorted(set(layer_types))} not implemented "
                                     f"(supported: full_attention, sliding_attention)")
    if hf.model_type == "qwen2":
        if not layer_types:
            return (0,) * n_layers
        if "sliding_attention" in layer_types and not window:
            raise UnsupportedConfigError(
                f"qwen2: layer_types has sliding_attention layers but sliding_window={hf.sliding_window!r} "
                f"(transformers sets it to None unless use_sliding_window=true)")
        return tuple(window if kind == "sliding_attention" else 0 for kind in layer_types)
    return (window,) * n_layers if hf.model_type == "mistral" else (0,) * n_layers


def llama_shaped_config(hf, family: str, activations: tuple, windows, **fields) -> DecoderConfig:
    """The DecoderConfig of a Llama-shaped HF config (RMSNorm, rotary on whole heads, GQA, gated
    MLP): the fields every such family reads alike; ``windows(hf)`` gives the per-layer sliding
    windows (checked after the activation and the rope) and ``fields`` the family's biases."""
    refuse_unless(hf, {"hidden_act": activations}, hf.model_type)
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    rope = whole_head_rope(hf, head_dim, hf.model_type)
    return DecoderConfig(
        family=family, model_type=hf.model_type,
        vocab_size=hf.vocab_size, hidden_size=hf.hidden_size, num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        num_kv_heads=getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads,
        head_dim=head_dim, intermediate_size=hf.intermediate_size, norm_eps=hf.rms_norm_eps,
        activation=hf.hidden_act, tie_word_embeddings=bool(hf.tie_word_embeddings),
        max_positions=hf.max_position_embeddings,
        layer_windows=windows(hf), rope=rope, **fields,
    )


def config_from_hf(hf) -> DecoderConfig:
    bias = bool(getattr(hf, "attention_bias", False))
    return llama_shaped_config(
        hf, "llama", ("silu", "swish", "gelu", "gelu_new", "gelu_pytorch_tanh"),
        lambda hf: _sliding_windows(hf, hf.num_hidden_layers),
        qkv_bias=True if hf.model_type == "qwen2" else bias, out_bias=bias,
        mlp_bias=bool(getattr(hf, "mlp_bias", False)))


class LlamaBlock(Block):
    qk_norm = False   # Qwen3: per-head q/k RMSNorm (plain w, not Gemma's 1 + w) before RoPE

    @nn.compact
    def __call__(self, hidden, positions, texts, rope, layer):
        cfg, dt = self.cfg, self.dtype
        window = layer["window"]
        if not self.causal:
            # transformers' bidirectional sliding mask (config is_causal=False): |q - k| <= W
            window = jnp.where(window > 0, window + 1, 0)
        mask = attention_mask(positions, texts, self.causal, window)
        h = RMSNorm(cfg.norm_eps, dt, name="attn_norm")(hidden)
        attn = Attention(cfg, dt, causal=self.causal, impl=self.attention_impl,
                         qk_norm=self.qk_norm, qk_norm_gemma=False, name="attn")
        hidden = hidden + attn(h, mask, self.layer_rope(rope, layer))
        h = RMSNorm(cfg.norm_eps, dt, name="mlp_norm")(hidden)
        hidden = hidden + GatedMLP(cfg, dt, name="mlp")(h)
        return self.out(hidden)


class Llama(Decoder):
    Block = LlamaBlock

    def setup_family(self):
        self.final_norm = RMSNorm(self.cfg.norm_eps, self.dtype, name="final_norm")

    def finish(self, hidden):
        return self.final_norm(hidden)
