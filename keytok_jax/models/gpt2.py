"""GPT-2 family: learned absolute positions, pre-LayerNorm blocks, fused Conv1D q/k/v (split at
load time), biased attention and MLP (gelu_new), final ``ln_f``, LM head tied to ``wte``."""
from __future__ import annotations

import flax.linen as nn

from .config import DecoderConfig, refuse_unless
from .decoder import Block, Decoder
from .layers import ACTIVATIONS, MLP, Attention, LayerNorm, attention_mask, embed

MODEL_TYPES = ("gpt2",)


def _is_false(value) -> bool:
    """False (not implemented when set)"""
    return not value


def config_from_hf(hf) -> DecoderConfig:
    family = hf.model_type
    refuse_unless(hf, {
        "activation_function": tuple(ACTIVATIONS),
        # Per-layer 1/(layer_idx + 1) score scaling (Mistral-style GPT-2 training runs).
        "scale_attn_by_inverse_layer_idx": _is_false,
        # Cross-attention blocks (encoder-decoder use); the LM path would not match checkpoints.
        "add_cross_attention": _is_false,
    }, family)
    # reorder_and_upcast_attn only changes the precision of the score matmul (fp32); keytok_jax
    # always computes scores in float32, so it is accepted.
    hidden, heads = hf.n_embd, hf.n_head
    head_dim = hidden // heads
    return DecoderConfig(
        family="gpt2", model_type=family,
        vocab_size=hf.vocab_size, hidden_size=hidden, num_layers=hf.n_layer,
        num_heads=heads, num_kv_heads=heads, head_dim=head_dim,
        intermediate_size=hf.n_inner if hf.n_inner is not None else 4 * hidden,
        norm_eps=hf.layer_norm_epsilon, activation=hf.activation_function,
        tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", True)),
        max_positions=hf.n_positions,
        qkv_bias=True, out_bias=True, mlp_bias=True,
        attn_scale=None if hf.scale_attn_weights else 1.0,
    )


class GPT2Block(Block):
    @nn.compact
    def __call__(self, hidden, positions, texts, rope, layer):
        cfg, dt = self.cfg, self.dtype
        mask = attention_mask(positions, texts, self.causal, layer["window"])
        h = LayerNorm(cfg.norm_eps, dt, name="attn_norm")(hidden)
        hidden = hidden + Attention(cfg, dt, causal=self.causal, impl=self.attention_impl, name="attn")(h, mask)
        h = LayerNorm(cfg.norm_eps, dt, name="mlp_norm")(hidden)
        hidden = hidden + MLP(cfg, dt, name="mlp")(h)
        return self.out(hidden)


class GPT2(Decoder):
    Block = GPT2Block

    def setup_family(self):
        cfg = self.cfg
        self.pos_embed = embed(cfg.max_positions, cfg.hidden_size, self.dtype, "pos_embed",
                               names=("positions", "embed"))
        self.final_norm = LayerNorm(cfg.norm_eps, self.dtype, name="final_norm")

    def embed_tokens(self, input_ids, positions):
        return self.embed(input_ids) + self.pos_embed(positions)

    def finish(self, hidden):
        return self.final_norm(hidden)
