"""The loaded model users hold: config + parameters + tokenizer, with jitted entry points."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .models import DecoderConfig, build_module
from .models.layers import check_attention_impl

ATTENTION_MODES = ("causal", "bidirectional")


@partial(jax.jit, static_argnames=("module",))
def _apply_hidden(module, params, input_ids, attention_mask):
    return module.apply({"params": params}, input_ids, attention_mask)


@partial(jax.jit, static_argnames=("module",))
def _apply_logits(module, params, hidden):
    return module.apply({"params": params}, hidden, method=module.logits)


@dataclass
class KeytokModel:
    """A decoder LM ported to Flax.

    ``hidden_states(input_ids, attention_mask)`` → final hidden states ``[batch, seq, dim]`` (after
    the final norm, as transformers' ``last_hidden_state``); ``logits(x)`` projects any
    ``[..., dim]`` array through the LM head; ``lm_head`` is the ``[vocab, dim]`` matrix.
    """
    config: DecoderConfig
    params: Any
    tokenizer: Any = None
    dtype: str = "float32"
    source: str = ""
    load_info: dict = field(default_factory=dict)
    mesh: Any = None   # the jax.sharding.Mesh the parameters are laid out on (None: one device)
    hf_config: dict = field(default_factory=dict)  # transformers config dict (what save_hf_folder writes)

    def module(self, attention: str = "causal", all_layers: bool = False, impl: str = "xla"):
        """The Flax module; ``impl`` picks the attention implementation, "xla" or "fused" (see
        ``keytok_jax.models.layers.attend``)."""
        if attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
        return build_module(self.config, jnp.dtype(self.dtype), causal=attention == "causal",
                            all_layers=all_layers, attention_impl=check_attention_impl(impl))

    def hidden_states(self, input_ids, attention_mask=None, attention: str = "causal",
                      all_layers: bool = False, impl: str = "xla"):
        """Final hidden states [batch, seq, dim]. With ``all_layers=True`` returns
        ``(final, layers)`` where ``layers [num_layers + 1, batch, seq, hidden]`` holds the embedding
        output and each block's output (transformers' ``hidden_states[:-1]`` plus the last block's
        output before the final norm). ``impl``: attention implementation, "xla" or "fused"."""
        input_ids = jnp.asarray(input_ids, jnp.int32)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        attention_mask = jnp.asarray(attention_mask, jnp.int32)
        if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(f"input_ids and attention_mask must both be [batch, seq]; got "
                             f"{input_ids.shape} and {attention_mask.shape}")
        return _apply_hidden(self.module(attention, all_layers, impl), self.params, input_ids,
                             attention_mask)

    @property
    def lm_head(self):
        """The LM-head matrix [vocab, dim] (the token embedding when tied)."""
        return self.params["embed" if self.config.tie_word_embeddings else "lm_head"]["embedding"]

    def logits(self, x):
        """LM-head projection of any [..., dim] array to [..., vocab] float32 logits."""
        return _apply_logits(self.module(), self.params, jnp.asarray(x))

    def tokenize(self, texts: Sequence[str], max_length: int | None = None, padding_side: str = "right"):
        """Token ids and mask as numpy [batch, seq] for ``texts`` with this model's tokenizer."""
        if self.tokenizer is None:
            raise ValueError(f"{self.source} has no tokenizer files; pass token ids directly")
        self.tokenizer.padding_side = padding_side
        enc = self.tokenizer(list(texts), padding=True, truncation=max_length is not None,
                             max_length=max_length, return_tensors="np")
        return np.asarray(enc["input_ids"], np.int32), np.asarray(enc["attention_mask"], np.int32)
