"""Read: the corpus as a stream of :class:`~keytok_jax.records.Doc` (first stage of the embedding job).

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

Standard input: the path ``-`` reads ``sys.stdin.buffer`` (never closed here) as ``jsonl`` (with
``format="auto"``), ``tsv`` or ``txt``; ``beir`` and ``parquet`` need a path (:class:`SettingsError`).
Sources name it ``<stdin>:LINE``. :func:`count_docs` returns None for it (it cannot be read twice).

Decoding and flags: each line is read as bytes and decoded on its own with
``errors="replace"``, so one bad byte costs one U+FFFD in one line and nothing else.
``Doc.flags`` gets :data:`keytok_jax.records.FLAG_REPLACED` when the line held invalid UTF-8 and the
document's text contains a U+FFFD (invalid bytes only in an ignored field do not flag the text),
and when a jsonl text held lone surrogates from ``\\ud800``-style escapes, which are replaced by
U+FFFD (a tokenizer cannot encode them). Invalid bytes in an *id* are bad input (below): an id is a
key, and a replaced one would silently differ from the input's. An id's lone surrogate escapes are
kept as they are (the store writes them as ``\\u`` escapes).

Encoding: a file that is plainly not UTF-8 (its first line starts with a UTF-16 or UTF-32 byte
order mark, or a quarter or more of its bytes are NUL, as in UTF-16 without one) raises
:class:`CorpusError` ``FILE:1: ... looks like UTF-16; convert it to UTF-8, e.g. iconv -f UTF-16LE
-t UTF-8 FILE > FILE.utf8`` whatever ``on_error`` is (every line would be garbage). Other
encodings (Latin-1, cp1252) are not guessed: their bytes are replaced and flagged as above.

``FLAG_EMPTY`` is set when the text is empty or whitespace only; such documents are kept as rows.
``Doc.source`` is ``"FILE:LINE"`` (``FILE`` as the path was given, ``LINE`` 1-based).

Bad input: a malformed JSON line, a line that is not a JSON object, a missing id field, an id that
is null, empty, neither a string nor an integer, or holds invalid UTF-8 bytes, a record with none of the ``text_fields``
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

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import CorpusError, SettingsError
from ..records import FLAG_EMPTY, FLAG_REPLACED, Doc, ReadStats
from .read_formats import (BOM, FORMATS, STDIN, decode, detect_format, name_of, open_binary,
                           parquet_columns, parquet_file, records, tsv_header)

__all__ = ["Doc", "ReadStats", "CorpusError", "FORMATS", "STDIN", "read_corpus", "count_docs",
           "detect_format"]

REJECT_LINE_CHARS = 1000


def _resolve(path, format: str) -> tuple[str, Path | str]:
    """(format, file to read) with ``beir`` turned into ``jsonl`` on the directory's corpus file;
    the file is :data:`STDIN` for ``-``."""
    if format not in FORMATS:
        raise SettingsError(f"format must be one of {FORMATS}, got {format!r}")
    if str(path) == STDIN:
        if format in ("beir", "parquet"):
            raise SettingsError(f"format {format!r} needs a path: standard input (-) can be read "
                                "as jsonl, tsv or txt")
        return ("jsonl" if format == "auto" else format), STDIN
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


def _text_fields(text_fields) -> tuple[str, ...]:
    if isinstance(text_fields, str):
        text_fields = (text_fields,)
    text_fields = tuple(text_fields)
    if not text_fields or not all(isinstance(f, str) and f for f in text_fields):
        raise SettingsError(f"text_fields must be one or more non-empty field names, got {text_fields!r}")
    return text_fields


class _Rejects:
    """The side file of skipped lines, created when the first line is rejected."""

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


class _UniqueIds:
    """Refuses a second occurrence of an id, keeping a 16-byte digest per id seen."""

    def __init__(self, name: str):
        self.name, self.seen = name, {}

    def check(self, doc_id: str, lineno: int, source: str) -> None:
        key = hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        first = self.seen.setdefault(key, lineno)
        if first != lineno:
            shown = doc_id if len(doc_id) <= 200 else doc_id[:200] + "..."
            raise CorpusError(f"{source}: duplicate id {shown!r}, first seen at {self.name}:{first} "
                              "(duplicate ids are never skipped: fix the input)")


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
        raise SettingsError(f"id_field must be a non-empty string, got {id_field!r}")
    if on_error not in ("raise", "skip"):
        raise SettingsError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if on_error == "skip" and rejects_path is None:
        raise SettingsError("on_error='skip' needs rejects_path (where skipped lines are written)")
    if fmt == "parquet":
        parquet_columns(parquet_file(file), file, id_field, text_fields)  # fail at the call
    return _read(fmt, file, id_field, text_fields, on_error, rejects_path,
                 stats if stats is not None else ReadStats())


def _doc_flags(text: str, nrep: int, stats: ReadStats) -> int:
    flags = 0
    if nrep and "\ufffd" in text:
        flags |= FLAG_REPLACED
        stats.replaced += 1
    if not text or text.isspace():
        flags |= FLAG_EMPTY
        stats.empty += 1
    return flags


def _read(fmt, file, id_field, text_fields, on_error, rejects_path, stats) -> Iterator[Doc]:
    name = name_of(file)
    parsed = records(fmt, file, id_field, text_fields, stats)
    unique = None if fmt == "txt" else _UniqueIds(name)   # txt ids are line numbers
    rejects = _Rejects(rejects_path)
    try:
        for lineno, doc_id, text, nrep, problem, raw in parsed:
            source = f"{name}:{lineno}"
            stats.replacements += nrep
            if problem is not None:
                if on_error == "raise":
                    where = f" (row {lineno})" if fmt == "parquet" else ""
                    raise CorpusError(f"{source}{where}: {problem}")
                stats.rejected += 1
                rejects.write(source, problem, raw)
                continue
            if unique is not None:
                unique.check(doc_id, lineno, source)
            flags = _doc_flags(text, nrep, stats)
            stats.docs += 1
            yield Doc(doc_id, text, flags, source)
    finally:
        parsed.close()
        rejects.close()


def _count_lines(file: Path) -> int:
    n, last = 0, b"\n"
    with open_binary(file) as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")  # a last line without newline is a line too


def count_docs(path: str | os.PathLike, *, format: str = "auto", id_field: str = "_id",
               text_fields: Sequence[str] = ("title", "text"), **_read_kwargs) -> int | None:
    """Number of documents :func:`read_corpus` would yield, without parsing: exact for valid
    input, an upper bound when lines would be rejected (they are counted); None for standard
    input (``-``), which cannot be read twice. Accepts read_corpus' keyword arguments
    (``on_error``, ``rejects_path``, ``stats`` are ignored)."""
    unknown = set(_read_kwargs) - {"on_error", "rejects_path", "stats"}
    if unknown:
        raise TypeError(f"count_docs got unexpected keyword arguments {sorted(unknown)}")
    fmt, file = _resolve(path, format)
    text_fields = _text_fields(text_fields)
    if file == STDIN:
        return None
    if fmt == "parquet":
        return parquet_file(file).metadata.num_rows
    if fmt == "txt":
        return _count_lines(file)
    n = 0
    with open_binary(file) as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and fmt == "tsv":
                raw = raw.removeprefix(BOM)
                first, _ = decode(raw.rstrip(b"\r\n"))
                if tsv_header(first.split("\t"), id_field, text_fields, f"{file}:1") is not None:
                    continue
            elif lineno == 1:
                raw = raw.removeprefix(BOM)
            if raw and not raw.isspace():
                n += 1
    return n
