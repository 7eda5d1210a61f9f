"""Qwen3 family (``qwen3``: Qwen3ForCausalLM / Qwen3Model, the backbone of Qwen3-Embedding).

The Llama block plus a per-head RMSNorm of q and k (plain ``w * x``, over ``head_dim``) before
RoPE; ``head_dim`` independent of the hidden size; ``attention_bias`` on q/k/v *and* o; no MLP
biases (transformers' Qwen3MLP ignores ``mlp_bias``); tied or untied LM head.

Notes on transformers 5.x behaviour this port reproduces:

* Sliding windows come from ``layer_types``. When a config has none, ``Qwen3Config`` derives them:
  layer ``i`` slides when ``use_sliding_window`` and ``i >= max_window_layers``; and it sets
  ``sliding_window`` to None unless ``use_sliding_window``. Sliding layers without a window make
  transformers fail at the first forward pass; the port refuses such a config.
* A causal sliding layer sees keys with ``0 <= q - k < W``. transformers' bidirectional masks
  (a config with ``is_causal: false``) let a sliding layer see ``|q - k| <= W``; keytok's
  ``attention="bidirectional"`` uses the same window.
* The default rotary embedding rotates whole heads whatever ``partial_rotary_factor`` says, and
  the scaled types build tables that do not fit the heads; the port refuses partial rotary.
"""
from __future__ import annotations

from .config import DecoderConfig, UnsupportedConfigError
from .llama import Llama, LlamaBlock, llama_shaped_config

MODEL_TYPES = ("qwen3",)
_LAYER_TYPES = ("full_attention", "sliding_attention")
_ACTIVATIONS = ("silu", "swish", "gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu")


def _layer_windows(hf) -> tuple[int, ...]:
    family, n = hf.model_type, hf.num_hidden_layers
    layer_types = getattr(hf, "layer_types", None)
    if layer_types is None:    # configs built outside transformers' __post_init__
        sliding = getattr(hf, "sliding_window", None) if getattr(hf, "use_sliding_window", False) else None
        start = getattr(hf, "max_window_layers", n)
        layer_types = ["sliding_attention" if sliding is not None and i >= start else "full_attention"
                       for i in range(n)]
    layer_types = tuple(layer_types)
    if len(layer_types) != n:
        raise UnsupportedConfigError(f"{family}: layer_types lists {len(layer_types)} layers, "
                                     f"num_hidden_layers={n}")
    unknown = set(layer_types) - set(_LAYER_TYPES)
    if unknown:
        raise UnsupportedConfigError(f"{family}: layer_types {sorted(unknown)} not implemented "
                                     f"(supported: {', '.join(_LAYER_TYPES)})")
    if "sliding_attention" not in layer_types:
        return (0,) * n
    window = getattr(hf, "sliding_window", None)
    if not window or int(window) <= 0:
        raise UnsupportedConfigError(
            f"{family}: layer_types has sliding_attention layers but sliding_window={window!r} "
            f"(transformers sets it to None unless use_sliding_window=true)")
    return tuple(int(window) if kind == "sliding_attention" else 0 for kind in layer_types)


def config_from_hf(hf) -> DecoderConfig:
    bias = bool(getattr(hf, "attention_bias", False))
    # transformers' Qwen3 ignores mlp_bias
    return llama_shaped_config(hf, "qwen3", _ACTIVATIONS, _layer_windows, qkv_bias=bias,
                               out_bias=bias, mlp_bias=False)


class Qwen3Block(LlamaBlock):
    qk_norm = True


class Qwen3(Llama):
    Block = Qwen3Block
