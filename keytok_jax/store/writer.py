"""Writing a store: create it (or resume it with the same settings), write each shard, finalize.

A shard is written in an order that makes resume exact (see :mod:`keytok_jax.store.format`):
whole array chunks first, then its ids file, then, last and atomically, the record whose presence
means "done". Shared metadata (manifest, ``.zarray``) is written only at create, idempotently, at
finalize and when a finalized store is reopened, so several processes may write one store, each
owning whole shards. Before a resumed run reuses a recorded shard it asks
:meth:`StoreWriter.reuse_problems` (input fingerprint, files against checksums); a shard that
fails is forgotten with :meth:`StoreWriter.discard_shard` and written again.
"""
from __future__ import annotations

import hashlib
import json
import re
import socket
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import tensorstore as ts

from . import fileio
from .check import Problem, data_problems, input_problems
from .create import check_same, create_manifest, new_manifest, open_or_create_array
from .errors import ShardExistsError, StoreError
from .format import (FLAG_EMPTY, attachment_path, FLAG_REPLACED, FLAG_TRUNCATED, FORMAT_VERSION, IDS_DIR,
                     KNOWN_FLAGS, MANIFEST, MAX_ROWS, SHARDS_DIR, array_names, chunk_shard,
                     digest, encode_ids, list_records, load_record, now, read_manifest,
                     shard_name)

__all__ = ["StoreWriter"]


class StoreWriter:
    """Writes a store shard by shard; see :mod:`keytok_jax.store.format` for the layout.

    Use :meth:`create_or_resume`; then :meth:`done_shards`, :meth:`write_shard` for each shard not
    done, and :meth:`finalize` once every shard is written (by any process).
    """

    def __init__(self, path: Path, manifest: dict, arrays: dict[str, ts.TensorStore]):
        self.path = path
        self.manifest = manifest
        self._arrays = arrays
        self.k: int = manifest["k"]
        self.dim: int | None = manifest["dim"]
        self.vocab_size: int = manifest["vocab_size"]
        self.shard_size: int = manifest["shard_size"]

    # -- creation / resume

    @classmethod
    def create_or_resume(cls, path, settings: Mapping[str, Any], *, k: int, vocab_size: int,
                         dim: int | None = None, shard_size: int = 1024) -> "StoreWriter":
        """Create the store at ``path``, or reopen it when it exists with the same settings.

        Raises :class:`StoreMismatchError` naming every differing setting (old and new value) when
        the existing store's ``settings``, ``k``, ``dim``, ``vocab_size`` or ``shard_size`` differ.
        Safe to call from several processes at once.
        """
        path = Path(path)
        for name, value in (("k", k), ("vocab_size", vocab_size), ("shard_size", shard_size)):
            if not _is_int(value, 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if dim is not None and not _is_int(dim, 1):
            raise ValueError(f"dim must be a positive int or None, got {dim!r}")
        if not isinstance(settings, Mapping):
            raise TypeError(f"settings must be a dict, got {type(settings).__name__}")
        new = new_manifest(_normalize_json(dict(settings), "settings"), k=int(k),
                           vocab_size=int(vocab_size), shard_size=int(shard_size),
                           dim=None if dim is None else int(dim))
        create_manifest(path, new)
        manifest = read_manifest(path)
        check_same(path, manifest, new)
        arrays = {name: open_or_create_array(path, name, manifest)
                  for name in array_names(new["dim"])}
        (path / IDS_DIR).mkdir(exist_ok=True)
        (path / SHARDS_DIR).mkdir(exist_ok=True)
        return cls(path, manifest, arrays)

    def attach(self, name: str, obj: Mapping[str, Any]) -> None:
        """Write attachment ``name`` (a JSON object; atomic, idempotent: every process of a job
        writes the same one)."""
        fileio.atomic_write(attachment_path(self.path, name), fileio.json_bytes(dict(obj)))

    # -- state

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def done_shards(self) -> set[int]:
        """Indices of the shards that have a record (finished, by this or any other process)."""
        return set(list_records(self.path))

    def shard_rows(self, shard_index: int) -> tuple[int, int]:
        """The row range ``[start, start + shard_size)`` that shard ``shard_index`` may occupy."""
        start = shard_index * self.shard_size
        return start, start + self.shard_size

    # -- writing

    def write_shard(self, shard_index: int, ids, token_ids, token_weights, lengths, flags,
                    dense=None, *, counters: Mapping[str, Any] | None = None,
                    input: Mapping[str, str] | None = None) -> dict:
        """Write shard ``shard_index`` (rows ``shard_index * shard_size`` onward) and its record.

        ``ids``: list of n document ids (1 <= n <= shard_size; only the last shard may be short);
        ``token_ids`` [n, k] integers in [-1, vocab_size); ``token_weights`` [n, k] finite floats;
        ``lengths`` [n] non-negative integers; ``flags`` [n] FLAG_* bits; ``dense`` [n, dim]
        finite floats, required exactly when the store has ``dim``; ``counters``: the job's
        per-shard counts (docs, tokens, truncated, empty, replaced, ...), merged over the ones
        derived from ``lengths`` and ``flags``; ``input``: the fingerprint of the shard's input
        rows (:func:`~keytok_jax.store.input_fingerprint`), recorded so that a resumed run can
        tell whether its input is the same. Partial data of an unrecorded shard is overwritten;
        a recorded shard raises :class:`ShardExistsError`. Returns the record.
        """
        shard_index = self._writable_shard(shard_index)
        ids = list(ids)
        n = len(ids)
        if not 1 <= n <= self.shard_size:
            raise ValueError(f"shard {shard_index}: {n} ids; a shard holds 1 to "
                             f"{self.shard_size} rows")
        data = self._check_arrays(shard_index, n, token_ids, token_weights, lengths, flags, dense)
        shard_counters = _shard_counters(shard_index, data, counters)
        input_keys = _input_keys(shard_index, n, input)
        ids_bytes = encode_ids(ids)

        ids_file, record_path = self._ids_file(shard_index), self._record_path(shard_index)
        fileio.remove_stale_tmps(ids_file.parent, ids_file.name)
        fileio.remove_stale_tmps(record_path.parent, record_path.name)
        self._write_chunks(shard_index, data)
        fileio.atomic_write(ids_file, ids_bytes)
        # Last: the record's presence means the shard is complete.
        record = _shard_record(shard_index, self.shard_rows(shard_index)[0], ids_bytes, data,
                               shard_counters)
        record.update(input_keys)
        fileio.atomic_write(record_path, fileio.json_bytes(record))
        return record

    def _ids_file(self, shard_index: int) -> Path:
        return self.path / IDS_DIR / f"{shard_name(shard_index)}.jsonl"

    def _record_path(self, shard_index: int) -> Path:
        return self.path / SHARDS_DIR / f"{shard_name(shard_index)}.json"

    def _writable_shard(self, shard_index) -> int:
        """``shard_index`` as an int, once sure the store and the shard may still be written."""
        if self.complete:
            raise StoreError(f"{self.path} is finalized; it takes no more shards")
        if not _is_int(shard_index, 0):
            raise ValueError(f"shard_index must be a non-negative int, got {shard_index!r}")
        shard_index = int(shard_index)
        record_path = self._record_path(shard_index)
        if record_path.exists():
            raise ShardExistsError(f"shard {shard_index} of {self.path} is already recorded "
                                   f"({record_path}); finished shards are never rewritten")
        if self.shard_rows(shard_index)[1] > MAX_ROWS:
            raise StoreError(f"shard {shard_index} ends past the row bound {MAX_ROWS}")
        return shard_index

    def _write_chunks(self, shard_index: int, data: dict[str, np.ndarray]) -> None:
        """Write the shard's whole chunks, padded with the fill value past its rows, so a redo
        replaces everything a killed attempt may have left (tensorstore fsyncs each chunk file)."""
        start, stop_max = self.shard_rows(shard_index)
        futures = []
        for key, arr in data.items():
            padded = np.zeros((self.shard_size,) + arr.shape[1:], dtype=arr.dtype)
            padded[: len(arr)] = arr
            futures.append(self._arrays[key][start:stop_max].write(padded))
        for f in futures:
            f.result()

    # -- reuse

    def reuse_problems(self, shard_index: int, ids: Sequence[str],
                       fingerprint: Mapping[str, str]) -> list[Problem]:
        """Why recorded shard ``shard_index`` may not be reused for input rows ``ids`` whose
        :func:`~keytok_jax.store.input_fingerprint` is ``fingerprint`` (empty: reuse it). Its
        input first (a record without a fingerprint is not trusted; a changed input names its
        first differing row), then its files: ids file and array chunks present, readable and
        hashing to the record's checksums, one problem per shard and array."""
        try:
            record = load_record(self._record_path(shard_index))
        except StoreError as e:
            return [Problem(shard_index, "damaged", str(e))]
        problems = input_problems(self.path, shard_index, record, ids, fingerprint)
        return problems or data_problems(self.path, shard_index, record, self._arrays)

    def discard_shard(self, shard_index: int) -> None:
        """Forget recorded shard ``shard_index``: its record is removed (a finalized store is
        reopened first), so it is an unfinished shard that :meth:`write_shard` writes again."""
        if self.complete:
            self.reopen()
        self._record_path(shard_index).unlink(missing_ok=True)
        fileio.fsync_dir(self.path / SHARDS_DIR)

    def reopen(self) -> None:
        """Make a finalized store writable again: the manifest is rewritten unfinished first,
        then the arrays get their row bound back (an interrupted reopen is completed by the next
        :meth:`create_or_resume`). Readers refuse the store until it is finalized again."""
        if not self.complete:
            return
        manifest = {k: v for k, v in read_manifest(self.path).items()
                    if k not in ("finalized", "counters")}
        manifest.update(num_rows=None, num_shards=None, complete=False)
        fileio.atomic_write(self.path / MANIFEST, fileio.json_bytes(manifest))
        self.manifest = manifest
        for name, arr in self._arrays.items():
            self._arrays[name] = arr.resize(exclusive_max=[MAX_ROWS] + [None] * (arr.rank - 1),
                                            resize_metadata_only=True).result()

    def drop_shards_from(self, num_shards: int) -> list[int]:
        """Forget every recorded shard from ``num_shards`` on (the input now ends before them),
        reopening a finalized store; returns their indices. :meth:`finalize` then removes
        their files."""
        extra = sorted(i for i in self.done_shards() if i >= num_shards)
        for i in extra:
            self.discard_shard(i)
        return extra

    def _remove_past(self, num_shards: int) -> None:
        """Remove the ids files and chunks of (unrecorded) shards past the last one."""
        ids_re = re.compile(r"^shard-(\d{6,})\.jsonl$")
        for p in (self.path / IDS_DIR).iterdir():
            m = ids_re.match(p.name)
            if m and int(m.group(1)) >= num_shards:
                p.unlink(missing_ok=True)
        for name in self._arrays:
            for p in (self.path / name).iterdir():
                shard = chunk_shard(p.name)
                if shard is not None and shard >= num_shards:
                    p.unlink(missing_ok=True)

    def _check_arrays(self, shard_index, n, token_ids, token_weights, lengths, flags, dense):
        """The shard's arrays in their store dtypes, once their shapes and values are valid."""
        where = f"shard {shard_index}"
        data = {
            "token_ids": _as_int(where, token_ids, "token_ids", (n, self.k), -1, self.vocab_size,
                                 np.dtype("<i4")),
            "token_weights": _as_float(where, token_weights, "token_weights", (n, self.k)),
        }
        if self.dim is not None:
            if dense is None:
                raise ValueError(f"{where}: the store has dim={self.dim}; dense is required")
            data["dense"] = _as_float(where, dense, "dense", (n, self.dim))
        elif dense is not None:
            raise ValueError(f"{where}: the store was created without dense vectors (dim=None)")
        data["lengths"] = _as_int(where, lengths, "lengths", (n,), 0, 2 ** 31, np.dtype("<i4"))
        data["flags"] = _as_int(where, flags, "flags", (n,), 0, 256, np.dtype("u1"))
        unknown = data["flags"] & ~np.uint8(KNOWN_FLAGS)
        if unknown.any():
            raise ValueError(f"{where}: flags has unknown bits {int(np.bitwise_or.reduce(unknown))}"
                             f" (known: {KNOWN_FLAGS})")
        return data

    # -- finalize

    def finalize(self, num_shards: int) -> dict:
        """Check shards 0..num_shards-1 are all recorded (and no others), set the arrays' row
        count to the exact N and write the manifest with ``num_rows`` and ``complete=True``.

        Call once, from one process, after every writer is done. Idempotent: finalizing a complete
        store again with the same ``num_shards`` changes nothing. Returns the manifest.
        """
        if not _is_int(num_shards, 0):
            raise ValueError(f"num_shards must be a non-negative int, got {num_shards!r}")
        num_shards = int(num_shards)
        current = read_manifest(self.path)
        if current.get("complete"):
            if current.get("num_shards") != num_shards:
                raise StoreError(f"{self.path} is already finalized with "
                                 f"{current.get('num_shards')} shards, not {num_shards}")
            self.manifest = current
            return current

        num_rows, totals = self._sum_records(num_shards)
        self._remove_past(num_shards)
        for name, arr in self._arrays.items():
            self._arrays[name] = arr.resize(exclusive_max=[num_rows] + [None] * (arr.rank - 1),
                                            resize_metadata_only=True).result()
        manifest = dict(current)
        manifest.update(num_rows=num_rows, num_shards=num_shards, complete=True,
                        finalized=now(), counters=totals)
        fileio.atomic_write(self.path / MANIFEST, fileio.json_bytes(manifest))
        self.manifest = manifest
        return manifest

    def _sum_records(self, num_shards: int) -> tuple[int, dict[str, Any]]:
        """The store's row count and counter totals, once every shard record checks out."""
        records = self._exact_records(num_shards)
        num_rows = 0
        totals: dict[str, Any] = {}
        for i in range(num_shards):
            rec = load_record(records[i])
            self._check_record(records[i], rec, i, num_shards)
            num_rows += rec["num_rows"]
            for key, value in rec.get("counters", {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    totals[key] = totals.get(key, 0) + value
        return num_rows, totals

    def _exact_records(self, num_shards: int) -> dict[int, Path]:
        """The records of shards 0..num_shards-1; an error when one is missing or more exist."""
        records = list_records(self.path)
        missing = [i for i in range(num_shards) if i not in records]
        if missing:
            shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
            raise StoreError(f"cannot finalize {self.path}: {len(missing)} of {num_shards} shards "
                             f"have no record: {shown}")
        extra = sorted(i for i in records if i >= num_shards)
        if extra:
            raise StoreError(f"cannot finalize {self.path} with {num_shards} shards: shards "
                             f"{extra[:20]} are recorded too")
        return records

    def _check_record(self, where: Path, rec: dict, i: int, num_shards: int) -> None:
        n = rec.get("num_rows")
        if rec.get("shard") != i or rec.get("row_start") != i * self.shard_size \
                or not isinstance(n, int) or rec.get("row_stop") != rec["row_start"] + n:
            raise StoreError(f"{where}: inconsistent record (shard/row range)")
        if i < num_shards - 1 and n != self.shard_size:
            raise StoreError(f"cannot finalize {self.path}: shard {i} has {n} rows but only "
                             f"the last shard ({num_shards - 1}) may hold fewer than "
                             f"{self.shard_size}")
        if not (self.path / rec["ids_file"]).is_file():
            raise StoreError(f"{where}: its ids file {rec['ids_file']} is missing")


# ----------------------------------------------------------------------------- argument checks

def _is_int(value, low: int) -> bool:
    """An int (numpy's too, not bool) of at least ``low``."""
    return (not isinstance(value, bool) and isinstance(value, (int, np.integer))
            and value >= low)


def _normalize_json(obj: Any, what: str) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists...), so comparisons are stable."""
    try:
        return json.loads(json.dumps(obj, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} must be JSON-serialisable (finite numbers, str keys): "
                        f"{e}") from None


def _as_array(where: str, value, name: str, shape: tuple) -> np.ndarray:
    a = np.asarray(value)
    if a.dtype.kind in "OSUcb" or a.dtype.kind == "V" and a.dtype.names:
        raise TypeError(f"{where}: {name} has dtype {a.dtype}")
    if a.shape != shape:
        raise ValueError(f"{where}: {name} has shape {a.shape}, expected {shape}")
    return a


def _as_int(where: str, value, name: str, shape: tuple, low: int, high: int,
            dtype: np.dtype) -> np.ndarray:
    a = _as_array(where, value, name, shape)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{where}: {name} must be integers, got dtype {a.dtype}")
    if a.size and (a.min() < low or a.max() >= high):
        raise ValueError(f"{where}: {name} out of range [{low}, {high}): "
                         f"min {a.min()}, max {a.max()}")
    return a.astype(dtype)


def _as_float(where: str, value, name: str, shape: tuple) -> np.ndarray:
    a = _as_array(where, value, name, shape).astype(np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"{where}: {name} has NaN or infinite values")
    return a


def _shard_counters(shard_index: int, data: dict[str, np.ndarray],
                    counters: Mapping[str, Any] | None) -> dict[str, Any]:
    """The counts derived from ``lengths`` and ``flags``, overridden or extended by the job's."""
    n = len(data["lengths"])
    derived = {
        "docs": n,
        "tokens": int(data["lengths"].astype(np.int64).sum()),
        "truncated": int(np.count_nonzero(data["flags"] & FLAG_TRUNCATED)),
        "empty": int(np.count_nonzero(data["flags"] & FLAG_EMPTY)),
        "replaced": int(np.count_nonzero(data["flags"] & FLAG_REPLACED)),
    }
    if counters is not None:
        if not isinstance(counters, Mapping):
            raise TypeError(f"counters must be a dict, got {type(counters).__name__}")
        counters = _normalize_json(dict(counters), "counters")
        if "docs" in counters and counters["docs"] != n:
            raise ValueError(f"shard {shard_index}: counters['docs'] = {counters['docs']} "
                             f"but the shard has {n} rows")
        derived.update(counters)
    return derived


def _input_keys(shard_index: int, n: int, fingerprint: Mapping[str, str] | None) -> dict:
    """The record's input fingerprint keys, once they fit the shard's ``n`` rows."""
    if fingerprint is None:
        return {}
    sha, rows = fingerprint.get("input_sha256"), fingerprint.get("input_rows")
    if (not isinstance(sha, str) or len(sha) != 64 or not isinstance(rows, str)
            or len(rows) != 8 * n):
        raise ValueError(f"shard {shard_index}: input must be input_fingerprint() of its {n} rows")
    return {"input_sha256": sha, "input_rows": rows}


def _shard_record(shard_index: int, start: int, ids_bytes: bytes, data: dict[str, np.ndarray],
                  counters: dict[str, Any]) -> dict:
    n = len(data["lengths"])
    return {
        "format_version": FORMAT_VERSION,
        "shard": shard_index,
        "row_start": start,
        "row_stop": start + n,
        "num_rows": n,
        "ids_file": f"{IDS_DIR}/{shard_name(shard_index)}.jsonl",
        "sha256": {"ids": hashlib.sha256(ids_bytes).hexdigest(),
                   **{key: digest(arr) for key, arr in data.items()}},
        "counters": counters,
        "written": now(),
        "host": socket.gethostname(),
    }
