"""Reading a store: :func:`open` gives a :class:`Store` whose arrays are lazy tensorstore views of
exactly the rows its shard records vouch for, and :meth:`Store.verify` checks every shard against
its record (ids file, chunks present and readable, checksums), reporting every problem."""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

import tensorstore as ts

from .check import Problem, data_problems
from .errors import StoreDamagedError, StoreError, StoreIncompleteError
from .format import (array_names, array_spec, decode_ids, list_records, load_record,
                     read_attachment, read_manifest)
from .lock import describe_holder, read_holder

__all__ = ["Store", "open"]


class Store:
    """A store opened for reading (see :func:`open`).

    ``token_ids``, ``token_weights``, ``dense`` (None without dense vectors), ``lengths`` and
    ``flags`` are lazy ``tensorstore.TensorStore`` arrays of exactly ``len(store)`` rows:
    slice them, then ``.read().result()`` for numpy. ``ids`` (list of str) is read on first use.
    """

    def __init__(self, path, *, allow_incomplete: bool = False):
        self.path = Path(path)
        self.manifest: dict = read_manifest(self.path)
        self._record_paths = list_records(self.path)
        self.complete = bool(self.manifest.get("complete"))
        if self.complete:
            self.num_shards = int(self.manifest["num_shards"])
            self.num_rows = int(self.manifest["num_rows"])
            missing = [i for i in range(self.num_shards) if i not in self._record_paths]
            if missing:
                raise StoreError(f"{self.path}: manifest says complete but shard records "
                                 f"{missing[:20]} are missing")
        else:
            if not allow_incomplete:
                raise StoreIncompleteError(_incomplete_message(self.path,
                                                               len(self._record_paths)))
            self.num_shards = self._leading_shards()
            self.num_rows = sum(self._record(i)["num_rows"] for i in range(self.num_shards))

        self.settings: dict = self.manifest["settings"]
        self.k: int = self.manifest["k"]
        self.dim: int | None = self.manifest["dim"]
        self.vocab_size: int = self.manifest["vocab_size"]
        self.shard_size: int = self.manifest["shard_size"]
        self._arrays = self._open_arrays()
        self.token_ids: ts.TensorStore = self._arrays["token_ids"]
        self.token_weights: ts.TensorStore = self._arrays["token_weights"]
        self.dense: ts.TensorStore | None = self._arrays.get("dense")
        self.lengths: ts.TensorStore = self._arrays["lengths"]
        self.flags: ts.TensorStore = self._arrays["flags"]

    def attachment(self, name: str) -> dict | None:
        """The store's attachment ``name`` (e.g. ``correction_fit``), or None."""
        return read_attachment(self.path, name)

    def _leading_shards(self) -> int:
        """How many shards from shard 0 on are recorded: what an incomplete store shows."""
        num_shards = 0
        while num_shards in self._record_paths:
            num_shards += 1
        return num_shards

    def _open_arrays(self) -> dict[str, ts.TensorStore]:
        arrays = {}
        for name in array_names(self.dim):
            try:
                arr = ts.open(array_spec(self.path, name), open=True, read=True).result()
            except ValueError as e:
                raise StoreError(f"{self.path / name}: cannot open the zarr array: {e}") from None
            if arr.shape[0] < self.num_rows:
                raise StoreError(f"{self.path / name}: {arr.shape[0]} rows, expected "
                                 f"{self.num_rows}")
            arrays[name] = arr[: self.num_rows]
        return arrays

    def __len__(self) -> int:
        return self.num_rows

    def __repr__(self) -> str:
        state = "complete" if self.complete else "incomplete"
        return (f"Store({str(self.path)!r}, {self.num_rows} rows, {self.num_shards} shards, "
                f"k={self.k}, dim={self.dim}, {state})")

    def _record(self, i: int) -> dict:
        return load_record(self._record_paths[i])

    def shard_records(self) -> list[dict]:
        """The records of the shards this view covers, in shard order."""
        return [self._record(i) for i in range(self.num_shards)]

    def shard_ids(self, shard_index: int) -> list[str]:
        if not 0 <= shard_index < self.num_shards:
            raise IndexError(f"shard {shard_index} out of range [0, {self.num_shards})")
        rec = self._record(shard_index)
        p = self.path / rec.get("ids_file", "")
        try:
            data = p.read_bytes()
        except OSError as e:
            raise StoreError(f"{p}: cannot read the ids of shard {shard_index}: "
                             f"{e.strerror or e}") from None
        ids = decode_ids(data, str(p))
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
        """Check every shard against its record: its ids file and each array's chunk present,
        readable and hashing to the record's checksums. Returns the number of shards checked;
        raises :class:`StoreDamagedError` listing every problem (one line per shard and array)."""
        problems = self.problems()
        if problems:
            lines = [str(p) for p in problems]
            raise StoreDamagedError(f"{self.path}: {len(problems)} problems:\n  "
                                    + "\n  ".join(lines), problems)
        return self.num_shards

    def problems(self) -> list[Problem]:
        """Every problem :meth:`verify` finds, shard by shard (empty: the store is sound)."""
        problems = []
        for i in range(self.num_shards):
            try:
                record = self._record(i)
            except StoreError as e:
                problems.append(Problem(i, "damaged", str(e)))
                continue
            problems.extend(data_problems(self.path, i, record, self._arrays))
        return problems


def _incomplete_message(path: Path, recorded: int) -> str:
    holder = read_holder(path)
    state = (f"a job is writing it ({describe_holder(holder)})" if holder else
             "its embedding job was stopped before the end")
    return (f"{path} is incomplete: {recorded} shards are recorded but the store is not "
            f"finalized ({state}). Rerun the same `python -m keytok_jax.embed` command to finish "
            f"it; from Python, keytok_jax.store.open(path, allow_incomplete=True) reads its leading "
            f"finished shards")


def open(path, *, allow_incomplete: bool = False) -> Store:  # noqa: A001 - keytok_jax.store.open
    """Open the store at ``path`` for reading. An incomplete (not finalized) store raises
    :class:`StoreIncompleteError` unless ``allow_incomplete=True``, which gives a view of its
    leading recorded shards (0, 1, ... up to the first one without a record)."""
    return Store(path, allow_incomplete=allow_incomplete)
