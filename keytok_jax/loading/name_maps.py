"""Per-family maps from Flax parameter paths to Hugging Face tensor names, plus value hooks.

A map is a list of ``Entry(path, hf_name, hook)``. Paths under ``layers/`` are stacked over the
layer axis: ``hf_name`` holds ``{i}`` and the loader reads one tensor per layer. Hooks turn a
transformers tensor into the Flax value (``linear``: [out, in] → [in, out]); split hooks pick a
piece of a fused tensor. Keeping names apart from values lets GGUF reuse the HF maps after
renaming its tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..models.config import DecoderConfig


@dataclass(frozen=True)
class Entry:
    path: str                     # "layers/attn/q/kernel"
    hf_name: str                  # "model.layers.{i}.self_attn.q_proj.weight"
    hook: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def stacked(self) -> bool:
        return self.path.startswith("layers/")


def linear(w: np.ndarray) -> np.ndarray:
    """torch.nn.Linear weight [out, in] → Flax kernel [in, out]."""
    return np.ascontiguousarray(w.T)


def linear_entries(path: str, hf: str, bias: bool) -> list[Entry]:
    out = [Entry(f"{path}/kernel", f"{hf}.weight", linear)]
    if bias:
        out.append(Entry(f"{path}/bias", f"{hf}.bias"))
    return out


def llama(cfg: DecoderConfig) -> list[Entry]:
    L = "model.layers.{i}"
    m = [Entry("embed/embedding", "model.embed_tokens.weight"),
         Entry("layers/attn_norm/scale", f"{L}.input_layernorm.weight"),
         Entry("layers/mlp_norm/scale", f"{L}.post_attention_layernorm.weight"),
         Entry("final_norm/scale", "model.norm.weight")]
    for p in "qkv":
        m += linear_entries(f"layers/attn/{p}", f"{L}.self_attn.{p}_proj", cfg.qkv_bias)
    m += linear_entries("layers/attn/o", f"{L}.self_attn.o_proj", cfg.out_bias)
    for p in ("gate", "up", "down"):
        m += linear_entries(f"layers/mlp/{p}", f"{L}.mlp.{p}_proj", cfg.mlp_bias)
    if not cfg.tie_word_embeddings:
        m.append(Entry("lm_head/embedding", "lm_head.weight"))
    return m


NAME_MAPS: dict[str, Callable[[DecoderConfig], list[Entry]]] = {
    "llama": llama,
}
