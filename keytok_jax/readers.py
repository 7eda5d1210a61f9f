"""Streaming corpus readers for the embedding job (``python -m keytok_jax.embed --input PATH``).

:func:`read_corpus` yields one :class:`Doc` (``id``, ``text``, ``flags``, ``source``) per document,
in file order, without ever holding the file in memory; :func:`count_docs` is a cheap count for
progress bars.

Formats (``format="auto"`` picks from the path: a directory is ``beir``; the suffix ``.jsonl``,
``.json`` or ``.ndjson`` is ``jsonl``, ``.tsv`` is ``tsv``, ``.txt`` is ``txt``, ``.parquet`` or
``.pq`` is ``parquet``; ``jsonl``, ``tsv`` and ``txt`` may be gzip-compressed with a further
``.gz``):

- ``jsonl``: one JSON object per line. The id is the value of ``id_field`` (a string, or an integer
  which is converted with ``str``); the text is the values of ``text_fields`` that are present and
  not empty (nor whitespace only), in ``text_fields`` order, joined with a single space: with the
  defaults ``("title", "text")`` that is BEIR's ``title + " " + text`` convention, and a document
  without a title is just its text. A JSON ``null`` text value counts as empty. Other keys are
  ignored.
- ``beir``: a BEIR dataset directory; its ``corpus.jsonl`` (or ``corpus.jsonl.gz``) is read as
  ``jsonl`` with the same ``id_field``/``text_fields`` (whose defaults, ``_id`` and title + text,
  are BEIR's).
- ``tsv``: tab-separated, no quoting or escaping (fields are taken verbatim; a line ending ``\\r\\n``
  loses its ``\\r``).

  * **Header**: the first line is a header, and is skipped, when it has two or more columns and
    its first column is ``id``, ``_id``, ``docid``, ``doc_id`` or ``id_field`` (case-insensitive,
    surrounding spaces ignored). A document whose id is literally one of these on line 1 would be
    taken for a header.
  * **Columns**: without a header, every line must have exactly 2 columns, ``id<TAB>text``; any
    other count is bad input. A TSV has no escaping, so a third column usually means a tab inside
    a text (or a different layout): silently merging or dropping columns would hide that, so it is
    reported (and, with ``on_error="skip"``, written to the rejects file). With a header, every line
    must have as many columns as the header; a two-column header's second column is the text
    whatever its name, and with more columns the text is the columns named in ``text_fields``
    (in ``text_fields`` order, empty ones left out, joined with a space, as for jsonl), so
    ``id<TAB>title<TAB>text`` and DPR's ``id<TAB>text<TAB>title`` both give title + text. A header
    with more than two columns and none of them in ``text_fields`` raises :class:`CorpusError`.
- ``txt``: one text per line (verbatim, less its line ending); the id is the 1-based line number as
  a string. Blank lines are documents too (empty, flagged), so ids stay line numbers.
- ``parquet``: read with pyarrow record batch by record batch (memory is bounded by one row group),
  columns ``id_field`` (string or integer) and whichever of ``text_fields`` exist (string, binary
  or null type), joined as for jsonl; a null text is empty. A missing id column, no text column or
  a column of another type raises :class:`CorpusError` whatever ``on_error`` is (every row would
  fail). Sources and messages number rows from 1 where other formats number lines.

In ``jsonl`` and ``tsv``, blank (whitespace-only) lines are skipped silently. A UTF-8 byte order
mark at the start of the file is dropped.

Decoding and flags: each line is read as bytes and decoded on its own with
``errors="replace"``, so one bad byte costs one U+FFFD in one line and nothing else.
``Doc.flags`` gets :data:`keytok_jax.store.FLAG_REPLACED` when the line held invalid UTF-8 and the
document's text contains a U+FFFD (invalid bytes only in the id or in an ignored field do not
flag the text), and when a jsonl text held lone surrogates from ``\\ud800``-style escapes, which
are replaced by U+FFFD (a tokenizer cannot encode them). ``FLAG_EMPTY`` is set when the text is
empty or whitespace only; such documents are kept as rows. ``Doc.source`` is ``"FILE:LINE"``
(``FILE`` as the path was given, ``LINE`` 1-based).

Bad input: a malformed JSON line, a line that is not a JSON object, a missing id field, an id that
is null, empty or neither a string nor an integer, a record with none of the ``text_fields``
(a present but empty text is not an error: it is an empty document), a text value that is not a
string (nor null), a TSV line with the wrong number of columns or an empty id. With
``on_error="raise"`` (the default) it raises :class:`CorpusError` whose message starts with
``FILE:LINE:`` and names the problem. With ``on_error="skip"`` the line is counted in
``stats.rejected`` and appended to ``rejects_path`` (required then; opened in append mode when
the first line is rejected, so the file exists only if something was rejected; flushed after each
line) as the JSON line ``{"source": "FILE:LINE", "error": "...", "line": "..."}`` with the raw line
decoded with replacement, less its line ending, cut to 1000 characters (for parquet: the row as
JSON), and reading goes on.

Duplicate ids always raise :class:`CorpusError`, naming the first and the second occurrence
(``FILE:LINE``), whatever ``on_error`` is: skipping the second copy would silently drop a document
that may differ from the first, and keeping both would give the store two rows with one id, so the
input has to be fixed. Detection keeps, for each id, a 16-byte blake2b digest of its UTF-8 bytes
mapped to its line number (an integer id ``12`` and the string ``"12"`` are the same id; about 110 bytes per document, e.g. about 1 GB for 10 million documents,
whatever the ids' lengths); ``txt`` needs none, its ids being line numbers. A digest collision
(odds about n**2 / 2**129) would be reported as a duplicate.

``count_docs`` counts non-blank lines for ``jsonl`` and ``tsv`` (less a detected header), all
lines for ``txt`` and the metadata's ``num_rows`` for ``parquet``, without parsing: it is exact
for valid input and an upper bound when lines are rejected.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .store import FLAG_EMPTY, FLAG_REPLACED

__all__ = ["Doc", "ReadStats", "CorpusError", "FORMATS", "read_corpus", "count_docs",
           "detect_format"]

FORMATS = ("auto", "jsonl", "tsv", "txt", "parquet", "beir")
REJECT_LINE_CHARS = 1000
PARQUET_BATCH_ROWS = 1024

_BOM = b"\xef\xbb\xbf"
_FFFD_BYTES = "\ufffd".encode("utf-8")
_SURROGATES = re.compile("[\ud800-\udfff]")
_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".tsv": "tsv",
             ".txt": "txt", ".parquet": "parquet", ".pq": "parquet"}
_TSV_ID_NAMES = ("id", "_id", "docid", "doc_id")


class CorpusError(ValueError):
    """Bad corpus input; the message starts with ``FILE:LINE:`` (or ``FILE:``) and names the problem."""


@dataclass(frozen=True, slots=True)
class Doc:
    id: str
    text: str
    flags: int  # keytok_jax.store FLAG_* bits: FLAG_REPLACED, FLAG_EMPTY
    source: str  # "FILE:LINE" (parquet: "FILE:ROW"), 1-based


@dataclass
class ReadStats:
    """Counters updated in place by :func:`read_corpus` (pass one as ``stats=``)."""
    docs: int = 0  # documents yielded
    empty: int = 0  # of which flagged FLAG_EMPTY
    replaced: int = 0  # of which flagged FLAG_REPLACED
    rejected: int = 0  # bad lines skipped with on_error="skip"
    lines: int = 0  # physical lines read, headers and blank lines included (parquet: rows)
    replacements: int = 0  # U+FFFD characters inserted for invalid bytes / lone surrogates


# ------------------------------------------------------------------ format and file helpers


def detect_format(path: str | os.PathLike) -> str:
    """The format ``format="auto"`` picks for ``path``; raises :class:`CorpusError` if it cannot tell."""
    p = Path(path)
    if p.is_dir():
        return "beir"
    name = p.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    fmt = _SUFFIXES.get(os.path.splitext(name)[1])
    if fmt is None:
        raise CorpusError(f"{path}: cannot tell the corpus format from the file name; pass format= "
                          f"one of {', '.join(FORMATS[1:])}")
    if fmt == "parquet" and p.name.lower().endswith(".gz"):
        raise CorpusError(f"{path}: gzip-compressed parquet is not supported (parquet compresses itself)")
    return fmt


def _resolve(path, format: str) -> tuple[str, Path]:
    """(format, file to read) with ``beir`` turned into ``jsonl`` on the directory's corpus file."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"corpus not found: {path}")
    fmt = detect_format(p) if format == "auto" else format
    if fmt == "beir":
        if not p.is_dir():
            raise CorpusError(f"{path}: format 'beir' needs a BEIR dataset directory holding corpus.jsonl")
        for name in ("corpus.jsonl", "corpus.jsonl.gz"):
            if (p / name).is_file():
                return "jsonl", p / name
        raise CorpusError(f"{path}: BEIR directory without corpus.jsonl")
    if p.is_dir():
        raise CorpusError(f"{path}: is a directory; format {fmt!r} needs a file")
    return fmt, p


def _open_binary(path: Path) -> IO[bytes]:
    if path.name.lower().endswith(".gz"):
        return io.BufferedReader(gzip.open(path, "rb"), buffer_size=1 << 20)
    return open(path, "rb", buffering=1 << 20)


def _lines(path: Path, stats: ReadStats) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes less ``\\n`` / ``\\r\\n``); splits on ``b"\\n"`` only."""
    with _open_binary(path) as f:
        lineno = 0
        for raw in f:
            lineno += 1
            stats.lines += 1
            if raw.endswith(b"\n"):
                raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
            if lineno == 1 and raw.startswith(_BOM):
                raw = raw[3:]
            yield lineno, raw


def _decode(raw: bytes) -> tuple[str, int]:
    """Decode one line; returns the text and the number of U+FFFD inserted for invalid bytes."""
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        s = raw.decode("utf-8", errors="replace")
        # A valid EF BF BD always decodes to one U+FFFD (EF is never a continuation byte).
        return s, s.count("\ufffd") - raw.count(_FFFD_BYTES)


def _join_texts(values: Sequence[str]) -> str:
    return " ".join(v for v in values if v and not v.isspace())


class _Bad(Exception):
    pass


def _check_id(value: Any, what: str) -> str:
    if isinstance(value, str):
        if value == "":
            raise _Bad(f"empty id in {what}")
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if value is None:
        raise _Bad(f"id {what} is null")
    raise _Bad(f"id {what} must be a string or an integer, got {type(value).__name__}")


# ------------------------------------------------------------------ per-format record parsers
# Each yields (lineno, id, text, replacements, problem, raw) with problem None for a good record.


def _jsonl_records(path: Path, id_field: str, text_fields: tuple[str, ...], stats: ReadStats):
    for lineno, raw in _lines(path, stats):
        if not raw.strip():
            continue
        line, nrep = _decode(raw)
        try:
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError) as e:  # JSONDecodeError; absurd nesting
                raise _Bad(f"malformed JSON: {e}") from None
            if not isinstance(obj, dict):
                raise _Bad(f"not a JSON object (a {type(obj).__name__})")
            if id_field not in obj:
                raise _Bad(f"missing id field {id_field!r}")
            doc_id = _check_id(obj[id_field], f"field {id_field!r}")
            values = []
            present = False
            for field in text_fields:
                if field not in obj:
                    continue
                present = True
                v = obj[field]
                if v is None:
                    continue
                if not isinstance(v, str):
                    raise _Bad(f"text field {field!r} must be a string, got {type(v).__name__}")
                values.append(v)
            if not present:
                raise _Bad(f"none of the text fields {list(text_fields)} is present")
        except _Bad as e:
            yield lineno, None, None, nrep, str(e), raw
            continue
        text = _join_texts(values)
        if _SURROGATES.search(text):
            text, n = _SURROGATES.subn("\ufffd", text)
            nrep += n
        yield lineno, doc_id, text, nrep, None, raw


def _tsv_header(cols: list[str], id_field: str, text_fields: tuple[str, ...], where: str):
    """Text column indices if ``cols`` (the first line) is a header, else None."""
    names = [c.strip().lower() for c in cols]
    if len(names) < 2 or names[0] not in (*_TSV_ID_NAMES, id_field.lower()):
        return None
    if len(names) == 2:
        return [1]
    text_cols = [names.index(f.lower(), 1) for f in text_fields if f.lower() in names[1:]]
    if not text_cols:
        raise CorpusError(f"{where}: TSV header {cols} names none of the text fields "
                          f"{list(text_fields)}; pass text_fields=")
    return text_cols


def _tsv_records(path: Path, id_field: str, text_fields: tuple[str, ...], stats: ReadStats):
    ncols, text_cols = 2, [1]
    for lineno, raw in _lines(path, stats):
        if lineno == 1:
            first, _ = _decode(raw)
            header = _tsv_header(first.split("\t"), id_field, text_fields, f"{path}:1")
            if header is not None:
                ncols, text_cols = len(first.split("\t")), header
                continue
        if not raw.strip():
            continue
        line, nrep = _decode(raw)
        cols = line.split("\t")
        if len(cols) != ncols:
            layout = "id<TAB>text" if ncols == 2 else "as many as the header"
            yield (lineno, None, None, nrep,
                   f"expected {ncols} tab-separated columns ({layout}), got {len(cols)}", raw)
            continue
        if cols[0] == "":
            yield lineno, None, None, nrep, "empty id", raw
            continue
        text = cols[1] if ncols == 2 else _join_texts([cols[i] for i in text_cols])
        yield lineno, cols[0], text, nrep, None, raw


def _txt_records(path: Path, stats: ReadStats):
    for lineno, raw in _lines(path, stats):
        text, nrep = _decode(raw)
        yield lineno, str(lineno), text, nrep, None, raw


def _parquet_file(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading parquet corpora needs pyarrow: pip install pyarrow") from e
    try:
        return pq.ParquetFile(path)
    except Exception as e:
        raise CorpusError(f"{path}: not a readable parquet file: {e}") from e


def _parquet_columns(pf, path: Path, id_field: str, text_fields: tuple[str, ...]):
    import pyarrow as pa

    schema = pf.schema_arrow
    names = schema.names
    if id_field not in names:
        raise CorpusError(f"{path}: no id column {id_field!r} (columns: {names})")
    texts = [f for f in text_fields if f in names]
    if not texts:
        raise CorpusError(f"{path}: none of the text columns {list(text_fields)} exists (columns: {names})")

    def kind(t):
        if pa.types.is_dictionary(t):
            t = t.value_type
        if pa.types.is_string(t) or pa.types.is_large_string(t) or getattr(pa.types, "is_string_view", lambda _: False)(t):
            return "str"
        if pa.types.is_binary(t) or pa.types.is_large_binary(t) or getattr(pa.types, "is_binary_view", lambda _: False)(t):
            return "bytes"
        if pa.types.is_integer(t):
            return "int"
        if pa.types.is_null(t):
            return "null"
        return None

    id_kind = kind(schema.field(id_field).type)
    if id_kind not in ("str", "int"):
        raise CorpusError(f"{path}: id column {id_field!r} must be string or integer, "
                          f"not {schema.field(id_field).type}")
    for f in texts:
        if kind(schema.field(f).type) not in ("str", "bytes", "null"):
            raise CorpusError(f"{path}: text column {f!r} must be string or binary, not {schema.field(f).type}")
    return texts


def _column_values(column) -> tuple[list, list[int] | None]:
    """Python values of an arrow column; bytes are decoded with replacement (counts returned)."""
    try:
        values = column.to_pylist()
    except UnicodeDecodeError:  # a string column holding invalid UTF-8: read it as bytes
        import pyarrow as pa
        values = column.cast(pa.large_binary()).to_pylist()
    if not any(isinstance(v, bytes) for v in values):
        return values, None
    counts = [0] * len(values)
    for i, v in enumerate(values):
        if isinstance(v, bytes):
            values[i], counts[i] = _decode(v)
    return values, counts


def _parquet_records(path: Path, id_field: str, text_fields: tuple[str, ...], stats: ReadStats):
    pf = _parquet_file(path)
    texts = _parquet_columns(pf, path, id_field, text_fields)
    row = 0
    for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[id_field, *texts]):
        ids, id_counts = _column_values(batch.column(0))
        cols = [_column_values(batch.column(1 + j)) for j in range(len(texts))]
        for i in range(batch.num_rows):
            row += 1
            stats.lines += 1
            nrep = (id_counts[i] if id_counts else 0) + sum(c[i] for _, c in cols if c)
            try:
                doc_id = _check_id(ids[i], f"column {id_field!r}")
            except _Bad as e:
                record = {id_field: ids[i], **{f: v[i] for f, (v, _) in zip(texts, cols)}}
                yield row, None, None, nrep, str(e), record
                continue
            yield row, doc_id, _join_texts([v[i] for v, _ in cols if v[i] is not None]), nrep, None, None


# ------------------------------------------------------------------ public API


class _Rejects:
    def __init__(self, path):
        self.path, self.file = path, None

    def write(self, source: str, error: str, raw) -> None:
        if isinstance(raw, bytes):
            line = raw.decode("utf-8", errors="replace")
        else:
            line = json.dumps(raw, ensure_ascii=False, default=str)
        if self.file is None:
            # backslashreplace turns a lone surrogate into the JSON escape \udXXX, inside strings.
            self.file = open(self.path, "a", encoding="utf-8", errors="backslashreplace")
        rec = {"source": source, "error": error, "line": line[:REJECT_LINE_CHARS]}
        self.file.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _text_fields(text_fields) -> tuple[str, ...]:
    if isinstance(text_fields, str):
        text_fields = (text_fields,)
    text_fields = tuple(text_fields)
    if not text_fields or not all(isinstance(f, str) and f for f in text_fields):
        raise ValueError(f"text_fields must be one or more non-empty field names, got {text_fields!r}")
    return text_fields


def read_corpus(path: str | os.PathLike, *, format: str = "auto", id_field: str = "_id",
                text_fields: Sequence[str] = ("title", "text"), on_error: str = "raise",
                rejects_path: str | os.PathLike | None = None,
                stats: ReadStats | None = None) -> Iterator[Doc]:
    """Yield the corpus' documents in order, streaming (see the module docstring for formats,
    flags, bad input and duplicates). Arguments are checked at the call; the file is opened when
    iteration starts and closed when it ends (or when the iterator is closed or collected)."""
    fmt, file = _resolve(path, format)
    text_fields = _text_fields(text_fields)
    if not isinstance(id_field, str) or not id_field:
        raise ValueError(f"id_field must be a non-empty string, got {id_field!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if on_error == "skip" and rejects_path is None:
        raise ValueError("on_error='skip' needs rejects_path (where skipped lines are written)")
    if fmt == "parquet":
        _parquet_columns(_parquet_file(file), file, id_field, text_fields)  # fail at the call
    return _read(fmt, file, id_field, text_fields, on_error, rejects_path,
                 stats if stats is not None else ReadStats())


def _read(fmt, file, id_field, text_fields, on_error, rejects_path, stats) -> Iterator[Doc]:
    name = str(file)
    if fmt == "jsonl":
        records = _jsonl_records(file, id_field, text_fields, stats)
    elif fmt == "tsv":
        records = _tsv_records(file, id_field, text_fields, stats)
    elif fmt == "txt":
        records = _txt_records(file, stats)
    else:
        records = _parquet_records(file, id_field, text_fields, stats)
    seen: dict[bytes, int] | None = None if fmt == "txt" else {}
    rejects = _Rejects(rejects_path)
    blake2b = hashlib.blake2b
    try:
        for lineno, doc_id, text, nrep, problem, raw in records:
            source = f"{name}:{lineno}"
            stats.replacements += nrep
            if problem is not None:
                if on_error == "raise":
                    where = f" (row {lineno})" if fmt == "parquet" else ""
                    raise CorpusError(f"{source}{where}: {problem}")
                stats.rejected += 1
                rejects.write(source, problem, raw)
                continue
            if seen is not None:
                key = blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=16).digest()
                first = seen.setdefault(key, lineno)
                if first != lineno:
                    shown = doc_id if len(doc_id) <= 200 else doc_id[:200] + "..."
                    raise CorpusError(f"{source}: duplicate id {shown!r}, first seen at {name}:{first} "
                                      "(duplicate ids are never skipped: fix the input)")
            flags = 0
            if nrep and "\ufffd" in text:
                flags |= FLAG_REPLACED
                stats.replaced += 1
            if not text or text.isspace():
                flags |= FLAG_EMPTY
                stats.empty += 1
            stats.docs += 1
            yield Doc(doc_id, text, flags, source)
    finally:
        records.close()
        rejects.close()


def count_docs(path: str | os.PathLike, *, format: str = "auto", id_field: str = "_id",
               text_fields: Sequence[str] = ("title", "text"), **_read_kwargs) -> int:
    """Number of documents :func:`read_corpus` would yield, without parsing: exact for valid
    input, an upper bound when lines would be rejected (they are counted). Accepts
    read_corpus' keyword arguments (``on_error``, ``rejects_path``, ``stats`` are ignored)."""
    unknown = set(_read_kwargs) - {"on_error", "rejects_path", "stats"}
    if unknown:
        raise TypeError(f"count_docs got unexpected keyword arguments {sorted(unknown)}")
    fmt, file = _resolve(path, format)
    text_fields = _text_fields(text_fields)
    if fmt == "parquet":
        return _parquet_file(file).metadata.num_rows
    if fmt == "txt":
        n, last = 0, b"\n"
        with _open_binary(file) as f:
            while chunk := f.read(1 << 20):
                n += chunk.count(b"\n")
                last = chunk[-1:]
        return n + (last != b"\n")  # a last line without newline is a line too
    n = 0
    with _open_binary(file) as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and fmt == "tsv":
                raw = raw.removeprefix(_BOM)
                first, _ = _decode(raw.rstrip(b"\r\n"))
                if _tsv_header(first.split("\t"), id_field, text_fields, f"{file}:1") is not None:
                    continue
            elif lineno == 1:
                raw = raw.removeprefix(_BOM)
            if raw and not raw.isspace():
                n += 1
    return n
