"""Converted parameters cached with orbax-checkpoint, so a second load skips conversion.

The key covers each source file (resolved path, size, modification time), the dtype, the port's
config and the converter version; any change makes a new entry. ``KEYTOK_JAX_CACHE`` moves the
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


def cache_key(files, dtype: str, config_repr: str) -> str:
    stats = []
    for f in files:
        p = Path(f).resolve()
        st = p.stat()
        stats.append([str(p), st.st_size, st.st_mtime_ns])
    blob = json.dumps({"files": stats, "dtype": dtype, "config": config_repr, "v": CONVERTER_VERSION},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer()


def restore(key: str, abstract):
    """The cached tree for ``key`` placed like ``abstract`` (ShapeDtypeStructs), or None."""
    path = cache_root() / "params" / key
    if not (path / "done").exists():
        return None
    device = jax.devices()[0]
    target = jax.tree.map(
        lambda s: s if getattr(s, "sharding", None) is not None
        else jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=jax.sharding.SingleDeviceSharding(device)),
        abstract)
    with _checkpointer() as ckptr:
        return ckptr.restore(path / "params", target)


def save(key: str, params) -> None:
    path = cache_root() / "params" / key
    path.mkdir(parents=True, exist_ok=True)
    with _checkpointer() as ckptr:
        ckptr.save(path / "params", params, force=True)
        ckptr.wait_until_finished()
    (path / "done").write_text("ok\n")  # written last: a killed save is never restored
