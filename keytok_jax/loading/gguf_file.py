"""GGUF checkpoints (llama.cpp): metadata → HF config, tensors → HF names, dequantized with the
``gguf`` package. llama.cpp stores the rows of ``attn_q``/``attn_k`` permuted for its RoPE kernel;
:func:`unpermute_qk` undoes it so the HF name maps apply unchanged."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..models.config import UnsupportedConfigError
from .sources import TensorSource, WeightError

# GGUF metadata key (after "<arch>.") → HF config field, for the architectures we read.
_CONFIG_KEYS = {
    "block_count": "num_hidden_layers",
    "context_length": "max_position_embeddings",
    "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "attention.key_length": "head_dim",
    "rope.freq_base": "rope_theta",
    "vocab_size": "vocab_size",
}
_ARCH_TO_MODEL_TYPE = {"llama": "llama", "qwen2": "qwen2"}

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def open_reader(path: Path):
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # truncated files fail inside numpy memmap / struct parsing
        raise WeightError(f"cannot read GGUF file {path}: {type(e).__name__}: {e}") from e


def _field(reader, key):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def hf_config_dict(reader, path: Path) -> dict:
    arch = _field(reader, "general.architecture")
    if arch not in _ARCH_TO_MODEL_TYPE:
        raise UnsupportedConfigError(
            f"{path}: GGUF architecture {arch!r} is not supported by keytok_jax's GGUF loader "
            f"(supported: {', '.join(_ARCH_TO_MODEL_TYPE)}); convert it to a Hugging Face folder instead")
    cfg = {"model_type": _ARCH_TO_MODEL_TYPE[arch]}
    for key, name in _CONFIG_KEYS.items():
        value = _field(reader, f"{arch}.{key}")
        if value is not None:
            cfg[name] = value
    missing = [k for k in ("num_hidden_layers", "hidden_size", "num_attention_heads") if k not in cfg]
    if missing:
        raise WeightError(f"{path}: GGUF metadata lacks {', '.join(f'{arch}.{m}' for m in missing)}")
    if "vocab_size" not in cfg:
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        if tokens is None:
            raise WeightError(f"{path}: GGUF metadata has neither {arch}.vocab_size nor tokenizer.ggml.tokens")
        cfg["vocab_size"] = len(tokens.data)
    scaling = _field(reader, f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        raise UnsupportedConfigError(f"{path}: GGUF rope scaling {scaling!r} is not implemented")
    cfg["tie_word_embeddings"] = all(t.name != "output.weight" for t in reader.tensors)
    for key, name in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                      ("padding_token_id", "pad_token_id")):
        value = _field(reader, f"tokenizer.ggml.{key}")
        if value is not None:
            cfg[name] = int(value)
    return cfg


def hf_name(gguf_name: str) -> str | None:
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if m:
        layer, part, kind = m.groups()
        return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{kind}" if part in _LAYER_NAMES else None
    m = re.fullmatch(r"(\w+)\.(weight|bias)", gguf_name)
    if m and m.group(1) in _TOP_NAMES:
        return f"{_TOP_NAMES[m.group(1)]}.{m.group(2)}"
    return None


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (interleaved → rotate-half RoPE layout)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFSource(TensorSource):
    def __init__(self, path: Path, reader=None, config: dict | None = None):
        self.files = [path]
        self.reader = reader or open_reader(path)
        self.config = config or hf_config_dict(self.reader, path)
        self._tensors = {}
        for t in self.reader.tensors:
            name = hf_name(t.name)
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
        # llama.cpp permutes q/k for llama-style models only (convert_hf_to_gguf LlamaModel).
        if self.config["model_type"] == "llama":
            if name.endswith("self_attn.q_proj.weight"):
                w = unpermute_qk(w, self.config["num_attention_heads"])
            elif name.endswith("self_attn.k_proj.weight"):
                w = unpermute_qk(w, self.config.get("num_key_value_heads", self.config["num_attention_heads"]))
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
