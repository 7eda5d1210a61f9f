"""OPT family (facebook/opt-*): learned positions offset by 2, LayerNorm before (most sizes) or after
(opt-350m) each sublayer, ReLU MLP, optional project_in / project_out when the token embedding is
narrower than the residual stream (opt-350m), tied LM head of width ``word_embed_proj_dim``."""
from __future__ import annotations

import flax.linen as nn

from .config import DecoderConfig, UnsupportedConfigError, refuse_unless
from .decoder import Block, Decoder
from .layers import ACTIVATIONS, MLP, Attention, LayerNorm, attention_mask, dense, embed

MODEL_TYPES = ("opt",)

LAYER_NORM_EPS = 1e-5   # transformers builds nn.LayerNorm with its default eps; no config field


def config_from_hf(hf) -> DecoderConfig:
    family = hf.model_type
    refuse_unless(hf, {"activation_function": tuple(ACTIVATIONS)}, family)
    if hf.hidden_size % hf.num_attention_heads:
        raise UnsupportedConfigError(
            f"{family}: hidden_size={hf.hidden_size} is not a multiple of num_attention_heads={hf.num_attention_heads}")
    pre_norm = bool(hf.do_layer_norm_before)
    bias = bool(getattr(hf, "enable_bias", True))
    proj = getattr(hf, "word_embed_proj_dim", None) or hf.hidden_size
    return DecoderConfig(
        family="opt", model_type=family,
        vocab_size=hf.vocab_size, hidden_size=hf.hidden_size, num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads, num_kv_heads=hf.num_attention_heads,
        head_dim=hf.hidden_size // hf.num_attention_heads, intermediate_size=hf.ffn_dim,
        norm_eps=LAYER_NORM_EPS, activation=hf.activation_function,
        tie_word_embeddings=bool(hf.tie_word_embeddings), max_positions=hf.max_position_embeddings,
        # transformers scales q (bias included) by head_dim**-0.5 before q·k: the default attn_scale
        qkv_bias=bias, out_bias=bias, mlp_bias=bias,
        pos_offset=2,
        pre_norm=pre_norm,
        # the final LayerNorm exists only in pre-LN models, unless removed (pre-v4.20.1 fine-tunes)
        final_norm=pre_norm and not bool(getattr(hf, "_remove_final_layer_norm", False)),
        norm_affine=bool(getattr(hf, "layer_norm_elementwise_affine", True)),
        word_embed_proj_dim=proj if proj != hf.hidden_size else None,
    )


class OPTBlock(Block):
    @nn.compact
    def __call__(self, hidden, positions, texts, rope, layer):
        cfg, dt = self.cfg, self.dtype
        mask = attention_mask(positions, texts, self.causal, layer["window"])
        attn_norm = LayerNorm(cfg.norm_eps, dt, affine=cfg.norm_affine, name="attn_norm")
        mlp_norm = LayerNorm(cfg.norm_eps, dt, affine=cfg.norm_affine, name="mlp_norm")
        attn = Attention(cfg, dt, causal=self.causal, impl=self.attention_impl, name="attn")
        mlp = MLP(cfg, dt, name="mlp")
        if cfg.pre_norm:
            hidden = hidden + attn(attn_norm(hidden), mask)
            hidden = hidden + mlp(mlp_norm(hidden))
        else:  # opt-350m: LayerNorm after each residual add
            hidden = attn_norm(hidden + attn(hidden, mask))
            hidden = mlp_norm(hidden + mlp(hidden))
        return self.out(hidden)


class OPT(Decoder):
    Block = OPTBlock

    def setup_family(self):
        cfg = self.cfg
        self.pos_embed = embed(cfg.max_positions + cfg.pos_offset, cfg.hidden_size, self.dtype, "pos_embed",
                               names=("positions", "embed"))
        if cfg.word_embed_proj_dim:
            self.project_in = dense(cfg.hidden_size, False, ("embed_proj", "embed"), self.dtype, "project_in")
            self.project_out = dense(cfg.word_embed_proj_dim, False, ("embed", "embed_proj"), self.dtype,
                                     "project_out")
        if cfg.final_norm:
            self.final_norm = LayerNorm(cfg.norm_eps, self.dtype, affine=cfg.norm_affine, name="final_norm")

    def embed_tokens(self, input_ids, positions):
        hidden = self.embed(input_ids)
        if self.cfg.word_embed_proj_dim:
            hidden = self.project_in(hidden)
        return hidden + self.pos_embed(positions + self.cfg.pos_offset)

    def finish(self, hidden):
        if self.cfg.final_norm:
            hidden = self.final_norm(hidden)
        if self.cfg.word_embed_proj_dim:
            hidden = self.project_out(hidden)
        return hidden
