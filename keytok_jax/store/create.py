"""Creating a store's manifest and arrays, or reopening them with the same settings: what
:meth:`keytok_jax.store.StoreWriter.create_or_resume` does before any shard is written. Safe to
run from several processes at once (the manifest is linked into place, never overwritten)."""
from __future__ import annotations

import os
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import tensorstore as ts

from . import fileio
from .errors import StoreError, StoreMismatchError
from .format import FORMAT_VERSION, LOCK, MANIFEST, MAX_ROWS, array_spec, now

__all__ = ["new_manifest", "create_manifest", "check_same", "open_or_create_array"]



def package_version() -> str:
    pkg = sys.modules.get("keytok_jax")
    version = getattr(pkg, "__version__", None)
    if version:
        return version
    try:
        return metadata.version("keytok_jax")
    except Exception:  # noqa: BLE001 - metadata absent (the store used on its own)
        return "unknown"


def new_manifest(settings: dict, *, k: int, vocab_size: int, dim: int | None,
                  shard_size: int) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "keytok_jax_version": package_version(),
        "settings": settings,
        "vocab_size": vocab_size,
        "k": k,
        "dim": dim,
        "shard_size": shard_size,
        "num_rows": None,
        "num_shards": None,
        "complete": False,
        "created": now(),
    }


def create_manifest(path: Path, manifest: dict) -> None:
    """Write ``manifest`` unless the store already has one; refuses a foreign directory."""
    mpath = path / MANIFEST
    if path.exists() and not path.is_dir():
        raise StoreError(f"{path} exists and is not a directory")
    if mpath.exists():
        return
    if path.is_dir():
        foreign = [p.name for p in path.iterdir() if p.name != LOCK and not (
                   p.name.startswith((f".{MANIFEST}.", f".{LOCK}.")) and p.name.endswith(".tmp"))]
        if foreign:
            raise StoreError(f"{path} exists, is not empty and has no {MANIFEST}: not a "
                             f"keytok_jax store (found {sorted(foreign)[:5]})")
    path.mkdir(parents=True, exist_ok=True)
    tmp = fileio.write_tmp(mpath, fileio.json_bytes(manifest))
    try:
        os.link(tmp, mpath)  # atomic and never clobbers a concurrent creator's manifest
        fileio.fsync_dir(path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def check_same(path: Path, old: dict, new: dict) -> None:
    diffs = []
    old_settings, new_settings = old.get("settings") or {}, new["settings"]
    absent = "<absent>"
    for key in sorted(set(old_settings) | set(new_settings), key=str):
        a, b = old_settings.get(key, absent), new_settings.get(key, absent)
        if a != b:
            diffs.append(f"settings[{key!r}]: store has {a!r}, this run has {b!r}")
    for key in ("k", "dim", "vocab_size", "shard_size"):
        if old.get(key) != new[key]:
            diffs.append(f"{key}: store has {old.get(key)!r}, this run has {new[key]!r}")
    if diffs:
        raise StoreMismatchError(
            f"the store at {path} was written with different settings; resume it with the same "
            f"settings or write to a new path:\n  " + "\n  ".join(diffs))


def open_or_create_array(path: Path, name: str, manifest: dict) -> ts.TensorStore:
    k, dim, shard_size = manifest["k"], manifest["dim"], manifest["shard_size"]
    width = {"token_ids": [k], "token_weights": [k], "dense": [dim]}.get(name, [])
    spec = array_spec(path, name, shape=[MAX_ROWS] + width, chunks=[shard_size] + width)
    try:
        arr = ts.open(array_spec(path, name), open=True, read=True, write=True).result()
    except ValueError as e:  # NOT_FOUND: create (idempotent when several processes race)
        if "NOT_FOUND" not in str(e):
            raise StoreError(f"{path / name}: cannot open the zarr array: {e}") from None
        arr = ts.open(spec, create=True, open=True).result()
    expected = spec["metadata"]
    chunks = list(arr.chunk_layout.write_chunk.shape)
    if (arr.dtype.numpy_dtype != np.dtype(expected["dtype"]) or chunks != expected["chunks"]
            or list(arr.shape[1:]) != width):
        raise StoreError(f"{path / name}: array has dtype {arr.dtype.numpy_dtype}, chunks "
                         f"{chunks}, shape {list(arr.shape)}; the manifest calls for dtype "
                         f"{np.dtype(expected['dtype'])}, chunks {expected['chunks']}, "
                         f"shape [rows] + {width}")
    if not manifest.get("complete") and arr.shape[0] != MAX_ROWS:
        # A finalize was interrupted after resizing: give the rows their bound back.
        arr = arr.resize(exclusive_max=[MAX_ROWS] + [None] * len(width),
                         resize_metadata_only=True).result()
    return arr
