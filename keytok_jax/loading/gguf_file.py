"""GGUF checkpoints (llama.cpp): metadata → HF config, tensors → HF names, dequantized with the
``gguf`` package (every type it dequantizes: F32/F16/BF16, Q4_0 … Q8_0, K-quants, IQ types).

One :class:`Arch` entry per llama.cpp architecture says how ``convert_hf_to_gguf.py`` wrote it:
the GGUF → HF tensor names, the value conventions to undo (llama-style q/k row permutation, GPT-2's
transposed Conv1D weights, GPT-NeoX's regrouped fused qkv, Gemma's ``norm + 1``) and the metadata
keys (after ``"<arch>."``) → HF config fields. The HF name maps of :mod:`.name_maps` then apply
unchanged. Tied output: llama.cpp writes no ``output.weight`` when the head is the embedding."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..models.config import UnsupportedConfigError
from .sources import TensorSource, WeightError

_LLAMA_KEYS = {
    "block_count": "num_hidden_layers", "context_length": "max_position_embeddings",
    "embedding_length": "hidden_size", "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads", "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps", "attention.key_length": "head_dim",
    "rope.freq_base": "rope_theta", "vocab_size": "vocab_size",
}
_LLAMA_LAYER = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_LLAMA_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_QK_NORM = {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}


def _gemma3_config(cfg: dict, fields: Callable[[str], object], arch: str) -> dict:
    """llama.cpp's Gemma3: every 6th layer global (others sliding when a window is written),
    sliding layers' rope base 10000, query scale 1/sqrt(head_dim) (27B: 1/sqrt(hidden/heads))."""
    layers, head_dim = cfg["num_hidden_layers"], cfg.get("head_dim", 256)
    window = cfg.get("sliding_window")
    cfg["layer_types"] = ["full_attention" if window is None or (i + 1) % 6 == 0 else "sliding_attention"
                          for i in range(layers)]
    if window is None:
        cfg.pop("sliding_window", None)
    cfg["query_pre_attn_scalar"] = (cfg["hidden_size"] // cfg["num_attention_heads"] if layers == 62
                                    else head_dim)
    full = {"rope_type": "default", "rope_theta": float(cfg.pop("rope_theta", 1_000_000.0))}
    scaling = cfg.pop("_rope_scaling", None)
    if scaling is not None:
        full.update(scaling)
    cfg["rope_parameters"] = {"full_attention": full,
                              "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}}
    cfg["hidden_activation"] = "gelu_pytorch_tanh"
    if arch == "gemma-embedding":
        cfg["use_bidirectional_attention"] = True
    return cfg


def _gptneox_config(cfg: dict, fields, arch: str) -> dict:
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    rot = cfg.pop("_rotary_dims", None)
    cfg["rotary_pct"] = 1.0 if rot is None else rot / head_dim
    cfg["hidden_act"] = "gelu"  # llama.cpp's GPT-NeoX graph uses GELU; not in the metadata
    return cfg


def _gpt2_config(cfg: dict, fields, arch: str) -> dict:
    cfg["activation_function"] = "gelu_new"
    return cfg


def _neox_qkv(w: np.ndarray, cfg: dict) -> np.ndarray:
    """llama.cpp stores GPT-NeoX's query_key_value rows as [q all heads | k | v]; HF interleaves
    them per head ([heads, 3, head_dim])."""
    heads = cfg["num_attention_heads"]
    rest = w.shape[1:]
    return np.ascontiguousarray(w.reshape(3, heads, -1, *rest).swapaxes(0, 1).reshape(w.shape))


@dataclass(frozen=True)
class Arch:
    model_type: str                             # HF model_type the config gets
    config_keys: dict[str, str]                 # "<arch>.KEY" → HF config field
    layer: str                                  # HF prefix of block i, with {i}
    layer_names: dict[str, str]                 # blk.i.PART → HF name under ``layer``
    top_names: dict[str, str]                   # PART → HF name
    permute_qk: bool = False                    # LlamaModel.permute on attn_q / attn_k
    norm_shift: float = 0.0                     # Gemma: written as weight + 1 for "*norm.weight"
    transposed: tuple[str, ...] = ()            # GPT-2 Conv1D weights written transposed
    fixes: dict[str, Callable] = field(default_factory=dict)   # PART → hook(array, cfg) per tensor
    finish: Callable | None = None              # (cfg, fields, arch) → cfg

    def hf_name(self, gguf_name: str) -> str | None:
        m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
        if m:
            i, part, kind = m.groups()
            return f"{self.layer.format(i=i)}.{self.layer_names[part]}.{kind}" if part in self.layer_names else None
        m = re.fullmatch(r"(\w+)\.(weight|bias)", gguf_name)
        if m and m.group(1) in self.top_names:
            return f"{self.top_names[m.group(1)]}.{m.group(2)}"
        return None


_LLAMA_LIKE = dict(config_keys=_LLAMA_KEYS, layer="model.layers.{i}", top_names=_LLAMA_TOP)
_GEMMA3 = dict(
    config_keys={**_LLAMA_KEYS, "attention.sliding_window": "sliding_window",
                 "final_logit_softcapping": "final_logit_softcapping"},
    layer="model.layers.{i}", top_names=_LLAMA_TOP, norm_shift=1.0, finish=_gemma3_config,
    layer_names={**_LLAMA_LAYER, "ffn_norm": "pre_feedforward_layernorm",
                 "post_attention_norm": "post_attention_layernorm",
                 "post_ffw_norm": "post_feedforward_layernorm", **_QK_NORM})

# llama.cpp architecture name → conventions. Adding a family llama.cpp writes = one entry here.
ARCHS: dict[str, Arch] = {
    "llama": Arch("llama", layer_names=_LLAMA_LAYER, permute_qk=True, **_LLAMA_LIKE),
    "qwen2": Arch("qwen2", layer_names=_LLAMA_LAYER, **_LLAMA_LIKE),
    "qwen3": Arch("qwen3", layer_names={**_LLAMA_LAYER, **_QK_NORM}, **_LLAMA_LIKE),
    "gemma3": Arch("gemma3_text", **_GEMMA3),
    "gemma-embedding": Arch("gemma3_text", **_GEMMA3),   # EmbeddingGemma: bidirectional Gemma3
    "gpt2": Arch(
        "gpt2",
        config_keys={"block_count": "n_layer", "context_length": "n_positions", "embedding_length": "n_embd",
                     "feed_forward_length": "n_inner", "attention.head_count": "n_head",
                     "attention.layer_norm_epsilon": "layer_norm_epsilon", "vocab_size": "vocab_size"},
        layer="transformer.h.{i}",
        layer_names={"attn_norm": "ln_1", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj",
                     "ffn_norm": "ln_2", "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"},
        top_names={"token_embd": "transformer.wte", "position_embd": "transformer.wpe",
                   "output_norm": "transformer.ln_f", "output": "lm_head"},
        transposed=("attn_qkv", "attn_output", "ffn_up", "ffn_down"), finish=_gpt2_config),
    "gptneox": Arch(
        "gpt_neox",
        config_keys={"block_count": "num_hidden_layers", "context_length": "max_position_embeddings",
                     "embedding_length": "hidden_size", "feed_forward_length": "intermediate_size",
                     "attention.head_count": "num_attention_heads", "use_parallel_residual": "use_parallel_residual",
                     "attention.layer_norm_epsilon": "layer_norm_eps", "rope.dimension_count": "_rotary_dims",
                     "rope.freq_base": "rope_theta", "vocab_size": "vocab_size"},
        layer="gpt_neox.layers.{i}",
        layer_names={"attn_norm": "input_layernorm", "attn_qkv": "attention.query_key_value",
                     "attn_output": "attention.dense", "ffn_norm": "post_attention_layernorm",
                     "ffn_up": "mlp.dense_h_to_4h", "ffn_down": "mlp.dense_4h_to_h"},
        top_names={"token_embd": "gpt_neox.embed_in", "output_norm": "gpt_neox.final_layer_norm",
                   "output": "embed_out"},
        fixes={"attn_qkv": _neox_qkv}, finish=_gptneox_config),
}
# HF config fields every architecture needs from the metadata (checked after renaming).
_REQUIRED = {"num_hidden_layers", "hidden_size", "num_attention_heads", "n_layer", "n_embd", "n_head"}


def open_reader(path: Path):
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # truncated files fail inside numpy memmap / struct parsing
        raise WeightError(f"cannot read GGUF file {path}: {type(e).__name__}: {e}") from e


def _field(reader, key):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def architecture(reader, path: Path) -> tuple[str, Arch]:
    arch = _field(reader, "general.architecture")
    if arch not in ARCHS:
        raise UnsupportedConfigError(
            f"{path}: GGUF architecture {arch!r} is not supported by keytok_jax's GGUF loader "
            f"(supported: {', '.join(ARCHS)}); convert it to a Hugging Face folder instead")
    return arch, ARCHS[arch]


def hf_config_dict(reader, path: Path) -> dict:
    arch, spec = architecture(reader, path)
    cfg = {"model_type": spec.model_type}
    for key, name in spec.config_keys.items():
        value = _field(reader, f"{arch}.{key}")
        if value is not None:
            cfg[name] = value
    # (n_layer …) for GPT-2, (num_hidden_layers …) for the others
    needed = [k for k in spec.config_keys.values() if k in _REQUIRED]
    missing = [k for k in needed if k not in cfg]
    if missing:
        keys = {v: k for k, v in spec.config_keys.items()}
        raise WeightError(f"{path}: GGUF metadata lacks {', '.join(f'{arch}.{keys[m]}' for m in missing)}")
    if "vocab_size" not in cfg:
        embd = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        if embd is not None:  # rows of the embedding (Gemma3's converter drops out-of-vocab rows)
            cfg["vocab_size"] = int(embd.shape[-1])
        elif tokens is not None:
            cfg["vocab_size"] = len(tokens.data)
        else:
            raise WeightError(f"{path}: GGUF has neither {arch}.vocab_size, token_embd.weight nor tokenizer.ggml.tokens")
    scaling = _field(reader, f"{arch}.rope.scaling.type")
    if scaling == "linear" and spec.finish is _gemma3_config:
        cfg["_rope_scaling"] = {"rope_type": "linear", "factor": float(_field(reader, f"{arch}.rope.scaling.factor"))}
    elif scaling == "linear":
        cfg["rope_scaling"] = {"rope_type": "linear", "factor": float(_field(reader, f"{arch}.rope.scaling.factor"))}
    elif scaling not in (None, "none"):
        raise UnsupportedConfigError(f"{path}: GGUF rope scaling {scaling!r} is not implemented")
    if any(t.name == "rope_freqs.weight" for t in reader.tensors):
        raise UnsupportedConfigError(
            f"{path}: GGUF carries rope_freqs.weight (Llama 3.1-style rope scaling baked into a tensor); "
            f"put the model's config.json beside the .gguf so keytok_jax reads the scaling from it")
    cfg["tie_word_embeddings"] = all(t.name != "output.weight" for t in reader.tensors)
    for key, name in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                      ("padding_token_id", "pad_token_id")):
        value = _field(reader, f"tokenizer.ggml.{key}")
        if value is not None:
            cfg[name] = int(value)
    if spec.finish is not None:
        cfg = spec.finish(cfg, lambda k: _field(reader, k), arch)
    return cfg


def hf_name(gguf_name: str, arch: str = "llama") -> str | None:
    return ARCHS[arch].hf_name(gguf_name)


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (interleaved → rotate-half RoPE layout)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFSource(TensorSource):
    """Tensors of a GGUF file under their HF names, in the HF layout. The conventions are those of
    the file's architecture; ``config`` (HF fields) gives the head counts."""

    def __init__(self, path: Path, reader=None, config: dict | None = None):
        self.files = [path]
        self.reader = reader or open_reader(path)
        self.arch_name, self.arch = architecture(self.reader, path)
        self.config = config or hf_config_dict(self.reader, path)
        self._tensors = {}
        for t in self.reader.tensors:
            name = self.arch.hf_name(t.name)
            if name is not None:
                self._tensors[name] = t

    def names(self):
        return list(self._tensors)

    def __contains__(self, name):
        return name in self._tensors

    def get(self, name):
        import gguf

        if name not in self._tensors:
            raise self.missing(name)
        t = self._tensors[name]
        try:
            w = gguf.quants.dequantize(t.data, t.tensor_type)
        except Exception as e:
            raise WeightError(f"{self.files[0]}: cannot dequantize tensor {t.name} ({t.tensor_type.name}): {e}") from e
        w = np.asarray(w, dtype=np.float32).reshape(tuple(int(d) for d in reversed(t.shape)))
        part = t.name.split(".")[-2]
        spec, cfg = self.arch, self.config
        if spec.permute_qk and t.name.endswith(".weight") and part in ("attn_q", "attn_k"):
            heads = cfg.get("num_attention_heads", cfg.get("n_head"))
            if part == "attn_k":
                heads = cfg.get("num_key_value_heads") or heads
            w = unpermute_qk(w, heads)
        if spec.norm_shift and t.name.endswith("norm.weight"):
            w = w - np.float32(spec.norm_shift)
        if part in spec.transposed and t.name.endswith(".weight") and w.ndim == 2:
            w = np.ascontiguousarray(w.T)
        if part in spec.fixes:
            w = spec.fixes[part](w, cfg)
        return w


def gguf_tokenizer(path: Path, reader=None):
    """A fast tokenizer rebuilt from GGUF metadata with transformers' GGUF tokenizer builders.

    transformers' own metadata reader imports PyTorch, so the metadata is read here with the
    ``gguf`` package and handed to its (torch-free) builder in the same shape.
    """
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf import gguf_tokenizer_mapping as tm

    reader = reader or open_reader(path)
    arch = _field(reader, "general.architecture")
    grouped = {group: {name: _field(reader, f"tokenizer.{key}") for key, name in renames.items()
                       if f"tokenizer.{key}" in reader.fields}
               for group, renames in tm.GGUF_TOKENIZER_MAPPING.items()}
    tokenizer, tokenizer_config = grouped["tokenizer"], grouped["tokenizer_config"]
    if "tokens" not in tokenizer:
        raise WeightError(f"{path}: GGUF metadata has no tokenizer.ggml.tokens; put tokenizer.json beside it")
    if tokenizer.get("tokenizer_type") == "llama":
        tokenizer_config.setdefault("add_bos_token", True)
    for name, key in tm._SPECIAL_TOKENS.items():
        token_id = _field(reader, f"tokenizer.ggml.{key}")
        tokenizer_config[name] = tokenizer["tokens"][token_id] if token_id is not None else None
    backend, extra = tm.convert_gguf_tokenizer(arch, tokenizer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **tokenizer_config, **extra)
