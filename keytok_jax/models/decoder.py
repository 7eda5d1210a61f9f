"""The scaffold every family shares: embed → scan over stacked blocks → final norm; LM head.

A family subclasses :class:`Decoder`, sets ``Block`` (one transformer block) and implements
``setup_family`` / ``embed_tokens`` / ``finish``. Blocks are scanned (``nn.scan``), so parameters
have a leading ``layers`` axis and a model compiles once whatever its depth. Per-layer differences
(sliding windows, local rotary tables) enter the scan as per-layer inputs, not as Python branches.
"""
from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from .config import DecoderConfig
from .layers import Dtype, check_attention_impl, embed, positions_from_mask, rope_table, text_mask


class Block(nn.Module):
    """One transformer block: ``(hidden, positions, texts, rope, layer) → (hidden, hidden|None)``
    (``texts``: :func:`~keytok_jax.models.layers.text_mask`'s)."""
    cfg: DecoderConfig
    dtype: Dtype = jnp.float32
    causal: bool = True
    all_layers: bool = False
    attention_impl: str = "xla"   # read by the block's Attention (layers.attend: "xla" | "fused")

    def layer_rope(self, rope, layer):
        """Rotary table of this layer: Gemma3's sliding layers use their own."""
        if rope is None:
            return None
        if "local" in rope:
            is_local = layer["window"] > 0
            return tuple(jnp.where(is_local, lc, gc) for lc, gc in zip(rope["local"], rope["global"]))
        return rope["global"]

    def out(self, hidden):
        return hidden, (hidden if self.all_layers else None)


class Decoder(nn.Module):
    cfg: DecoderConfig
    dtype: Dtype = jnp.float32
    causal: bool = True
    all_layers: bool = False
    attention_impl: str = "xla"   # layers.attend's implementation, for every block
    Block: ClassVar[type] = Block

    def setup(self):
        cfg = self.cfg
        check_attention_impl(self.attention_impl)
        self.embed = embed(cfg.vocab_size, cfg.word_embed_proj_dim or cfg.hidden_size, self.dtype, "embed")
        if not cfg.tie_word_embeddings:
            self.lm_head = embed(cfg.vocab_size, cfg.output_dim, self.dtype, "lm_head")
        scanned = nn.scan(
            type(self).Block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0),
            length=cfg.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        self.layers = scanned(cfg, self.dtype, self.causal, self.all_layers, self.attention_impl,
                              name="layers")
        self.setup_family()

    # --- family hooks
    def setup_family(self):
        pass

    def embed_tokens(self, input_ids, positions):
        return self.embed(input_ids)

    def finish(self, hidden):
        return hidden

    # --- shared flow
    def __call__(self, input_ids, attention_mask):
        """Final hidden states [batch, seq, output_dim]; with ``all_layers`` also the residual stream
        ``[num_layers + 1, batch, seq, hidden]``: the embedding output, then each block's output."""
        cfg = self.cfg
        segments = attention_mask.astype(jnp.int32)    # 0/1, or texts packed per row (1, 2, ...)
        positions = positions_from_mask(segments)
        hidden = self.embed_tokens(input_ids, positions)
        rope = None
        if cfg.rope is not None:
            rope = {"global": rope_table(cfg.rope, positions)}
            if cfg.local_rope is not None:
                rope["local"] = rope_table(cfg.local_rope, positions)
        layer = {"window": jnp.asarray(np.asarray(cfg.windows, np.int32))}
        out, per_layer = self.layers(hidden, positions, text_mask(segments), rope, layer)
        final = self.finish(out)
        if self.all_layers:
            return final, jnp.concatenate([hidden[None], per_layer], axis=0)
        return final

    def lm_head_matrix(self):
        """The LM head as [vocab, output_dim] (the token embedding when tied)."""
        return (self.embed if self.cfg.tie_word_embeddings else self.lm_head).embedding

    def logits(self, hidden):
        """Project [..., output_dim] to [..., vocab] logits in float32."""
        w = self.lm_head_matrix()
        out = jnp.einsum("...d,vd->...v", hidden.astype(w.dtype), w, preferred_element_type=jnp.float32)
        if self.cfg.final_logit_softcap:
            cap = self.cfg.final_logit_softcap
            out = jnp.tanh(out / cap) * cap
        return out

    def init_all(self, input_ids, attention_mask):
        """Touches every parameter (used only under ``jax.eval_shape`` for abstract shapes)."""
        hidden = self(input_ids, attention_mask)
        if self.all_layers:
            hidden = hidden[0]
        return self.logits(hidden)
