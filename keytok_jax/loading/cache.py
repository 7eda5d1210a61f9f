"""Converted parameters cached with orbax-checkpoint, so a second load skips conversion.

The key covers each source file (weights, config.json and tokenizer files beside them: resolved
path, size, modification time), the dtype and the converter version; any change makes a new entry. ``KEYTOK_JAX_CACHE`` moves the
cache (default ``~/.cache/keytok_jax``); ``cache=False`` in ``load_model`` bypasses it.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import jax

CONVERTER_VERSION = 1


def cache_root() -> Path:
    return Path(os.environ.get("KEYTOK_JAX_CACHE", Path.home() / ".cache" / "keytok_jax"))


def cache_key(files, dtype: str) -> str:
    stats = []
    for f in files:
        p = Path(f).resolve()
        st = p.stat()
        stats.append([str(p), st.st_size, st.st_mtime_ns])
    blob = json.dumps({"files": stats, "dtype": dtype, "v": CONVERTER_VERSION},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer()


def entry(key: str) -> Path:
    return cache_root() / "params" / key


def lookup(key: str) -> dict | None:
    """The metadata of a complete cache entry (HF config dict, tokenizer saved or not), or None."""
    done = entry(key) / "done"
    return json.loads(done.read_text()) if done.exists() else None


def restore(key: str, abstract):
    """The cached tree for ``key`` placed like ``abstract`` (ShapeDtypeStructs)."""
    path = entry(key)
    device = jax.devices()[0]
    target = jax.tree.map(
        lambda s: s if getattr(s, "sharding", None) is not None
        else jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=jax.sharding.SingleDeviceSharding(device)),
        abstract)
    with _checkpointer() as ckptr:
        return ckptr.restore(path / "params", target)


def save(key: str, params, hf_config: dict, tokenizer=None) -> None:
    """Parameters with orbax, plus the HF config and tokenizer, so a cached load reads neither the
    source files nor (for GGUF) their slow-to-parse metadata."""
    path = entry(key)
    path.mkdir(parents=True, exist_ok=True)
    with _checkpointer() as ckptr:
        ckptr.save(path / "params", params, force=True)
        ckptr.wait_until_finished()
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path / "tokenizer"))
    meta = {"hf_config": hf_config, "tokenizer": tokenizer is not None}
    (path / "done").write_text(json.dumps(meta))  # written last: a killed save is never restored
