"""Per-family maps from Flax parameter paths to Hugging Face tensor names, plus value hooks.

A map is a list of ``Entry(path, hf_name, hook)``. Paths under ``layers/`` are stacked over the
layer axis: ``hf_name`` holds ``{i}`` and the loader reads one tensor per layer. Hooks turn a
transformers tensor into the Flax value (``linear``: [out, in] → [in, out]); split hooks pick a
piece of a fused tensor. Keeping names apart from values lets GGUF reuse the HF maps after
renaming its tensors.

Each hook also carries what export (:mod:`keytok_jax.loading.save`) needs to undo it: a plain hook
has ``inverse`` (Flax value → transformers tensor); a split hook has ``part``, ``parts`` and
``join`` (the Flax values of all ``parts`` pieces, in order → the fused transformers tensor).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..models.config import DecoderConfig


@dataclass(frozen=True)
class Entry:
    path: str                     # "layers/attn/q/kernel"
    hf_name: str                  # "model.layers.{i}.self_attn.q_proj.weight"; "a|b": either spelling
    hook: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def stacked(self) -> bool:
        return self.path.startswith("layers/")


def linear(w: np.ndarray) -> np.ndarray:
    """torch.nn.Linear weight [out, in] → Flax kernel [in, out]."""
    return np.ascontiguousarray(w.T)


linear.inverse = linear  # Flax kernel [in, out] → torch [out, in]: a transpose undoes itself


def linear_entries(path: str, hf: str, bias: bool) -> list[Entry]:
    out = [Entry(f"{path}/kernel", f"{hf}.weight", linear)]
    if bias:
        out.append(Entry(f"{path}/bias", f"{hf}.bias"))
    return out


def _llama_attention_mlp(cfg: DecoderConfig, L: str) -> list[Entry]:
    """q/k/v/o projections, gated MLP and untied head, as Llama and Gemma3 name them."""
    m = []
    for p in "qkv":
        m += linear_entries(f"layers/attn/{p}", f"{L}.self_attn.{p}_proj", cfg.qkv_bias)
    m += linear_entries("layers/attn/o", f"{L}.self_attn.o_proj", cfg.out_bias)
    for p in ("gate", "up", "down"):
        m += linear_entries(f"layers/mlp/{p}", f"{L}.mlp.{p}_proj", cfg.mlp_bias)
    if not cfg.tie_word_embeddings:
        m.append(Entry("lm_head/embedding", "lm_head.weight"))
    return m


def llama(cfg: DecoderConfig) -> list[Entry]:
    L = "model.layers.{i}"
    m = [Entry("embed/embedding", "model.embed_tokens.weight"),
         Entry("layers/attn_norm/scale", f"{L}.input_layernorm.weight"),
         Entry("layers/mlp_norm/scale", f"{L}.post_attention_layernorm.weight"),
         Entry("final_norm/scale", "model.norm.weight")]
    return m + _llama_attention_mlp(cfg, L)


def split_last_axis(part: int, parts: int) -> Callable[[np.ndarray], np.ndarray]:
    """Hook picking piece ``part`` of ``parts`` equal slices of a fused tensor's last axis
    (GPT-2's Conv1D c_attn: weight [in, 3*out] and bias [3*out] hold q | k | v)."""
    def hook(w: np.ndarray) -> np.ndarray:
        size = w.shape[-1] // parts
        return np.ascontiguousarray(w[..., part * size:(part + 1) * size])

    def join(pieces) -> np.ndarray:
        """The fused tensor from the ``parts`` pieces (in order), the inverse of all hooks together."""
        if len(pieces) != parts:
            raise ValueError(f"join needs {parts} pieces, got {len(pieces)}")
        return np.ascontiguousarray(np.concatenate(pieces, axis=-1))

    hook.part, hook.parts, hook.join = part, parts, join
    return hook


def _gpt_embeddings_and_norms() -> list[Entry]:
    """Token and position embeddings and the three LayerNorms, as GPT-2 and GPT-Neo name them."""
    T, L = "transformer", "transformer.h.{i}"
    m = [Entry("embed/embedding", f"{T}.wte.weight"),
         Entry("pos_embed/embedding", f"{T}.wpe.weight")]
    for flax_norm, hf_norm in (("layers/attn_norm", f"{L}.ln_1"), ("layers/mlp_norm", f"{L}.ln_2"),
                               ("final_norm", f"{T}.ln_f")):
        m += [Entry(f"{flax_norm}/scale", f"{hf_norm}.weight"), Entry(f"{flax_norm}/bias", f"{hf_norm}.bias")]
    return m


def gpt2(cfg: DecoderConfig) -> list[Entry]:
    """GPT2LMHeadModel layout (``transformer.`` prefix). Conv1D weights are already [in, out]."""
    L = "transformer.h.{i}"
    m = _gpt_embeddings_and_norms()
    for n, p in enumerate("qkv"):
        m += [Entry(f"layers/attn/{p}/kernel", f"{L}.attn.c_attn.weight", split_last_axis(n, 3)),
              Entry(f"layers/attn/{p}/bias", f"{L}.attn.c_attn.bias", split_last_axis(n, 3))]
    for flax_name, hf_name in (("attn/o", "attn.c_proj"), ("mlp/fc_in", "mlp.c_fc"), ("mlp/fc_out", "mlp.c_proj")):
        m += [Entry(f"layers/{flax_name}/kernel", f"{L}.{hf_name}.weight"),
              Entry(f"layers/{flax_name}/bias", f"{L}.{hf_name}.bias")]
    if not cfg.tie_word_embeddings:
        m.append(Entry("lm_head/embedding", "lm_head.weight"))
    return m


def gpt_neo(cfg: DecoderConfig) -> list[Entry]:
    """GPTNeoForCausalLM layout; q/k/v/out_proj and the MLP are torch Linear ([out, in])."""
    L = "transformer.h.{i}"
    m = _gpt_embeddings_and_norms()
    for p in "qkv":
        m += linear_entries(f"layers/attn/{p}", f"{L}.attn.attention.{p}_proj", cfg.qkv_bias)
    m += linear_entries("layers/attn/o", f"{L}.attn.attention.out_proj", cfg.out_bias)
    m += linear_entries("layers/mlp/fc_in", f"{L}.mlp.c_fc", cfg.mlp_bias)
    m += linear_entries("layers/mlp/fc_out", f"{L}.mlp.c_proj", cfg.mlp_bias)
    if not cfg.tie_word_embeddings:
        m.append(Entry("lm_head/embedding", "lm_head.weight"))
    return m


def gemma3(cfg: DecoderConfig) -> list[Entry]:
    L = "model.layers.{i}"
    m = [Entry("embed/embedding", "model.embed_tokens.weight"),
         Entry("layers/attn_norm/scale", f"{L}.input_layernorm.weight"),
         Entry("layers/post_attn_norm/scale", f"{L}.post_attention_layernorm.weight"),
         Entry("layers/mlp_norm/scale", f"{L}.pre_feedforward_layernorm.weight"),
         Entry("layers/post_mlp_norm/scale", f"{L}.post_feedforward_layernorm.weight"),
         Entry("layers/attn/q_norm/scale", f"{L}.self_attn.q_norm.weight"),
         Entry("layers/attn/k_norm/scale", f"{L}.self_attn.k_norm.weight"),
         Entry("final_norm/scale", "model.norm.weight")]
    return m + _llama_attention_mlp(cfg, L)


def qwen3(cfg: DecoderConfig) -> list[Entry]:
    """Qwen3ForCausalLM layout: Llama's names plus the per-head ``q_norm`` / ``k_norm``."""
    L = "model.layers.{i}"
    return llama(cfg) + [Entry("layers/attn/q_norm/scale", f"{L}.self_attn.q_norm.weight"),
                         Entry("layers/attn/k_norm/scale", f"{L}.self_attn.k_norm.weight")]


def opt(cfg: DecoderConfig) -> list[Entry]:
    """OPTForCausalLM layout (``model.decoder.`` prefix); every Linear is torch [out, in]."""
    D, L = "model.decoder", "model.decoder.layers.{i}"
    m = [Entry("embed/embedding", f"{D}.embed_tokens.weight"),
         Entry("pos_embed/embedding", f"{D}.embed_positions.weight")]
    if cfg.word_embed_proj_dim:
        m += linear_entries("project_in", f"{D}.project_in", False)
        m += linear_entries("project_out", f"{D}.project_out", False)
    if cfg.norm_affine:  # layer_norm_elementwise_affine=False: LayerNorms without parameters
        norms = [("layers/attn_norm", f"{L}.self_attn_layer_norm"), ("layers/mlp_norm", f"{L}.final_layer_norm")]
        if cfg.final_norm:
            norms.append(("final_norm", f"{D}.final_layer_norm"))
        for flax_norm, hf_norm in norms:
            m += [Entry(f"{flax_norm}/scale", f"{hf_norm}.weight"), Entry(f"{flax_norm}/bias", f"{hf_norm}.bias")]
    for p in "qkv":
        m += linear_entries(f"layers/attn/{p}", f"{L}.self_attn.{p}_proj", cfg.qkv_bias)
    m += linear_entries("layers/attn/o", f"{L}.self_attn.out_proj", cfg.out_bias)
    m += linear_entries("layers/mlp/fc_in", f"{L}.fc1", cfg.mlp_bias)
    m += linear_entries("layers/mlp/fc_out", f"{L}.fc2", cfg.mlp_bias)
    if not cfg.tie_word_embeddings:
        m.append(Entry("lm_head/embedding", "lm_head.weight"))
    return m


def split_heads_rows(part: int, parts: int, heads: int, then=None) -> Callable[[np.ndarray], np.ndarray]:
    """Hook picking piece ``part`` of a fused tensor whose output rows are laid out
    [heads, parts, head_dim] (GPT-NeoX ``query_key_value``: per head q | k | v), as a
    [heads * head_dim, ...] tensor; ``then`` post-processes it (``linear`` for weights)."""
    def hook(w: np.ndarray) -> np.ndarray:
        rest = w.shape[1:]
        piece = w.reshape(heads, parts, -1, *rest)[:, part].reshape(-1, *rest)
        return then(piece) if then else np.ascontiguousarray(piece)

    def join(pieces) -> np.ndarray:
        """The fused tensor from the ``parts`` pieces (in order): undo ``then`` on each, then
        interleave them per head back into rows [heads, parts, head_dim]."""
        if len(pieces) != parts:
            raise ValueError(f"join needs {parts} pieces, got {len(pieces)}")
        if then is not None:
            pieces = [then.inverse(p) for p in pieces]
        rest = pieces[0].shape[1:]
        per_head = [p.reshape(heads, 1, -1, *rest) for p in pieces]
        return np.ascontiguousarray(np.concatenate(per_head, axis=1).reshape(-1, *rest))

    hook.part, hook.parts, hook.join = part, parts, join
    return hook


def gpt_neox(cfg: DecoderConfig) -> list[Entry]:
    """GPTNeoXForCausalLM layout (``gpt_neox.`` prefix, separate ``embed_out`` head)."""
    G, L = "gpt_neox", "gpt_neox.layers.{i}"
    m = [Entry("embed/embedding", f"{G}.embed_in.weight")]
    for flax_norm, hf_norm in (("layers/attn_norm", f"{L}.input_layernorm"),
                               ("layers/mlp_norm", f"{L}.post_attention_layernorm"),
                               ("final_norm", f"{G}.final_layer_norm")):
        m += [Entry(f"{flax_norm}/scale", f"{hf_norm}.weight"), Entry(f"{flax_norm}/bias", f"{hf_norm}.bias")]
    qkv = f"{L}.attention.query_key_value"
    for n, p in enumerate("qkv"):
        m.append(Entry(f"layers/attn/{p}/kernel", f"{qkv}.weight", split_heads_rows(n, 3, cfg.num_heads, linear)))
        if cfg.qkv_bias:
            m.append(Entry(f"layers/attn/{p}/bias", f"{qkv}.bias", split_heads_rows(n, 3, cfg.num_heads)))
    m += linear_entries("layers/attn/o", f"{L}.attention.dense", cfg.out_bias)
    m += linear_entries("layers/mlp/fc_in", f"{L}.mlp.dense_h_to_4h", cfg.mlp_bias)
    m += linear_entries("layers/mlp/fc_out", f"{L}.mlp.dense_4h_to_h", cfg.mlp_bias)
    if not cfg.tie_word_embeddings:
        m.append(Entry("lm_head/embedding", "embed_out.weight|lm_head.weight"))  # torch.save names it lm_head
    return m


NAME_MAPS: dict[str, Callable[[DecoderConfig], list[Entry]]] = {
    "llama": llama,
    "opt": opt,
    "gpt_neox": gpt_neox,
    "gemma3": gemma3,
    "qwen3": qwen3,
    "gpt2": gpt2,
    "gpt_neo": gpt_neo,
}
