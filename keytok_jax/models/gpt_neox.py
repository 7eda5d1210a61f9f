"""GPT-NeoX family (Pythia, GPT-NeoX-20B): LayerNorm, partial rotary (``rotary_pct``), fused per-head
``query_key_value`` (split into q, k, v at load time), biases, GELU MLP, parallel or sequential
residual, separate ``embed_out`` LM head unless ``tie_word_embeddings``."""
from __future__ import annotations

import flax.linen as nn

from .config import DecoderConfig, UnsupportedConfigError, refuse_unless, rope_from_hf
from .decoder import Block, Decoder
from .layers import ACTIVATIONS, MLP, Attention, LayerNorm, attention_mask

MODEL_TYPES = ("gpt_neox",)


def config_from_hf(hf) -> DecoderConfig:
    family = hf.model_type
    refuse_unless(hf, {"hidden_act": tuple(ACTIVATIONS)}, family)
    if hf.hidden_size % hf.num_attention_heads:
        raise UnsupportedConfigError(
            f"{family}: hidden_size={hf.hidden_size} is not a multiple of num_attention_heads={hf.num_attention_heads}")
    head_dim = hf.hidden_size // hf.num_attention_heads
    bias = bool(getattr(hf, "attention_bias", True))
    return DecoderConfig(
        family="gpt_neox", model_type=family,
        vocab_size=hf.vocab_size, hidden_size=hf.hidden_size, num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads, num_kv_heads=hf.num_attention_heads,
        head_dim=head_dim, intermediate_size=hf.intermediate_size, norm_eps=hf.layer_norm_eps,
        activation=hf.hidden_act, tie_word_embeddings=bool(hf.tie_word_embeddings),
        max_positions=hf.max_position_embeddings,
        qkv_bias=bias, out_bias=bias, mlp_bias=True,   # the MLP always has biases
        # partial rotary: transformers 5 keeps rotary_pct as rope_parameters["partial_rotary_factor"]
        rope=rope_from_hf(hf, head_dim, family),
        parallel_residual=bool(getattr(hf, "use_parallel_residual", True)),
    )


class GPTNeoXBlock(Block):
    @nn.compact
    def __call__(self, hidden, positions, texts, rope, layer):
        cfg, dt = self.cfg, self.dtype
        mask = attention_mask(positions, texts, self.causal, layer["window"])
        attn_out = Attention(cfg, dt, causal=self.causal, impl=self.attention_impl, name="attn")(
            LayerNorm(cfg.norm_eps, dt, name="attn_norm")(hidden), mask, self.layer_rope(rope, layer))
        mlp_norm = LayerNorm(cfg.norm_eps, dt, name="mlp_norm")
        mlp = MLP(cfg, dt, name="mlp")
        if cfg.parallel_residual:   # x + attn(ln1(x)) + mlp(ln2(x)), summed in transformers' order
            hidden = mlp(mlp_norm(hidden)) + attn_out + hidden
        else:
            attn_out = attn_out + hidden
            hidden = mlp(mlp_norm(attn_out)) + attn_out
        return self.out(hidden)


class GPTNeoX(Decoder):
    Block = GPTNeoXBlock

    def setup_family(self):
        self.final_norm = LayerNorm(self.cfg.norm_eps, self.dtype, name="final_norm")

    def finish(self, hidden):
        return self.final_norm(hidden)
