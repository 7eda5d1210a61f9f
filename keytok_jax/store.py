"""On-disk store of sparse token vectors (and optional dense embeddings), format version 1.

Written shard by shard by the embedding job through :class:`StoreWriter`, read back with
:func:`open`. Every file is a plain format (JSON, JSON Lines, zarr v2), so the store is readable
without keytok_jax.

Store layout (format version 1)
-------------------------------

::

    STORE/
      manifest.json              what produced the store; written at create, rewritten at finalize
      token_ids/                 zarr v2 array [N, k]  int32    (<i4)  aligned token ids, best first
      token_weights/             zarr v2 array [N, k]  float32  (<f4)  their weights
      dense/                     zarr v2 array [N, D]  float32  (<f4)  only when the job keeps dense vectors
      lengths/                   zarr v2 array [N]     int32    (<i4)  tokens the model saw per text
      flags/                     zarr v2 array [N]     uint8    (|u1)  FLAG_* bits per text
      ids/shard-000042.jsonl     document ids of shard 42, one JSON string per line, in row order
      shards/shard-000042.json   record of finished shard 42 (its presence means: shard complete)

Row ``i`` of every array is document ``i``; shard ``s`` holds rows
``[s * shard_size, s * shard_size + num_rows_s)``: every shard but the last is full
(``shard_size`` rows), the last holds 1 to ``shard_size`` rows. Shard file names are
``shard-`` + the shard index zero-padded to 6 digits (more digits past 999999) + the suffix.

``manifest.json`` (a JSON object):

- ``format_version``: 1 (readers refuse other versions);
- ``keytok_jax_version``: the version that created the store;
- ``settings``: the caller's dict describing how vectors were produced (model, model hash,
  tokenizer, pooling, prompt, attention, k, weighting, dtype, max_length, ...); a resumed run must
  pass the same dict;
- ``vocab_size``, ``k``, ``dim`` (D, or ``null`` when there is no ``dense`` array),
  ``shard_size`` (rows per shard = zarr chunk length along rows);
- ``num_rows`` (N) and ``num_shards``: ``null`` until finalized;
- ``complete``: ``false`` while being written, ``true`` once finalized;
- ``created`` (and, once finalized, ``finalized``): UTC times, ISO 8601;
- ``counters`` (once finalized): the sums over shards of each shard record's counters.

Arrays: zarr format 2 (``.zarray`` + one file per chunk, ``dimension_separator`` ``"."``, C order,
``fill_value`` 0, blosc-lz4 compression with byte shuffle), written through tensorstore's
``zarr`` driver; open them with zarr-python or with tensorstore
(``{"driver": "zarr", "kvstore": {"driver": "file", "path": "STORE/token_ids"}}``). Chunks are
``[shard_size, k]``, ``[shard_size, D]`` and ``[shard_size]``, so each shard writes whole chunks of
its own and shards never share a chunk. While the store is incomplete the arrays' shape along
rows is the upper bound ``MAX_ROWS`` = 2**40 (chunks of unwritten shards are simply absent);
finalize sets it to N. The last shard's chunk is written whole: its rows past N hold zeros.
A chunk whose values are all 0 may be absent (tensorstore does not store chunks equal to the
fill value; zarr readers give 0 for them).
``token_ids`` may hold -1 for "no token" (weight 0), e.g. for empty texts.

``flags`` bits: ``FLAG_TRUNCATED`` = 1 (text cut at max_length), ``FLAG_EMPTY`` = 2 (no tokens),
``FLAG_REPLACED`` = 4 (invalid UTF-8 bytes were replaced); other bits are 0.

Document ids: ``ids/shard-NNNNNN.jsonl`` is UTF-8 JSON Lines, each line one JSON string (any
Unicode, quotes and newlines escaped) terminated by ``\\n``; line j is the id of row
``shard_start + j``. U+0085, U+2028 and U+2029 are written as ``\\u`` escapes too, so ``\\n``
is the only line-break character in the file and any line splitter works. Concatenating the
shards' files in shard order gives the ids of rows 0..N-1. An id that is not valid Unicode
(a lone surrogate) is written with ASCII ``\\u`` escapes. (JSON Lines rather than a zarr
array: tensorstore's zarr v2 driver has no variable-length strings, and a plain text
file could not hold ids containing newlines; JSON Lines needs only a JSON parser, e.g.
``[json.loads(l) for l in open(f, encoding="utf-8")]``, ``jq``, or
``pandas.read_json(f, lines=True)``.)

``shards/shard-NNNNNN.json`` (a JSON object), written atomically (temporary file, fsync,
``os.replace``, fsync of the directory) only after the shard's array chunks (tensorstore
fsyncs each chunk) and its ids file are durably written:

- ``format_version``: 1; ``shard``: the index; ``row_start``, ``row_stop``, ``num_rows``;
- ``ids_file``: ``"ids/shard-NNNNNN.jsonl"``;
- ``sha256``: hex digests of the ids file's bytes (``"ids"``) and of each array's rows of this
  shard as little-endian C-order bytes (``"token_ids"``, ``"token_weights"``, ``"dense"`` when
  present, ``"lengths"``, ``"flags"``);
- ``counters``: ``docs``, ``tokens`` (sum of lengths), ``truncated``, ``empty``, ``replaced``
  (counted from ``flags``), overridden or extended by the counters the job passes;
- ``written`` (UTC time) and ``host``: informational.

Crash safety and resume: a shard is done exactly when its record exists. A resumed run skips
recorded shards and redoes the others; a redone shard rewrites whole chunks (padded with zeros to
``shard_size`` rows) and its whole ids file, so whatever a killed run left there is replaced and
the store ends byte-identical to an uninterrupted run. Several processes may write one store, each
owning whole shards: a shard writes only its own chunks, ids file and record; shared metadata
(``manifest.json``, ``.zarray``) is written only at create (idempotently) and at finalize (by one
process, after every writer is done).

Reading: :func:`open` refuses an incomplete store unless ``allow_incomplete=True``, which shows
its leading recorded shards (0, 1, ... up to the first shard without a record).
:meth:`Store.verify` recomputes every shard's checksums.
"""
from __future__ import annotations

import builtins
import datetime as _dt
import hashlib
import json
import os
import re
import socket
import sys
import uuid
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import tensorstore as ts

__all__ = [
    "FORMAT_VERSION", "MAX_ROWS", "FLAG_TRUNCATED", "FLAG_EMPTY", "FLAG_REPLACED", "KNOWN_FLAGS",
    "StoreError", "StoreMismatchError", "StoreIncompleteError", "ShardExistsError",
    "StoreWriter", "Store", "open",
]

FORMAT_VERSION = 1
MAX_ROWS = 2 ** 40  # row bound of the arrays while a store is incomplete

FLAG_TRUNCATED = 1  # the text was cut at max_length
FLAG_EMPTY = 2  # the text had no tokens
FLAG_REPLACED = 4  # invalid UTF-8 bytes in the text were replaced
KNOWN_FLAGS = FLAG_TRUNCATED | FLAG_EMPTY | FLAG_REPLACED

MANIFEST = "manifest.json"
IDS_DIR = "ids"
SHARDS_DIR = "shards"
ARRAYS = ("token_ids", "token_weights", "dense", "lengths", "flags")
_DTYPES = {"token_ids": "<i4", "token_weights": "<f4", "dense": "<f4", "lengths": "<i4",
           "flags": "|u1"}
_COMPRESSOR = {"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1, "blocksize": 0}
_SHARD_RE = re.compile(r"^shard-(\d{6,})\.json$")


class StoreError(Exception):
    """A store is missing, malformed, or used in a way its state does not allow."""


class StoreMismatchError(StoreError, ValueError):
    """An existing store was written with other settings than the ones a run resumes it with."""


class StoreIncompleteError(StoreError):
    """The store has not been finalized (pass ``allow_incomplete=True`` to read what is done)."""


class ShardExistsError(StoreError):
    """The shard already has a record: it is finished and must not be written again."""


# ----------------------------------------------------------------------------- small helpers

def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _package_version() -> str:
    pkg = sys.modules.get("keytok_jax")
    version = getattr(pkg, "__version__", None)
    if version:
        return version
    try:
        from importlib.metadata import version as _v

        return _v("keytok_jax")
    except Exception:  # noqa: BLE001 - metadata absent (store.py used on its own)
        return "unknown"


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _write_tmp(path: Path, data: bytes) -> Path:
    tmp = _tmp_path(path)
    with builtins.open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` holds either its old content or all of ``data``."""
    tmp = _write_tmp(path, data)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _remove_stale_tmps(directory: Path, name: str) -> None:
    for p in directory.glob(f".{name}.*.tmp"):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _normalize_json(obj: Any, what: str) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists...), so comparisons are stable."""
    try:
        return json.loads(json.dumps(obj, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} must be JSON-serialisable (finite numbers, str keys): {e}") from None


_LINE_BREAKS = {"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def encode_ids(ids: Iterable[str]) -> bytes:
    """The bytes of an ids file: one JSON string per line, ``\\n`` the only line break."""
    lines = []
    for j, s in enumerate(ids):
        if not isinstance(s, str):
            raise TypeError(f"document id {j} is {type(s).__name__}, not str: {s!r}")
        line = json.dumps(s, ensure_ascii=False)
        for ch, esc in _LINE_BREAKS.items():
            line = line.replace(ch, esc)
        try:
            lines.append(line.encode("utf-8"))
        except UnicodeEncodeError:  # lone surrogates: keep them as \\udxxx escapes
            lines.append(json.dumps(s, ensure_ascii=True).encode("ascii"))
    return b"".join(line + b"\n" for line in lines)


def decode_ids(data: bytes, where: str = "ids file") -> list[str]:
    text = data.decode("utf-8")
    if text and not text.endswith("\n"):
        raise StoreError(f"{where}: last line is not terminated (truncated file?)")
    out = []
    for n, line in enumerate(text.split("\n")[:-1], 1):
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise StoreError(f"{where}, line {n}: not JSON: {e}") from None
        if not isinstance(value, str):
            raise StoreError(f"{where}, line {n}: expected a JSON string, got {line[:80]}")
        out.append(value)
    return out


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _array_spec(path: Path, name: str, *, shape=None, chunks=None) -> dict:
    spec: dict = {"driver": "zarr", "kvstore": {"driver": "file", "path": str(path / name)}}
    if shape is not None:
        spec["metadata"] = {
            "shape": list(shape), "chunks": list(chunks), "dtype": _DTYPES[name],
            "fill_value": 0, "order": "C", "filters": None, "compressor": dict(_COMPRESSOR),
            "dimension_separator": ".",
        }
    return spec


def _read_manifest(path: Path) -> dict:
    mpath = path / MANIFEST
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StoreError(f"{path} is not a keytok_jax store: {MANIFEST} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{mpath}: unreadable manifest: {e}") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise StoreError(f"{mpath}: format_version {version!r}; this keytok_jax reads "
                         f"format_version {FORMAT_VERSION}")
    return manifest


def _list_records(path: Path) -> dict[int, Path]:
    sdir = path / SHARDS_DIR
    out = {}
    if sdir.is_dir():
        for p in sdir.iterdir():
            m = _SHARD_RE.match(p.name)
            if m:
                out[int(m.group(1))] = p
    return out


def _load_record(p: Path) -> dict:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{p}: unreadable shard record: {e}") from None


def _array_names(dim) -> list[str]:
    return [n for n in ARRAYS if n != "dense" or dim is not None]


# ----------------------------------------------------------------------------- writer

class StoreWriter:
    """Writes a store shard by shard; see the module docstring for the layout and guarantees.

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
        for name, value, low in (("k", k, 1), ("vocab_size", vocab_size, 1),
                                 ("shard_size", shard_size, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, (int, np.integer))
                                or dim < 1):
            raise ValueError(f"dim must be a positive int or None, got {dim!r}")
        if not isinstance(settings, Mapping):
            raise TypeError(f"settings must be a dict, got {type(settings).__name__}")
        k, vocab_size, shard_size = int(k), int(vocab_size), int(shard_size)
        dim = None if dim is None else int(dim)
        settings = _normalize_json(dict(settings), "settings")

        new = {
            "format_version": FORMAT_VERSION,
            "keytok_jax_version": _package_version(),
            "settings": settings,
            "vocab_size": vocab_size,
            "k": k,
            "dim": dim,
            "shard_size": shard_size,
            "num_rows": None,
            "num_shards": None,
            "complete": False,
            "created": _now(),
        }
        mpath = path / MANIFEST
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path} exists and is not a directory")
        if not mpath.exists():
            if path.is_dir():
                foreign = [p.name for p in path.iterdir()
                           if not (p.name.startswith(f".{MANIFEST}.") and p.name.endswith(".tmp"))]
                if foreign:
                    raise StoreError(f"{path} exists, is not empty and has no {MANIFEST}: not a "
                                     f"keytok_jax store (found {sorted(foreign)[:5]})")
            path.mkdir(parents=True, exist_ok=True)
            tmp = _write_tmp(mpath, _json_bytes(new))
            try:
                os.link(tmp, mpath)  # atomic and never clobbers a concurrent creator's manifest
                _fsync_dir(path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        manifest = _read_manifest(path)
        _check_same(path, manifest, new)

        arrays = {}
        for name in _array_names(dim):
            arrays[name] = _open_or_create_array(path, name, manifest)
        (path / IDS_DIR).mkdir(exist_ok=True)
        (path / SHARDS_DIR).mkdir(exist_ok=True)
        return cls(path, manifest, arrays)

    # -- state

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def done_shards(self) -> set[int]:
        """Indices of the shards that have a record (finished, by this or any other process)."""
        return set(_list_records(self.path))

    def shard_rows(self, shard_index: int) -> tuple[int, int]:
        """The row range ``[start, start + shard_size)`` that shard ``shard_index`` may occupy."""
        start = shard_index * self.shard_size
        return start, start + self.shard_size

    # -- writing

    def write_shard(self, shard_index: int, ids, token_ids, token_weights, lengths, flags,
                    dense=None, *, counters: Mapping[str, Any] | None = None) -> dict:
        """Write shard ``shard_index`` (rows ``shard_index * shard_size`` onward) and its record.

        ``ids``: list of n document ids (1 <= n <= shard_size; only the last shard may be short);
        ``token_ids`` [n, k] integers in [-1, vocab_size); ``token_weights`` [n, k] finite floats;
        ``lengths`` [n] non-negative integers; ``flags`` [n] FLAG_* bits; ``dense`` [n, dim]
        finite floats, required exactly when the store has ``dim``; ``counters``: the job's
        per-shard counts (docs, tokens, truncated, empty, replaced, ...), merged over the ones
        derived from ``lengths`` and ``flags``. Partial data of an unrecorded shard is overwritten;
        a recorded shard raises :class:`ShardExistsError`. Returns the record.
        """
        if self.complete:
            raise StoreError(f"{self.path} is finalized; it takes no more shards")
        if isinstance(shard_index, bool) or not isinstance(shard_index, (int, np.integer)) \
                or shard_index < 0:
            raise ValueError(f"shard_index must be a non-negative int, got {shard_index!r}")
        shard_index = int(shard_index)
        name = shard_name(shard_index)
        record_path = self.path / SHARDS_DIR / f"{name}.json"
        if record_path.exists():
            raise ShardExistsError(f"shard {shard_index} of {self.path} is already recorded "
                                   f"({record_path}); finished shards are never rewritten")
        start, stop_max = self.shard_rows(shard_index)
        if stop_max > MAX_ROWS:
            raise StoreError(f"shard {shard_index} ends past the row bound {MAX_ROWS}")

        ids = list(ids)
        n = len(ids)
        if not 1 <= n <= self.shard_size:
            raise ValueError(f"shard {shard_index}: {n} ids; a shard holds 1 to "
                             f"{self.shard_size} rows")
        data = self._check_arrays(shard_index, n, token_ids, token_weights, lengths, flags, dense)
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
        ids_bytes = encode_ids(ids)

        ids_dir, shards_dir = self.path / IDS_DIR, self.path / SHARDS_DIR
        _remove_stale_tmps(ids_dir, f"{name}.jsonl")
        _remove_stale_tmps(shards_dir, f"{name}.json")

        # 1. array data: whole chunks, padded with the fill value past row n, so a redo replaces
        #    everything a killed attempt may have left (tensorstore fsyncs each chunk file).
        futures = []
        for key, arr in data.items():
            padded = np.zeros((self.shard_size,) + arr.shape[1:], dtype=arr.dtype)
            padded[:n] = arr
            futures.append(self._arrays[key][start:stop_max].write(padded))
        for f in futures:
            f.result()
        # 2. ids, atomically.
        _atomic_write(ids_dir / f"{name}.jsonl", ids_bytes)
        # 3. the record, atomically, last: its presence means the shard is complete.
        record = {
            "format_version": FORMAT_VERSION,
            "shard": shard_index,
            "row_start": start,
            "row_stop": start + n,
            "num_rows": n,
            "ids_file": f"{IDS_DIR}/{name}.jsonl",
            "sha256": {"ids": hashlib.sha256(ids_bytes).hexdigest(),
                       **{key: _digest(arr) for key, arr in data.items()}},
            "counters": derived,
            "written": _now(),
            "host": socket.gethostname(),
        }
        _atomic_write(record_path, _json_bytes(record))
        return record

    def _check_arrays(self, shard_index, n, token_ids, token_weights, lengths, flags, dense):
        where = f"shard {shard_index}"

        def as_array(value, name, shape):
            a = np.asarray(value)
            if a.dtype.kind in "OSUcb" or a.dtype.kind == "V" and a.dtype.names:
                raise TypeError(f"{where}: {name} has dtype {a.dtype}")
            if a.shape != shape:
                raise ValueError(f"{where}: {name} has shape {a.shape}, expected {shape}")
            return a

        def as_int(value, name, shape, low, high, dtype):
            a = as_array(value, name, shape)
            if a.dtype.kind not in "iu":
                raise TypeError(f"{where}: {name} must be integers, got dtype {a.dtype}")
            if a.size and (a.min() < low or a.max() >= high):
                raise ValueError(f"{where}: {name} out of range [{low}, {high}): "
                                 f"min {a.min()}, max {a.max()}")
            return a.astype(dtype)

        def as_float(value, name, shape):
            a = as_array(value, name, shape).astype(np.float32)
            if not np.isfinite(a).all():
                raise ValueError(f"{where}: {name} has NaN or infinite values")
            return a

        data = {
            "token_ids": as_int(token_ids, "token_ids", (n, self.k), -1, self.vocab_size,
                                np.dtype("<i4")),
            "token_weights": as_float(token_weights, "token_weights", (n, self.k)),
        }
        if self.dim is not None:
            if dense is None:
                raise ValueError(f"{where}: the store has dim={self.dim}; dense is required")
            data["dense"] = as_float(dense, "dense", (n, self.dim))
        elif dense is not None:
            raise ValueError(f"{where}: the store was created without dense vectors (dim=None)")
        data["lengths"] = as_int(lengths, "lengths", (n,), 0, 2 ** 31, np.dtype("<i4"))
        data["flags"] = as_int(flags, "flags", (n,), 0, 256, np.dtype("u1"))
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
        if isinstance(num_shards, bool) or not isinstance(num_shards, (int, np.integer)) \
                or num_shards < 0:
            raise ValueError(f"num_shards must be a non-negative int, got {num_shards!r}")
        num_shards = int(num_shards)
        current = _read_manifest(self.path)
        if current.get("complete"):
            if current.get("num_shards") != num_shards:
                raise StoreError(f"{self.path} is already finalized with "
                                 f"{current.get('num_shards')} shards, not {num_shards}")
            self.manifest = current
            return current

        records = _list_records(self.path)
        missing = [i for i in range(num_shards) if i not in records]
        if missing:
            shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
            raise StoreError(f"cannot finalize {self.path}: {len(missing)} of {num_shards} shards "
                             f"have no record: {shown}")
        extra = sorted(i for i in records if i >= num_shards)
        if extra:
            raise StoreError(f"cannot finalize {self.path} with {num_shards} shards: shards "
                             f"{extra[:20]} are recorded too")
        num_rows = 0
        totals: dict[str, Any] = {}
        for i in range(num_shards):
            rec = _load_record(records[i])
            n = rec.get("num_rows")
            if rec.get("shard") != i or rec.get("row_start") != i * self.shard_size \
                    or not isinstance(n, int) or rec.get("row_stop") != rec["row_start"] + n:
                raise StoreError(f"{records[i]}: inconsistent record (shard/row range)")
            if i < num_shards - 1 and n != self.shard_size:
                raise StoreError(f"cannot finalize {self.path}: shard {i} has {n} rows but only "
                                 f"the last shard ({num_shards - 1}) may hold fewer than "
                                 f"{self.shard_size}")
            if not (self.path / rec["ids_file"]).is_file():
                raise StoreError(f"{records[i]}: its ids file {rec['ids_file']} is missing")
            num_rows += n
            for key, value in rec.get("counters", {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    totals[key] = totals.get(key, 0) + value

        for name, arr in self._arrays.items():
            self._arrays[name] = arr.resize(exclusive_max=[num_rows] + [None] * (arr.rank - 1),
                                            resize_metadata_only=True).result()
        manifest = dict(current)
        manifest.update(num_rows=num_rows, num_shards=num_shards, complete=True,
                        finalized=_now(), counters=totals)
        _atomic_write(self.path / MANIFEST, _json_bytes(manifest))
        self.manifest = manifest
        return manifest


def _check_same(path: Path, old: dict, new: dict) -> None:
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


def _open_or_create_array(path: Path, name: str, manifest: dict) -> ts.TensorStore:
    k, dim, shard_size = manifest["k"], manifest["dim"], manifest["shard_size"]
    width = {"token_ids": [k], "token_weights": [k], "dense": [dim]}.get(name, [])
    spec = _array_spec(path, name, shape=[MAX_ROWS] + width, chunks=[shard_size] + width)
    try:
        arr = ts.open(_array_spec(path, name), open=True, read=True, write=True).result()
    except ValueError as e:  # NOT_FOUND: create (idempotent when several processes race)
        if "NOT_FOUND" not in str(e):
            raise StoreError(f"{path / name}: cannot open the zarr array: {e}") from None
        arr = ts.open(spec, create=True, open=True).result()
    expected = spec["metadata"]
    chunks = list(arr.chunk_layout.write_chunk.shape)
    if (arr.dtype.numpy_dtype != np.dtype(expected["dtype"]) or chunks != expected["chunks"]
            or list(arr.shape[1:]) != width):
        raise StoreError(f"{path / name}: array has dtype {arr.dtype.numpy_dtype}, chunks {chunks}, "
                         f"shape {list(arr.shape)}; the manifest calls for dtype "
                         f"{np.dtype(expected['dtype'])}, chunks {expected['chunks']}, "
                         f"shape [rows] + {width}")
    if not manifest.get("complete") and arr.shape[0] != MAX_ROWS:
        # A finalize was interrupted after resizing: give the rows their bound back.
        arr = arr.resize(exclusive_max=[MAX_ROWS] + [None] * len(width),
                         resize_metadata_only=True).result()
    return arr


# ----------------------------------------------------------------------------- reader

class Store:
    """A store opened for reading (see :func:`open`).

    ``token_ids``, ``token_weights``, ``dense`` (None without dense vectors), ``lengths`` and
    ``flags`` are lazy ``tensorstore.TensorStore`` arrays of exactly ``len(store)`` rows:
    slice them, then ``.read().result()`` for numpy. ``ids`` (list of str) is read on first use.
    """

    def __init__(self, path, *, allow_incomplete: bool = False):
        self.path = Path(path)
        self.manifest: dict = _read_manifest(self.path)
        records = _list_records(self.path)
        self._record_paths = records
        self.complete = bool(self.manifest.get("complete"))
        if self.complete:
            self.num_shards = int(self.manifest["num_shards"])
            self.num_rows = int(self.manifest["num_rows"])
            missing = [i for i in range(self.num_shards) if i not in records]
            if missing:
                raise StoreError(f"{self.path}: manifest says complete but shard records "
                                 f"{missing[:20]} are missing")
        else:
            if not allow_incomplete:
                raise StoreIncompleteError(
                    f"{self.path} is incomplete (not finalized; {len(records)} shards recorded); "
                    f"pass allow_incomplete=True to read its leading finished shards")
            # An incomplete store shows its longest run of recorded shards from shard 0.
            num_shards = 0
            while num_shards in records:
                num_shards += 1
            self.num_shards = num_shards
            self.num_rows = sum(self._record(i)["num_rows"] for i in range(num_shards))

        self.settings: dict = self.manifest["settings"]
        self.k: int = self.manifest["k"]
        self.dim: int | None = self.manifest["dim"]
        self.vocab_size: int = self.manifest["vocab_size"]
        self.shard_size: int = self.manifest["shard_size"]
        arrays = {}
        for name in _array_names(self.dim):
            try:
                arr = ts.open(_array_spec(self.path, name), open=True, read=True).result()
            except ValueError as e:
                raise StoreError(f"{self.path / name}: cannot open the zarr array: {e}") from None
            if arr.shape[0] < self.num_rows:
                raise StoreError(f"{self.path / name}: {arr.shape[0]} rows, expected "
                                 f"{self.num_rows}")
            arrays[name] = arr[: self.num_rows]
        self.token_ids: ts.TensorStore = arrays["token_ids"]
        self.token_weights: ts.TensorStore = arrays["token_weights"]
        self.dense: ts.TensorStore | None = arrays.get("dense")
        self.lengths: ts.TensorStore = arrays["lengths"]
        self.flags: ts.TensorStore = arrays["flags"]
        self._arrays = arrays

    def __len__(self) -> int:
        return self.num_rows

    def __repr__(self) -> str:
        state = "complete" if self.complete else "incomplete"
        return (f"Store({str(self.path)!r}, {self.num_rows} rows, {self.num_shards} shards, "
                f"k={self.k}, dim={self.dim}, {state})")

    def _record(self, i: int) -> dict:
        return _load_record(self._record_paths[i])

    def shard_records(self) -> list[dict]:
        """The records of the shards this view covers, in shard order."""
        return [self._record(i) for i in range(self.num_shards)]

    def shard_ids(self, shard_index: int) -> list[str]:
        if not 0 <= shard_index < self.num_shards:
            raise IndexError(f"shard {shard_index} out of range [0, {self.num_shards})")
        rec = self._record(shard_index)
        p = self.path / rec["ids_file"]
        ids = decode_ids(p.read_bytes(), str(p))
        if len(ids) != rec["num_rows"]:
            raise StoreError(f"{p}: {len(ids)} ids, the shard record says {rec['num_rows']}")
        return ids

    @cached_property
    def ids(self) -> list[str]:
        out: list[str] = []
        for i in range(self.num_shards):
            out.extend(self.shard_ids(i))
        return out

    def verify(self) -> int:
        """Recompute every shard's checksums (ids file and array rows) against its record.

        Returns the number of shards checked; raises :class:`StoreError` listing every mismatch.
        """
        problems = []
        for i in range(self.num_shards):
            rec = self._record(i)
            start, stop = rec["row_start"], rec["row_stop"]
            sums = rec.get("sha256", {})
            ids_path = self.path / rec["ids_file"]
            try:
                got = hashlib.sha256(ids_path.read_bytes()).hexdigest()
            except FileNotFoundError:
                got = "<missing>"
            if got != sums.get("ids"):
                problems.append(f"shard {i}: ids file {rec['ids_file']} checksum mismatch")
            for name, arr in self._arrays.items():
                if _digest(arr[start:stop].read().result()) != sums.get(name):
                    problems.append(f"shard {i}: {name} rows [{start}, {stop}) checksum mismatch")
        if problems:
            raise StoreError(f"{self.path}: {len(problems)} checksum problems:\n  "
                             + "\n  ".join(problems))
        return self.num_shards


def open(path, *, allow_incomplete: bool = False) -> Store:  # noqa: A001 - keytok_jax.store.open
    """Open the store at ``path`` for reading. An incomplete (not finalized) store raises
    :class:`StoreIncompleteError` unless ``allow_incomplete=True``, which gives a view of its
    leading recorded shards (0, 1, ... up to the first one without a record)."""
    return Store(path, allow_incomplete=allow_incomplete)
