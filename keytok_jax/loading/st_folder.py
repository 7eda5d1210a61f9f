"""sentence-transformers folders: ``modules.json`` and its modules' configs and weights, read into
a small frozen record (:class:`SentenceTransformerModules`) the embedder applies.

Reference: sentence-transformers 6.x (``Transformer``, ``Pooling``, ``Dense``, ``Normalize``,
``config_sentence_transformers.json``). Supported pipeline: one Transformer first, then one Pooling
(``cls`` / ``mean`` / ``weightedmean`` / ``lasttoken``, ``include_prompt``), any number of Dense
layers (linear + bias + activation, no residual) and Normalize modules, in the folder's order. Any
other module, pooling mode or Dense option is refused with :class:`STFolderError` naming it.

The maximum length is ``sentence_bert_config.json``'s ``max_seq_length`` when present, else the
tokenizer's ``model_max_length`` capped at ``max_position_embeddings`` (as sentence-transformers
reads it).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import KeytokError
from .sources import SafetensorsSource, WeightError, read_torch_bin

__all__ = ["STFolderError", "DenseLayer", "SentenceTransformerModules", "read_st_folder",
           "declares_bidirectional", "POOLING_MODES", "ACTIVATIONS"]

# sentence-transformers pooling mode → keytok pooling method
POOLING_MODES = {"cls": "cls", "mean": "mean", "weightedmean": "weighted_mean", "lasttoken": "last"}
_LEGACY_POOLING = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                   "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                   "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
# torch activation class (Dense config ``activation_function``) → keytok name
ACTIVATIONS = {"torch.nn.modules.linear.Identity": "identity", "torch.nn.modules.activation.Tanh": "tanh",
               "torch.nn.modules.activation.ReLU": "relu", "torch.nn.modules.activation.GELU": "gelu",
               "torch.nn.modules.activation.Sigmoid": "sigmoid", "torch.nn.modules.activation.SiLU": "silu"}
_KINDS = {"Transformer": "transformer", "Pooling": "pooling", "Dense": "dense", "Normalize": "normalize"}


class STFolderError(KeytokError, ValueError):
    """A sentence-transformers folder asks for a module or option keytok_jax does not implement."""


@dataclass(frozen=True)
class DenseLayer:
    """``y = activation(x W^T + b)``: ``weight [out, in]`` float32, ``bias [out]`` or None."""
    weight: np.ndarray
    bias: np.ndarray | None
    activation: str


@dataclass(frozen=True)
class SentenceTransformerModules:
    """What a sentence-transformers folder declares after its Transformer module.

    ``pooling``: keytok pooling method; ``include_prompt``: prompt tokens are pooled;
    ``post``: ``("dense", DenseLayer)`` / ``("normalize", None)`` in order; ``prompts`` and
    ``default_prompt_name`` from ``config_sentence_transformers.json``; ``max_length``: the
    tokenizer's truncation length; ``files``: the module files read (for a store's identity)."""
    folder: str
    pooling: str
    include_prompt: bool
    post: tuple
    prompts: dict
    default_prompt_name: str | None
    max_length: int | None
    files: tuple

    @property
    def dense_layers(self) -> tuple:
        return tuple(layer for kind, layer in self.post if kind == "dense")

    def output_dim(self, hidden: int) -> int:
        layers = self.dense_layers
        return int(layers[-1].weight.shape[0]) if layers else hidden

    def prompt(self, name: str | None) -> str | None:
        """The prompt text of ``name`` (None: the default prompt name's, as sentence-transformers
        resolves it); unknown names raise :class:`STFolderError`."""
        if name is None:
            name = self.default_prompt_name
            if name is None:
                return None
            return self.prompts.get(name)
        if name not in self.prompts:
            raise STFolderError(f"{self.folder}: prompt name {name!r} not in the folder's prompts "
                                f"{sorted(self.prompts)} (config_sentence_transformers.json)")
        return self.prompts[name]


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise STFolderError(f"{path}: cannot read: {e}") from None


def _kind(entry: dict, modules_json: Path) -> str:
    name = str(entry.get("type", "")).rsplit(".", 1)[-1]
    if name not in _KINDS:
        raise STFolderError(f"{modules_json}: module {entry.get('type')!r} is not implemented by "
                            f"keytok_jax (supported: {', '.join(_KINDS)})")
    return _KINDS[name]


def _pooling(path: Path) -> tuple[str, bool]:
    cfg = _json(path / "config.json")
    mode = cfg.get("pooling_mode")
    if mode is None:
        modes = [m for k, m in _LEGACY_POOLING.items() if cfg.get(k)] or ["mean"]
        mode = modes[0] if len(modes) == 1 else modes
    if isinstance(mode, (list, tuple)):
        mode = mode[0] if len(mode) == 1 else tuple(mode)
    if mode not in POOLING_MODES:
        raise STFolderError(f"{path / 'config.json'}: pooling mode {mode!r} is not implemented by "
                            f"keytok_jax (supported: {', '.join(POOLING_MODES)})")
    return POOLING_MODES[mode], bool(cfg.get("include_prompt", True))


def _dense(path: Path) -> DenseLayer:
    cfg = _json(path / "config.json")
    if cfg.get("use_residual"):
        raise STFolderError(f"{path / 'config.json'}: Dense use_residual is not implemented by keytok_jax")
    for key in ("module_input_name", "module_output_name"):
        if cfg.get(key, "sentence_embedding") not in ("sentence_embedding", None):
            raise STFolderError(f"{path / 'config.json'}: Dense {key}={cfg[key]!r} is not implemented "
                                "(only sentence_embedding)")
    act = cfg.get("activation_function", "torch.nn.modules.activation.Tanh")
    if act not in ACTIVATIONS:
        raise STFolderError(f"{path / 'config.json'}: activation {act!r} is not implemented by "
                            f"keytok_jax (supported: {', '.join(ACTIVATIONS)})")
    if (path / "model.safetensors").exists():
        src = SafetensorsSource([path / "model.safetensors"])
        tensors = {n: src.get(n) for n in src.names()}
    elif (path / "pytorch_model.bin").exists():
        tensors = read_torch_bin(path / "pytorch_model.bin")
    else:
        raise WeightError(f"no weight file in {path} (looked for model.safetensors, pytorch_model.bin)")
    if "linear.weight" not in tensors:
        raise WeightError(f"missing tensor 'linear.weight' in {path}")
    weight = np.asarray(tensors["linear.weight"], np.float32)
    shape = (int(cfg["out_features"]), int(cfg["in_features"]))
    if weight.shape != shape:
        raise WeightError(f"{path}: linear.weight has shape {weight.shape}, config says {shape}")
    bias = None
    if cfg.get("bias", True):
        if "linear.bias" not in tensors:
            raise WeightError(f"missing tensor 'linear.bias' in {path}")
        bias = np.asarray(tensors["linear.bias"], np.float32)
    return DenseLayer(weight, bias, ACTIVATIONS[act])


def _max_length(folder: Path) -> int | None:
    sbert = folder / "sentence_bert_config.json"
    if sbert.exists() and _json(sbert).get("max_seq_length"):
        return int(_json(sbert)["max_seq_length"])
    limit = None
    if (folder / "tokenizer_config.json").exists():
        limit = _json(folder / "tokenizer_config.json").get("model_max_length")
    positions = _json(folder / "config.json").get("max_position_embeddings") if (folder / "config.json").exists() else None
    values = [int(v) for v in (limit, positions) if isinstance(v, (int, float)) and 0 < v < 1e12]
    return min(values) if values else None


def read_st_folder(folder) -> SentenceTransformerModules | None:
    """The modules of a sentence-transformers folder, or None when ``folder`` has no
    ``modules.json`` (a plain Hugging Face folder, a GGUF file)."""
    folder = Path(folder)
    modules_json = folder / "modules.json"
    if not folder.is_dir() or not modules_json.exists():
        return None
    entries = sorted(_json(modules_json) if isinstance(_json(modules_json), list) else [],
                     key=lambda e: e.get("idx", 0))
    kinds = [_kind(e, modules_json) for e in entries]
    if not kinds or kinds[0] != "transformer" or kinds.count("transformer") != 1:
        raise STFolderError(f"{modules_json}: expected one Transformer module first, got {kinds}")
    if kinds.count("pooling") != 1 or kinds[1] != "pooling":
        raise STFolderError(f"{modules_json}: expected one Pooling module after the Transformer, got {kinds}")
    if entries[0].get("path", "") not in ("", "."):
        raise STFolderError(f"{modules_json}: a Transformer in a subfolder ({entries[0]['path']!r}) "
                            "is not supported; the backbone must sit at the folder's root")
    files = [modules_json]
    pooling, include_prompt = _pooling(folder / entries[1]["path"])
    files.append(folder / entries[1]["path"] / "config.json")
    post = []
    for entry, kind in zip(entries[2:], kinds[2:]):
        path = folder / entry["path"]
        if kind == "dense":
            post.append(("dense", _dense(path)))
            files += [f for f in sorted(path.iterdir()) if f.is_file()]
        elif kind == "normalize":
            post.append(("normalize", None))
        else:
            raise STFolderError(f"{modules_json}: module {entry.get('type')!r} after Pooling is not supported")
    st_cfg = folder / "config_sentence_transformers.json"
    cfg = _json(st_cfg) if st_cfg.exists() else {}
    if st_cfg.exists():
        files.append(st_cfg)
    prompts = dict(cfg.get("prompts") or {})
    default = cfg.get("default_prompt_name")
    if default is not None and default not in prompts:
        raise STFolderError(f"{st_cfg}: default_prompt_name {default!r} is not one of its prompts {sorted(prompts)}")
    if (folder / "sentence_bert_config.json").exists():
        files.append(folder / "sentence_bert_config.json")
    return SentenceTransformerModules(str(folder), pooling, include_prompt, tuple(post), prompts, default,
                                      _max_length(folder), tuple(str(f) for f in files))


def declares_bidirectional(hf_config: dict) -> bool:
    """Whether a transformers config dict declares bidirectional attention (Gemma3
    ``use_bidirectional_attention: true``, or ``is_causal: false``)."""
    return bool(hf_config.get("use_bidirectional_attention")) or hf_config.get("is_causal") is False
