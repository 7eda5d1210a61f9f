"""The inverse of :func:`~keytok_jax.loading.convert.convert`: a port's parameters back into
transformers tensors, written as a Hugging Face folder (``model.safetensors``, ``config.json``,
tokenizer files) that ``load_model`` and ``transformers.AutoModelForCausalLM.from_pretrained`` read.

The per-family name maps drive both directions: every entry's hook carries its own inverse
(``inverse`` for plain hooks, ``part`` / ``parts`` / ``join`` for pieces of a fused tensor, see
:mod:`keytok_jax.loading.name_maps`). Export writes each tensor under the first spelling of its
``a|b`` name, with the full model prefix (``transformer.h.0...``, as ``save_pretrained`` does).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
from flax.traverse_util import flatten_dict

from ..models import DecoderConfig
from .convert import NP_DTYPES
from .name_maps import NAME_MAPS

# Files that would make load_model (which prefers an index) or transformers read other weights
# than the model.safetensors written here.
_OTHER_WEIGHTS = ("model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def unconvert(cfg: DecoderConfig, params) -> dict[str, np.ndarray]:
    """HF tensor name → numpy array in transformers layout, for every parameter of ``params``.

    Stacked (``layers/``) parameters are split into one tensor per layer, fused tensors (GPT-2
    ``c_attn``, GPT-NeoX ``query_key_value``) re-joined from their parts in order, Linear kernels
    transposed back to [out, in]. With tied embeddings there is no ``lm_head.weight`` (the port has
    no such parameter). Values keep their dtype; arrays are C-contiguous.
    """
    flat = {"/".join(k): np.asarray(jax.device_get(v)) for k, v in flatten_dict(params).items()}
    entries = NAME_MAPS[cfg.family](cfg)
    out: dict[str, np.ndarray] = {}
    fused: dict[str, tuple] = {}  # hf name → (join, [piece per part])
    for entry in entries:
        if entry.path not in flat:
            raise KeyError(f"parameter {entry.path} (for {entry.hf_name}) is missing from the "
                           f"{cfg.family} parameters given")
        value = flat[entry.path]
        name = entry.hf_name.split("|")[0]
        if entry.stacked:
            if value.shape[0] != cfg.num_layers:
                raise ValueError(f"stacked parameter {entry.path} has {value.shape[0]} layers, the "
                                 f"config says {cfg.num_layers}")
            per_tensor = [(name.format(i=i), value[i]) for i in range(cfg.num_layers)]
        else:
            per_tensor = [(name, value)]
        hook = entry.hook
        for hf_name, v in per_tensor:
            if hook is None:
                out[hf_name] = np.ascontiguousarray(v)
            elif hasattr(hook, "join"):
                pieces = fused.setdefault(hf_name, (hook.join, [None] * hook.parts))[1]
                if pieces[hook.part] is not None:
                    raise AssertionError(f"name map of {cfg.family} fills part {hook.part} of {hf_name} twice")
                pieces[hook.part] = v
            elif hasattr(hook, "inverse"):
                out[hf_name] = np.ascontiguousarray(hook.inverse(v))
            else:
                raise TypeError(f"hook of {entry.path} ({getattr(hook, '__name__', hook)}) has no "
                                f"inverse nor join: it cannot be exported")
    for hf_name, (join, pieces) in fused.items():
        absent = [n for n, p in enumerate(pieces) if p is None]
        if absent:
            raise AssertionError(f"name map of {cfg.family} leaves parts {absent} of {hf_name} unset")
        out[hf_name] = join(pieces)
    unused = sorted(set(flat) - {e.path for e in entries})
    if unused:
        raise AssertionError(f"name map of {cfg.family} does not cover parameters {unused}")
    return out


def _dtype_name(dtype) -> str:
    return {np.dtype(v): k for k, v in NP_DTYPES.items()}.get(np.dtype(dtype), np.dtype(dtype).name)


def save_hf_folder(model, folder, params=None, dtype: str | None = None) -> Path:
    """Write ``model`` (a :class:`~keytok_jax.model.KeytokModel` from ``load_model``) as a Hugging
    Face folder: ``model.safetensors`` (metadata ``{"format": "pt"}``, which transformers requires),
    ``config.json`` (the transformers config the model was loaded with, ``model.hf_config``) and
    the tokenizer files when the model has a tokenizer. Returns the folder.

    ``params``: the parameter tree to write instead of ``model.params`` (e.g. fine-tuned ones; same
    structure). ``dtype``: ``"float32"``, ``"bfloat16"`` or ``"float16"`` to cast every tensor;
    ``None`` keeps each parameter's dtype (bfloat16 is written as BF16 from ml_dtypes arrays, which
    safetensors' numpy API accepts in 0.8; a safetensors that refuses them gets those tensors as
    float32 instead, with a warning). ``config.json``'s ``dtype`` / ``torch_dtype`` field is set to
    the written dtype. Sharded parameters are gathered to the host.

    Refuses (``ValueError``) a model without ``hf_config`` (built by hand rather than by
    ``load_model``) and a folder holding other weight files (a safetensors index or
    ``pytorch_model.bin``) that loaders would read instead of the new file.
    """
    from safetensors.numpy import save_file

    if not getattr(model, "hf_config", None):
        raise ValueError(f"model {getattr(model, 'source', '') or '(unnamed)'} has no hf_config (the "
                         f"transformers config dict that load_model records), so no config.json can "
                         f"be written; load it with keytok_jax.load_model or set model.hf_config")
    folder = Path(folder)
    stale = [f for f in _OTHER_WEIGHTS if (folder / f).exists()]
    if stale:
        raise ValueError(f"{folder} already holds {stale}, which loaders would read instead of the "
                         f"model.safetensors written here; save to an empty folder")
    tensors = unconvert(model.config, model.params if params is None else params)
    if dtype is not None:
        if dtype not in NP_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(NP_DTYPES)} or None, got {dtype!r}")
        tensors = {k: v.astype(NP_DTYPES[dtype], copy=False) for k, v in tensors.items()}
    folder.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt"}
    try:
        save_file(tensors, str(folder / "model.safetensors"), metadata=metadata)
    except Exception as e:  # safetensors < 0.6 knows no ml_dtypes bfloat16
        if not any(v.dtype == ml_dtypes.bfloat16 for v in tensors.values()):
            raise
        warnings.warn(f"this safetensors cannot write bfloat16 numpy arrays ({e}); writing float32",
                      stacklevel=2)
        tensors = {k: v.astype(np.float32) if v.dtype == ml_dtypes.bfloat16 else v for k, v in tensors.items()}
        save_file(tensors, str(folder / "model.safetensors"), metadata=metadata)

    config = dict(model.hf_config)
    dtypes = {_dtype_name(v.dtype) for v in tensors.values()}
    if len(dtypes) == 1:
        written = dtypes.pop()
        keys = [k for k in ("dtype", "torch_dtype") if k in config] or ["torch_dtype"]
        for k in keys:
            config[k] = written
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(folder))
    return folder
