"""GPT-Neo family: learned absolute positions, pre-LayerNorm blocks, q/k/v without bias, out_proj
and MLP with bias, NO 1/sqrt(head_dim) score scaling, layers alternating global and local
(sliding-window) attention as listed by ``attention_types``; LM head tied to ``wte``."""
from __future__ import annotations

from .config import DecoderConfig, UnsupportedConfigError, refuse_unless
from .gpt2 import GPT2
from .layers import ACTIVATIONS

MODEL_TYPES = ("gpt_neo",)


def _layer_windows(hf) -> tuple[int, ...]:
    """``attention_types`` ([[["global", "local"], 12]]) expanded per layer; local → window_size."""
    kinds = getattr(hf, "attention_layers", None)
    if kinds is None:
        kinds = [k for kinds_, repeat in hf.attention_types for _ in range(repeat) for k in kinds_]
    kinds = list(kinds)
    unknown = set(kinds) - {"global", "local"}
    if unknown:
        raise UnsupportedConfigError(f"gpt_neo: attention types {sorted(unknown)} are not implemented "
                                     f"by keytok_jax (supported: global, local)")
    if len(kinds) != hf.num_layers:
        raise UnsupportedConfigError(f"gpt_neo: attention_types lists {len(kinds)} layers, "
                                     f"num_layers={hf.num_layers}")
    if "local" in kinds and int(hf.window_size) < 1:
        raise UnsupportedConfigError(f"gpt_neo: window_size={hf.window_size} must be >= 1 for local layers")
    return tuple(int(hf.window_size) if k == "local" else 0 for k in kinds)


def config_from_hf(hf) -> DecoderConfig:
    family = hf.model_type
    refuse_unless(hf, {"activation_function": tuple(ACTIVATIONS)}, family)
    hidden, heads = hf.hidden_size, hf.num_heads
    return DecoderConfig(
        family="gpt_neo", model_type=family,
        vocab_size=hf.vocab_size, hidden_size=hidden, num_layers=hf.num_layers,
        num_heads=heads, num_kv_heads=heads, head_dim=hidden // heads,
        intermediate_size=hf.intermediate_size if hf.intermediate_size is not None else 4 * hidden,
        norm_eps=hf.layer_norm_epsilon, activation=hf.activation_function,
        tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", True)),
        max_positions=hf.max_position_embeddings,
        qkv_bias=False, out_bias=True, mlp_bias=True,
        attn_scale=1.0,  # GPT-Neo never scales attention scores
        layer_windows=_layer_windows(hf),
    )


# GPT-Neo's block and embeddings are GPT-2's (pre-LayerNorm, learned positions, fc MLP); what differs
# (unscaled scores, local windows, bias-free q/k/v) lives in the config above.
GPTNeo = GPT2
