"""Turn a :class:`TensorSource` into the Flax parameter tree of a port, without ever creating
random weights: the target shapes come from ``jax.eval_shape`` of the module's init."""
from __future__ import annotations

import re
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from ..models import DecoderConfig, build_module
from ..sharding import place
from .name_maps import NAME_MAPS, Entry, linear
from .sources import TensorSource, WeightError

# Buffers that some checkpoints carry and no port needs (causal-mask and rotary caches).
_IGNORED = re.compile(r"(\.attn\.(masked_)?bias|\.attention\.(masked_)?bias|rotary_emb\.inv_freq)$")

NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def abstract_variables(cfg: DecoderConfig, dtype):
    """Boxed (logically partitioned) abstract parameters of the port."""
    module = build_module(cfg, dtype)
    ids = jnp.zeros((1, 4), jnp.int32)
    return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), ids, ids, method=module.init_all))["params"]


def abstract_params(cfg: DecoderConfig, dtype) -> dict:
    return nn.unbox(abstract_variables(cfg, dtype))


# Base-model prefixes that a checkpoint saved from the bare model (GPT2Model, LlamaModel) lacks:
# openai-community/gpt2 names its tensors "h.0.attn.c_attn.weight", not "transformer.h.0...".
_BASE_PREFIXES = ("transformer.", "model.")


def _resolve(source: TensorSource, name: str) -> str:
    """``name`` as the source spells it: the first of its ``|``-separated spellings present, as
    given or without the base-model prefix; the first spelling when none is (for the error)."""
    spellings = name.split("|")
    for spelling in spellings:
        if spelling in source:
            return spelling
        for prefix in _BASE_PREFIXES:
            if spelling.startswith(prefix) and spelling[len(prefix):] in source:
                return spelling[len(prefix):]
    return spellings[0]


def _read(source: TensorSource, entry: Entry, name: str) -> np.ndarray:
    if name not in source:
        raise source.missing(name, f" (needed for parameter {entry.path})")
    value = source.get(name)
    return entry.hook(value) if entry.hook else value


def head_entry(cfg: DecoderConfig) -> Entry:
    """The name-map entry of the matrix logits project through: the LM head, or the token
    embedding when ``cfg`` ties them."""
    path = "embed/embedding" if cfg.tie_word_embeddings else "lm_head/embedding"
    return next(e for e in NAME_MAPS[cfg.family](cfg) if e.path == path)


def head_name(cfg: DecoderConfig, source: TensorSource) -> tuple[str, bool]:
    """(the source's spelling of the head tensor of :func:`head_entry`, whether it holds it)."""
    name = _resolve(source, head_entry(cfg).hf_name)
    return name, name in source


def read_head(cfg: DecoderConfig, source: TensorSource) -> np.ndarray:
    """The [vocab, dim] matrix a checkpoint projects logits through (its embedding when tied)."""
    entry = head_entry(cfg)
    return np.asarray(_read(source, entry, _resolve(source, entry.hf_name)))


def convert(cfg: DecoderConfig, source: TensorSource, dtype: str = "float32", shardings=None) -> dict:
    """Read, transform, stack and check every parameter; returns a nested dict of numpy arrays.

    With ``shardings`` (a tree like the parameters, of ``jax.sharding.Sharding``) each parameter is
    placed as soon as it is read and returned as a ``jax.Array``, so the host holds one parameter
    at a time, not the model. Where the source reads part of a tensor (safetensors) and the value
    hook is none or a transpose (embeddings, norms, every Linear kernel and bias), each device's
    slice is read straight from the file: a process reads only the slices its devices hold.
    Other parameters (fused tensors, GGUF) are read whole, then sliced."""
    np_dtype = NP_DTYPES[dtype]
    expected = {"/".join(k): v for k, v in flatten_dict(abstract_params(cfg, jnp.dtype(np_dtype))).items()}
    placed = None if shardings is None else {"/".join(k): v for k, v in flatten_dict(shardings).items()}
    entries = NAME_MAPS[cfg.family](cfg)
    out, used = {}, set()
    for entry in entries:
        if entry.path not in expected:
            raise AssertionError(f"name map of {cfg.family} names unknown parameter {entry.path}")
        if entry.stacked:
            names = [_resolve(source, entry.hf_name.format(i=i)) for i in range(cfg.num_layers)]
        else:
            names = [_resolve(source, entry.hf_name)]
        want = tuple(expected[entry.path].shape)
        if placed is not None and source.can_slice and entry.hook in (None, linear):
            out[entry.path] = _place_slices(source, entry, names, want, np_dtype, placed[entry.path])
        else:
            value = (np.stack([_read(source, entry, n) for n in names]) if entry.stacked
                     else _read(source, entry, names[0]))
            _check_shape(source, entry, names[0], tuple(value.shape), want)
            value = np.asarray(value, dtype=np_dtype)
            if placed is not None:
                value = place(value, placed[entry.path])
            out[entry.path] = value
        used.update(names)
    missing = sorted(set(expected) - set(out))
    if missing:
        raise AssertionError(f"name map of {cfg.family} leaves parameters unset: {missing}")
    unused = [n for n in source.names() if n not in used and not _IGNORED.search(n)
              and not (cfg.tie_word_embeddings and n == "lm_head.weight")]
    if unused:
        warnings.warn(f"{len(unused)} tensor(s) in {source.file_of(unused[0])} not used by the "
                      f"{cfg.model_type} port: {unused[:5]}", stacklevel=2)
    return unflatten_dict({tuple(k.split("/")): v for k, v in out.items()})


def _check_shape(source, entry: Entry, name: str, got: tuple, want: tuple) -> None:
    if got != want:
        raise WeightError(
            f"shape mismatch for tensor {name!r} in {source.file_of(name)}: "
            f"got {got}{' per layer' if entry.stacked else ''} after conversion, "
            f"the config implies {want} for parameter {entry.path}")


def _place_slices(source: TensorSource, entry: Entry, names: list[str], want: tuple, np_dtype, sharding):
    """A parameter as a ``jax.Array`` whose every device slice is read from the file on its own.
    ``entry.hook`` is ``None`` or ``linear`` (a transpose), so a slice of the Flax value is the
    transposed slice of the stored tensor."""
    for n in names:
        if n not in source:
            raise source.missing(n, f" (needed for parameter {entry.path})")
    per_layer = source.shape(names[0])
    if entry.hook is linear:
        per_layer = per_layer[::-1]
    _check_shape(source, entry, names[0], ((len(names),) if entry.stacked else ()) + tuple(per_layer), want)

    def read(name, index):
        if entry.hook is linear:
            return source.get_slice(name, tuple(index[::-1])).T
        return source.get_slice(name, tuple(index))

    seen: dict = {}   # devices holding the same slice (replicated axes) share one read

    def slice_of(index):
        index = tuple(index) + (slice(None),) * (len(want) - len(index))
        key = tuple((s.start, s.stop, s.step) for s in index)
        if key not in seen:
            if entry.stacked:
                layers = range(len(names))[index[0]]
                value = np.stack([read(names[i], index[1:]) for i in layers])
            else:
                value = read(names[0], index)
            seen[key] = np.ascontiguousarray(value, dtype=np_dtype)
        return seen[key]

    return jax.make_array_from_callback(want, sharding, slice_of)
