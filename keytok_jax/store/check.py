"""Checking a recorded shard against its record: its files (for :meth:`Store.verify` and before a
resumed job reuses it) and its input rows (against a resumed job's own read of the input).

Each check returns :class:`Problem` lines and never raises for a damaged shard: a missing,
unreadable or changed file is one problem of that shard and array, and the next is checked.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import tensorstore as ts

from .errors import StoreError
from .format import IDS_DIR, chunk_file, decode_ids, digest, shard_name

__all__ = ["Problem", "DAMAGED", "CHANGED", "UNVERIFIABLE", "data_problems", "input_problems"]

DAMAGED = "damaged"  # the shard's files do not match its record
CHANGED = "changed"  # the shard was written from other input rows
UNVERIFIABLE = "unverifiable"  # its record has no input fingerprint to compare with

ID_CHARS = 200  # ids longer than this are cut in messages


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one shard. ``row``: for a changed input, the first differing row's
    index inside the shard (None when it cannot be told)."""
    shard: int
    kind: str
    text: str
    row: int | None = None

    def __str__(self) -> str:
        return f"shard {self.shard}: {self.text}"


def _rows(record: Mapping, shard: int) -> tuple[int, int, dict]:
    """(row_start, row_stop, sha256 sums) of a record, once its keys make sense."""
    start, stop, sums = record.get("row_start"), record.get("row_stop"), record.get("sha256")
    if (not isinstance(start, int) or not isinstance(stop, int) or not 0 <= start < stop
            or not isinstance(sums, dict) or record.get("shard") != shard):
        raise StoreError("its record is inconsistent (shard, row range or sha256 missing)")
    return start, stop, sums


def _ids_file(record: Mapping, shard: int) -> str:
    name = record.get("ids_file")
    return name if isinstance(name, str) else f"{IDS_DIR}/{shard_name(shard)}.jsonl"


def _ids_problem(path: Path, record: Mapping, shard: int, expected) -> str | None:
    rel = _ids_file(record, shard)
    try:
        data = (path / rel).read_bytes()
    except FileNotFoundError:
        return f"ids file {rel} is missing"
    except OSError as e:
        return f"ids file {rel} is unreadable: {e.strerror or e}"
    if hashlib.sha256(data).hexdigest() != expected:
        return f"ids file {rel} does not match its checksum"
    return None


def _array_problem(path: Path, name: str, arr: ts.TensorStore, shard: int, start: int,
                   stop: int, expected) -> str | None:
    rel = chunk_file(name, shard, arr.rank)
    if not isinstance(expected, str):
        return f"{name}: the record has no checksum for it"
    try:
        got = digest(np.asarray(arr[start:stop].read().result()))
    except (ValueError, RuntimeError, OSError) as e:  # tensorstore: ValueError with a status
        return f"{name}: chunk {rel} is unreadable: {str(e).splitlines()[0][:300]}"
    if got == expected:
        return None  # (an absent chunk is legitimate when the shard's rows are all zero)
    if not (path / rel).exists():
        return f"{name}: chunk {rel} is missing"
    return f"{name}: rows [{start}, {stop}) in chunk {rel} do not match their checksum"


def data_problems(path: Path, shard: int, record: Mapping,
                  arrays: Mapping[str, ts.TensorStore]) -> list[Problem]:
    """Every way shard ``shard``'s ids file and array rows differ from its ``record``: a file
    missing or unreadable, or bytes that no longer hash to the record's ``sha256``."""
    try:
        start, stop, sums = _rows(record, shard)
    except StoreError as e:
        return [Problem(shard, DAMAGED, str(e))]
    texts = [_ids_problem(path, record, shard, sums.get("ids"))]
    texts += [_array_problem(path, name, arr, shard, start, stop, sums.get(name))
              for name, arr in arrays.items()]
    return [Problem(shard, DAMAGED, t) for t in texts if t is not None]


# ------------------------------------------------------------------ input identity

def _show(doc_id: str) -> str:
    return repr(doc_id if len(doc_id) <= ID_CHARS else doc_id[:ID_CHARS] + "...")


def _old_ids(path: Path, record: Mapping, shard: int) -> list[str] | None:
    """The ids the shard holds, or None when its ids file cannot be read."""
    try:
        return decode_ids((path / _ids_file(record, shard)).read_bytes())
    except (OSError, StoreError):
        return None


def _first_change(old_ids, old_rows: str, old_n: int, ids, new_rows: str,
                  start: int) -> tuple[int | None, str]:
    """(row inside the shard, description) of the first row where the shard and the input differ."""
    for j in range(max(old_n, len(ids))):
        where = f"row {start + j}"
        if j >= old_n:
            return j, (f"{where}: the input now has id {_show(ids[j])} there, past the "
                       f"{old_n} rows the shard was written with")
        old_id = old_ids[j] if old_ids is not None and j < len(old_ids) else None
        if j >= len(ids):
            held = f"id {_show(old_id)}" if old_id is not None else "a row"
            return j, (f"{where}: the shard holds {held} there, the input now ends the shard "
                       f"after {len(ids)} rows")
        if old_id is not None and old_id != ids[j]:
            return j, f"{where}: the shard holds id {_show(old_id)}, the input now has {_show(ids[j])}"
        old_row = old_rows[8 * j: 8 * j + 8]
        if old_row and old_row != new_rows[8 * j: 8 * j + 8]:
            return j, f"{where} (id {_show(ids[j])}): its text (or its reader flags) changed"
    return None, "its input rows differ from the fingerprint recorded (the row cannot be told)"


def input_problems(path: Path, shard: int, record: Mapping, ids, fingerprint: Mapping) -> list[Problem]:
    """Why shard ``shard`` does not hold the input rows of ``fingerprint`` (made by
    :func:`~keytok_jax.store.format.input_fingerprint` from ``ids`` and their texts and flags):
    [] when the record's ``input_sha256`` is the same; an unverifiable record when it has none."""
    old = record.get("input_sha256")
    if not isinstance(old, str):
        return [Problem(shard, UNVERIFIABLE, "its record has no fingerprint of its input rows "
                        "(written by an older keytok_jax?), so whether it holds this input "
                        "cannot be checked")]
    if old == fingerprint["input_sha256"]:
        return []
    old_rows = record.get("input_rows")
    old_rows = old_rows if isinstance(old_rows, str) else ""
    old_n = record.get("num_rows") if isinstance(record.get("num_rows"), int) else len(old_rows) // 8
    row, text = _first_change(_old_ids(path, record, shard), old_rows, old_n, list(ids),
                              fingerprint["input_rows"], int(record.get("row_start") or 0))
    return [Problem(shard, CHANGED, "the input changed since it was recorded: " + text, row)]
