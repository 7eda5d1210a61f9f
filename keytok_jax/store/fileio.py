"""Crash-safe file writing: a file holds either its old content or all of the new, never a torn
mix, so a killed run leaves at worst a stray temporary file that the next writer removes.

Used for the store's manifest, ids files and shard records, and by other packages that save
files beside their data (the search index). Temporary files are named ``.NAME.PID.RAND.tmp`` in
the target's directory, so :func:`remove_stale_tmps` finds those a killed writer left.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "write_tmp", "tmp_path", "fsync_dir", "remove_stale_tmps",
           "json_bytes"]


def fsync_dir(path: Path) -> None:
    """Make a rename or link inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def write_tmp(path: Path, data: bytes) -> Path:
    """Write ``data`` durably to a fresh temporary file beside ``path``; returns its path."""
    tmp = tmp_path(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` holds either its old content or all of
    ``data``, whenever the process dies."""
    tmp = write_tmp(path, data)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def remove_stale_tmps(directory: Path, name: str) -> None:
    """Remove the temporary files that killed writers of ``directory / name`` left behind."""
    for p in directory.glob(f".{name}.*.tmp"):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def json_bytes(obj: Any) -> bytes:
    """The store's JSON encoding (sorted keys, indent 2, UTF-8), so rewrites are byte-stable."""
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
