"""The corpus formats' line and record parsers, behind :mod:`keytok_jax.pipeline.read`.

Each parser yields ``(lineno, id, text, replacements, problem, raw)`` per record, ``problem``
None for a good one: the policy for bad records (raise or reject), duplicate ids and flags lives
in one place, :func:`keytok_jax.pipeline.read.read_corpus`, whatever the format. The rules each
format follows are specified in that module's docstring.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import re
import sys
from contextlib import nullcontext
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import CorpusError
from ..records import ReadStats

__all__ = ["FORMATS", "BOM", "STDIN", "STDIN_NAME", "Bad", "detect_format", "open_binary",
           "decode", "encoding_problem", "check_encoding", "tsv_header", "parquet_file",
           "parquet_columns", "records"]

FORMATS = ("auto", "jsonl", "tsv", "txt", "parquet", "beir")
PARQUET_BATCH_ROWS = 1024

BOM = b"\xef\xbb\xbf"
STDIN = "-"  # the path that means standard input
STDIN_NAME = "<stdin>"  # how sources and messages name it
_FFFD_BYTES = "\ufffd".encode("utf-8")
_SURROGATES = re.compile("[\ud800-\udfff]")
_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".tsv": "tsv",
             ".txt": "txt", ".parquet": "parquet", ".pq": "parquet"}
_TSV_ID_NAMES = ("id", "_id", "docid", "doc_id")


class Bad(Exception):
    """A record that cannot be read; the reader raises or rejects it as ``on_error`` says."""


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


def open_binary(path: Path | str):
    """The file as buffered bytes; ``STDIN`` is standard input (left open when done)."""
    if str(path) == STDIN:
        return nullcontext(sys.stdin.buffer)
    if path.name.lower().endswith(".gz"):
        return io.BufferedReader(gzip.open(path, "rb"), buffer_size=1 << 20)
    return open(path, "rb", buffering=1 << 20)


def _lines(path: Path | str, stats: ReadStats) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes less ``\\n`` / ``\\r\\n``); splits on ``b"\\n"`` only.
    The first line is checked by :func:`check_encoding` (a UTF-16 file is refused)."""
    with open_binary(path) as f:
        lineno = 0
        for raw in f:
            lineno += 1
            stats.lines += 1
            if lineno == 1:
                check_encoding(raw, name_of(path))
            if raw.endswith(b"\n"):
                raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
            if lineno == 1 and raw.startswith(BOM):
                raw = raw[3:]
            yield lineno, raw


def name_of(path: Path | str) -> str:
    """``FILE`` of the ``FILE:LINE`` sources: the path as given, ``<stdin>`` for ``-``."""
    return STDIN_NAME if str(path) == STDIN else str(path)


def encoding_problem(first_line: bytes, name: str = "FILE") -> str | None:
    """What is wrong with the file ``name`` whose first line (raw bytes, line ending included) is
    ``first_line``, when it is plainly not UTF-8: a UTF-16 or UTF-32 byte order mark, or NUL bytes
    making up a quarter or more of the line (UTF-16 without a byte order mark: ASCII text has a NUL
    beside every character). None otherwise: UTF-8 text has no NUL bytes, and other 8-bit
    encodings are decoded with replacement and flagged, line by line."""
    target = "FILE.utf8" if name == STDIN_NAME else f"{name}.utf8"
    source = "FILE" if name == STDIN_NAME else name
    boms = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
            (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))
    for bom, enc in boms:
        if first_line.startswith(bom):
            return (f"starts with the {enc} byte order mark {bom.hex(' ').upper()}: the file looks "
                    f"like {enc}; convert it to UTF-8, e.g. iconv -f {enc} -t UTF-8 {source} > {target}")
    body = first_line.rstrip(b"\r\n\x00")
    nuls = body.count(b"\x00")
    if nuls >= 2 and nuls * 4 >= len(body):
        # ASCII in UTF-16LE puts the NUL after each character (odd offsets), UTF-16BE before it.
        enc = "UTF-16LE" if body[1::2].count(b"\x00") * 2 >= nuls else "UTF-16BE"
        return (f"{nuls} NUL bytes in the first line: the file looks like UTF-16 ({enc}, no byte "
                f"order mark); convert it to UTF-8, e.g. iconv -f {enc} -t UTF-8 {source} > {target}")
    return None


def check_encoding(first_line: bytes, name: str) -> None:
    """Raise :class:`CorpusError` ``NAME:1: ...`` when :func:`encoding_problem` finds one (every
    line of such a file would be garbage, so it is refused whatever ``on_error`` is)."""
    problem = encoding_problem(first_line, name)
    if problem is not None:
        raise CorpusError(f"{name}:1: {problem}")


def decode(raw: bytes) -> tuple[str, int]:
    """Decode one line; returns the text and the number of U+FFFD inserted for invalid bytes."""
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        s = raw.decode("utf-8", errors="replace")
        # A valid EF BF BD always decodes to one U+FFFD (EF is never a continuation byte).
        return s, s.count("\ufffd") - raw.count(_FFFD_BYTES)


def _join_texts(values: Sequence[str]) -> str:
    return " ".join(v for v in values if v and not v.isspace())


def _check_id(value: Any, what: str) -> str:
    if isinstance(value, str):
        if value == "":
            raise Bad(f"empty id in {what}")
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if value is None:
        raise Bad(f"id {what} is null")
    raise Bad(f"id {what} must be a string or an integer, got {type(value).__name__}")


# ------------------------------------------------------------------ per-format record parsers


def records(fmt: str, file: Path, id_field: str, text_fields: tuple[str, ...], stats: ReadStats):
    """The record parser of ``fmt`` (``jsonl``, ``tsv``, ``txt`` or ``parquet``) over ``file``."""
    if fmt == "jsonl":
        return _jsonl_records(file, id_field, text_fields, stats)
    if fmt == "tsv":
        return _tsv_records(file, id_field, text_fields, stats)
    if fmt == "txt":
        return _txt_records(file, stats)
    return _parquet_records(file, id_field, text_fields, stats)


def _json_record(line: str, id_field: str, text_fields: tuple[str, ...]) -> tuple[str, list[str]]:
    """(id, text values) of one JSON line; :class:`Bad` names what is wrong with it."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as e:  # JSONDecodeError; absurd nesting
        raise Bad(f"malformed JSON: {e}") from None
    if not isinstance(obj, dict):
        raise Bad(f"not a JSON object (a {type(obj).__name__})")
    if id_field not in obj:
        raise Bad(f"missing id field {id_field!r}")
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
            raise Bad(f"text field {field!r} must be a string, got {type(v).__name__}")
        values.append(v)
    if not present:
        raise Bad(f"none of the text fields {list(text_fields)} is present")
    return doc_id, values


def _jsonl_records(path: Path, id_field: str, text_fields: tuple[str, ...], stats: ReadStats):
    for lineno, raw in _lines(path, stats):
        if not raw.strip():
            continue
        line, nrep = decode(raw)
        try:
            doc_id, values = _json_record(line, id_field, text_fields)
            if nrep:
                _check_id_bytes(doc_id, _escaped_json_id(raw, id_field))
        except Bad as e:
            yield lineno, None, None, nrep, str(e), raw
            continue
        text = _join_texts(values)
        if _SURROGATES.search(text):
            text, n = _SURROGATES.subn("\ufffd", text)
            nrep += n
        yield lineno, doc_id, text, nrep, None, raw


def _escaped_json_id(raw: bytes, id_field: str) -> str:
    """The id of a JSON line (known to parse) decoded with ``surrogateescape``: each invalid
    byte becomes a lone surrogate, where :func:`decode` put U+FFFD."""
    value = json.loads(raw.decode("utf-8", errors="surrogateescape"))[id_field]
    return value if isinstance(value, str) else str(value)


def _check_id_bytes(doc_id: str, escaped: str) -> None:
    """Refuse an id that held invalid UTF-8 bytes: ``doc_id`` (decoded with replacement) and
    ``escaped`` (the same bytes decoded with ``surrogateescape``) differ exactly then."""
    if doc_id != escaped:
        raise _invalid_id(doc_id)


def _invalid_id(doc_id: str) -> Bad:
    """Texts get U+FFFD and a flag; an id is a key documents are looked up by, and a replaced one
    would match neither the input's bytes nor, reliably, another id: it is never changed silently."""
    shown = doc_id if len(doc_id) <= 200 else doc_id[:200] + "..."
    return Bad(f"id {shown!r} holds invalid UTF-8 bytes (shown as U+FFFD); ids are never "
               "altered, so fix the input's encoding")


def tsv_header(cols: list[str], id_field: str, text_fields: tuple[str, ...], where: str):
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
            first, _ = decode(raw)
            header = tsv_header(first.split("\t"), id_field, text_fields, f"{path}:1")
            if header is not None:
                ncols, text_cols = len(first.split("\t")), header
                continue
        if not raw.strip():
            continue
        line, nrep = decode(raw)
        cols = line.split("\t")
        if len(cols) != ncols:
            layout = "id<TAB>text" if ncols == 2 else "as many as the header"
            yield (lineno, None, None, nrep,
                   f"expected {ncols} tab-separated columns ({layout}), got {len(cols)}", raw)
            continue
        if cols[0] == "":
            yield lineno, None, None, nrep, "empty id", raw
            continue
        if nrep:
            try:  # a tab is one byte in UTF-8, so the raw id is the bytes before the first one
                _check_id_bytes(cols[0], raw.split(b"\t", 1)[0].decode("utf-8", "surrogateescape"))
            except Bad as e:
                yield lineno, None, None, nrep, str(e), raw
                continue
        text = cols[1] if ncols == 2 else _join_texts([cols[i] for i in text_cols])
        yield lineno, cols[0], text, nrep, None, raw


def _txt_records(path: Path, stats: ReadStats):
    for lineno, raw in _lines(path, stats):
        text, nrep = decode(raw)
        yield lineno, str(lineno), text, nrep, None, raw


# ------------------------------------------------------------------ parquet


def parquet_file(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading parquet corpora needs pyarrow: pip install pyarrow") from e
    try:
        return pq.ParquetFile(path)
    except Exception as e:
        raise CorpusError(f"{path}: not a readable parquet file: {e}") from e


def _arrow_kind(t) -> str | None:
    """``str``, ``bytes``, ``int`` or ``null`` for the arrow types a corpus column may have."""
    import pyarrow as pa

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


def parquet_columns(pf, path: Path, id_field: str, text_fields: tuple[str, ...]) -> list[str]:
    """The text columns to read; :class:`CorpusError` when the id or text columns are unusable."""
    schema = pf.schema_arrow
    names = schema.names
    if id_field not in names:
        raise CorpusError(f"{path}: no id column {id_field!r} (columns: {names})")
    texts = [f for f in text_fields if f in names]
    if not texts:
        raise CorpusError(f"{path}: none of the text columns {list(text_fields)} exists (columns: {names})")
    if _arrow_kind(schema.field(id_field).type) not in ("str", "int"):
        raise CorpusError(f"{path}: id column {id_field!r} must be string or integer, "
                          f"not {schema.field(id_field).type}")
    for f in texts:
        if _arrow_kind(schema.field(f).type) not in ("str", "bytes", "null"):
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
            values[i], counts[i] = decode(v)
    return values, counts


def _parquet_records(path: Path, id_field: str, text_fields: tuple[str, ...], stats: ReadStats):
    pf = parquet_file(path)
    texts = parquet_columns(pf, path, id_field, text_fields)
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
                if id_counts and id_counts[i]:  # U+FFFD put for invalid bytes in the id
                    raise _invalid_id(doc_id)
            except Bad as e:
                record = {id_field: ids[i], **{f: v[i] for f, (v, _) in zip(texts, cols)}}
                yield row, None, None, nrep, str(e), record
                continue
            yield row, doc_id, _join_texts([v[i] for v, _ in cols if v[i] is not None]), nrep, None, None
