"""On-disk store of sparse token vectors (and optional dense embeddings), format version 1.

This module is the format's specification, with its constants and codecs. The embedding job
writes a store shard by shard through :class:`keytok_jax.store.StoreWriter`; read it back with
:func:`keytok_jax.store.open`. Every file is a plain format (JSON, JSON Lines, zarr v2), so the
store is readable without keytok_jax.

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
      .lock                      only while a job writes the store: who holds it (see below)
      correction_fit.json        attachments: JSON objects the job's settings refer to (here the
                                 corpus statistics of the sparse correction, written before the
                                 first shard; the settings hold its fingerprint), see attachment_path

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
- ``input_sha256`` and ``input_rows`` (written by the embedding job; absent from records written
  before them or through :class:`~keytok_jax.store.StoreWriter` without ``input=``): the
  fingerprint of the shard's input rows, which a resumed job compares with its own read of the
  input before it reuses the shard. Each row's digest is
  ``sha256(ID_LINE + sha256(TEXT) + FLAGS)``, where ``ID_LINE`` is the row's line of the ids
  file (its bytes, ``\n`` included), ``TEXT`` the document's text as the reader gave it, before
  any prompt (UTF-8; lone surrogates as ``surrogatepass``), and ``FLAGS`` one byte, the reader's
  flags (``FLAG_REPLACED``, ``FLAG_EMPTY``). ``input_sha256`` is the hex sha256 of the row
  digests concatenated in row order; ``input_rows`` is the first 4 bytes of each row digest in
  hex, in row order (8 characters per row), so a changed input is reported at its first
  differing row (see :func:`input_fingerprint`);
- ``written`` (UTC time) and ``host``: informational.

Crash safety and resume: a shard is done exactly when its record exists. A resumed run redoes
the shards without a record; a redone shard rewrites whole chunks (padded with zeros to
``shard_size`` rows) and its whole ids file, so whatever a killed run left there is replaced and
the store ends byte-identical to an uninterrupted run. A recorded shard is reused only after two
checks (:meth:`~keytok_jax.store.StoreWriter.reuse_problems`): its input rows are the ones the
new run reads (``input_sha256``; a record without one is not trusted), and its chunks and ids file
still hash to the record's ``sha256``. A shard failing either is refused, or, when the caller
asks, forgotten (:meth:`~keytok_jax.store.StoreWriter.discard_shard` removes its record, reopening
a finalized store) and written again; records past the end of a shrunk input are dropped the same
way (:meth:`~keytok_jax.store.StoreWriter.drop_shards_from`). Finalize removes the ids files and
chunks of unrecorded shards past the last one. Several processes may write one store, each
owning whole shards: a shard writes only its own chunks, ids file and record; shared metadata
(``manifest.json``, ``.zarray``) is written only at create (idempotently), at finalize (by one
process, after every writer is done) and when a finalized store is reopened.

One writer per store: the embedding job holds ``STORE/.lock`` while it runs (a JSON object:
``pid``, ``host``, ``started``, ``command``), created with its content in place by ``link`` and
locked with ``flock`` (:class:`keytok_jax.store.StoreLock`); a second job fails naming the holder.
A lock left by a process that died on the same host is taken over; one naming another host is
refused until it is deleted by hand. In a multi-process job, process 0 holds it for all. The lock
file is removed when the job ends, so a finished store has none.

Reading: :func:`keytok_jax.store.open` refuses an incomplete store unless ``allow_incomplete=True``,
which shows its leading recorded shards (0, 1, ... up to the first shard without a record).
:meth:`keytok_jax.store.Store.verify` rechecks every shard against its record (ids file, chunks
present and readable, checksums) and raises one :class:`~keytok_jax.store.StoreDamagedError`
listing every problem; :meth:`~keytok_jax.store.Store.problems` returns them.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..records import FLAG_EMPTY, FLAG_REPLACED, FLAG_TRUNCATED, KNOWN_FLAGS
from .errors import StoreError

__all__ = [
    "FORMAT_VERSION", "MAX_ROWS", "FLAG_TRUNCATED", "FLAG_EMPTY", "FLAG_REPLACED", "KNOWN_FLAGS",
    "MANIFEST", "IDS_DIR", "SHARDS_DIR", "ARRAYS", "DTYPES", "COMPRESSOR", "shard_name",
    "encode_ids", "decode_ids", "digest", "array_spec", "array_names", "read_manifest",
    "list_records", "load_record", "now", "chunk_file", "chunk_shard", "row_digest",
    "input_fingerprint", "LOCK",
]

FORMAT_VERSION = 1
MAX_ROWS = 2 ** 40  # row bound of the arrays while a store is incomplete

MANIFEST = "manifest.json"
LOCK = ".lock"
IDS_DIR = "ids"
SHARDS_DIR = "shards"
ARRAYS = ("token_ids", "token_weights", "dense", "lengths", "flags")
DTYPES = {"token_ids": "<i4", "token_weights": "<f4", "dense": "<f4", "lengths": "<i4",
          "flags": "|u1"}
COMPRESSOR = {"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1, "blocksize": 0}
_SHARD_RE = re.compile(r"^shard-(\d{6,})\.json$")
_CHUNK_RE = re.compile(r"^(\d+)(?:\.0)?$")
_LINE_BREAKS = {"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def now() -> str:
    """The UTC time as the manifest and shard records write it."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def array_names(dim: int | None) -> list[str]:
    """The arrays a store holds: ``dense`` only when it has a dense dimension."""
    return [n for n in ARRAYS if n != "dense" or dim is not None]


# ----------------------------------------------------------------------------- document ids

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
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StoreError(f"{where}: not UTF-8: {e}") from None
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


# ----------------------------------------------------------------------------- input identity

def row_digest(doc_id: str, text: str, flags: int) -> bytes:
    """The 32-byte digest of one input row: its id line, its text's sha256, the reader's flags."""
    text_sum = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    return hashlib.sha256(encode_ids([doc_id]) + text_sum + bytes([int(flags) & 0xFF])).digest()


def input_fingerprint(ids: Sequence[str], texts: Sequence[str], flags: Sequence[int]) -> dict:
    """The record keys ``input_sha256`` and ``input_rows`` of a shard's input rows (ids, the texts
    as read, the reader's flags), in row order."""
    if not len(ids) == len(texts) == len(flags):
        raise ValueError(f"input_fingerprint: {len(ids)} ids, {len(texts)} texts and "
                         f"{len(flags)} flags")
    rows = [row_digest(i, t, f) for i, t, f in zip(ids, texts, flags)]
    return {"input_sha256": hashlib.sha256(b"".join(rows)).hexdigest(),
            "input_rows": "".join(r[:4].hex() for r in rows)}


# ----------------------------------------------------------------------------- arrays

def digest(a: np.ndarray) -> str:
    """The checksum a shard record keeps of an array's rows (little-endian C-order bytes)."""
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def chunk_file(name: str, shard_index: int, rank: int) -> str:
    """The chunk of array ``name`` (of ``rank`` dimensions) that holds shard ``shard_index``'s rows,
    relative to the store: ``token_ids/42.0``, ``lengths/42``."""
    return f"{name}/{shard_index}" + (".0" if rank == 2 else "")


def chunk_shard(file_name: str) -> int | None:
    """The shard whose rows a chunk file of an array holds (None: not a chunk file)."""
    m = _CHUNK_RE.match(file_name)
    return int(m.group(1)) if m else None


def array_spec(path: Path, name: str, *, shape=None, chunks=None) -> dict:
    """The tensorstore spec of array ``name``; with ``shape`` and ``chunks``, the zarr metadata
    that creates it."""
    spec: dict = {"driver": "zarr", "kvstore": {"driver": "file", "path": str(path / name)}}
    if shape is not None:
        spec["metadata"] = {
            "shape": list(shape), "chunks": list(chunks), "dtype": DTYPES[name],
            "fill_value": 0, "order": "C", "filters": None, "compressor": dict(COMPRESSOR),
            "dimension_separator": ".",
        }
    return spec


# ----------------------------------------------------------------------------- manifest, records

def read_manifest(path: Path) -> dict:
    mpath = path / MANIFEST
    if path.exists() and not path.is_dir():
        raise StoreError(f"{path}: not a store (it is a file, not a directory)")
    try:
        manifest = _read_json_object(mpath, "manifest")
    except FileNotFoundError:
        if not path.exists():
            raise StoreError(f"{path}: no such store (the directory does not exist)") from None
        raise StoreError(f"{path} is not a keytok_jax store: {MANIFEST} not found") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise StoreError(f"{mpath}: format_version {version!r}; this keytok_jax reads "
                         f"format_version {FORMAT_VERSION}")
    return manifest


def list_records(path: Path) -> dict[int, Path]:
    """Shard index -> record file, for every shard recorded (that is, finished)."""
    sdir = path / SHARDS_DIR
    out = {}
    if sdir.is_dir():
        for p in sdir.iterdir():
            m = _SHARD_RE.match(p.name)
            if m:
                out[int(m.group(1))] = p
    return out


def _read_json_object(p: Path, what: str) -> dict:
    """The JSON object in ``p``; a missing file raises FileNotFoundError (each caller says what
    that means), anything else unreadable a StoreError naming ``what``."""
    try:
        value = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except OSError as e:
        raise StoreError(f"{p}: cannot read the {what}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{p}: unreadable {what}: {e}") from None
    if not isinstance(value, dict):
        raise StoreError(f"{p}: unreadable {what}: not a JSON object")
    return value


def attachment_path(path: Path, name: str) -> Path:
    """Where attachment ``name`` (a JSON object written with the store, e.g.
    ``correction_fit``) lives: ``STORE/NAME.json``."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"attachment names are lower-case identifiers, got {name!r}")
    return Path(path) / f"{name}.json"


def read_attachment(path: Path, name: str) -> dict | None:
    """Attachment ``name`` of the store at ``path``, or None when it has none."""
    try:
        return _read_json_object(attachment_path(path, name), f"{name} attachment")
    except FileNotFoundError:
        return None


def load_record(p: Path) -> dict:
    try:
        return _read_json_object(p, "shard record")
    except FileNotFoundError:
        raise StoreError(f"{p}: shard record not found") from None
