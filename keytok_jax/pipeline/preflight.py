"""Checks of a corpus job's settings that need no model and write nothing: run before the model
loads and before the store is created, so a wrong path or flag costs no time and leaves no empty
store behind (which would then refuse the corrected command).

:func:`check_job` raises :class:`~keytok_jax.errors.PathError` (a
:class:`~keytok_jax.errors.SettingsError`) with a message ``<flag> <path>: <problem>`` for:

- ``--input``: missing, unreadable, a directory where a file format is asked for, a BEIR folder
  without ``corpus.jsonl``, a name whose format cannot be told (pass ``--format``), a parquet file
  without the id or text columns. ``-`` (standard input) is accepted, except with ``--format beir``
  or ``parquet``, which need a path.
- ``--output``: an existing path that is not a directory, a path under a regular file, a
  directory (or the nearest existing directory above it) that is not writable.
- ``--rejects`` (with ``--on-error skip``; default ``STORE.rejects.jsonl``) and ``--summary-json``:
  a directory, a path under a regular file, a parent that does not exist (the default rejects file
  sits beside the store, whose parent is created with it) or is not writable, an existing file that
  is not writable, the input corpus itself. The files themselves are not created here.
- ``--shift``, ``--correction-fit``: missing or unreadable; ``--correction-fit`` with
  ``--correction none``.
- numbers that cannot work: ``--shard-size``, ``--batch-tokens``, ``--vocab-chunk``, ``--limit``,
  ``--matryoshka-dim`` below 1; ``--global-mesh`` without ``--mesh``.

Writability is asked of the OS (``os.access``): a process whose privileges bypass file modes
(root) passes these checks on a ``chmod``-ed directory, and the write itself then fails with the
OS error, which the command reports as one ``error:`` line too.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import CorpusError, PathError, SettingsError
from ..settings import InputSettings, JobSettings
from .correction import CorrectionFit
from .read_formats import (FORMATS, STDIN, check_encoding, detect_format, name_of, open_binary,
                           parquet_columns, parquet_file)

__all__ = ["check_job", "check_input", "check_readable_file", "check_output_dir",
           "check_output_file", "STDIN"]

BEIR_CORPUS_FILES = ("corpus.jsonl", "corpus.jsonl.gz")


def check_job(job: JobSettings) -> None:
    """Refuse, before anything loads or is written, settings the job could not finish with
    (see the module docstring); returns None when the job may start."""
    _check_numbers(job)
    check_input(job.input)
    output = job.output.output
    if output is None:
        raise SettingsError("--output: a store directory is required")
    check_output_dir("--output", output)
    if job.input.on_error == "skip":
        if job.input.rejects:
            check_output_file("--rejects", job.input.rejects)
        else:
            check_output_file("--rejects", str(Path(output)) + ".rejects.jsonl",
                              parent_may_be_created=True)
        _not_the_input("--rejects", job.input.rejects, job.input.input)
    if job.output.summary_json:
        check_output_file("--summary-json", job.output.summary_json)
        _not_the_input("--summary-json", job.output.summary_json, job.input.input)
    if job.model.shift:
        check_readable_file("--shift", job.model.shift)
    _check_fit(job)


def _check_fit(job: JobSettings) -> None:
    """A fit file is only given with a correction, and is readable."""
    if job.embed.correction == "none":
        if job.fit.correction_fit:
            raise SettingsError("--correction-fit: has no effect with --correction none")
        return
    if job.fit.correction_fit:
        check_readable_file("--correction-fit", job.fit.correction_fit)
        try:
            CorrectionFit.load(job.fit.correction_fit)
        except SettingsError as e:
            raise PathError(f"--correction-fit {e}") from None


def _check_numbers(job: JobSettings) -> None:
    positive = {"--shard-size": job.output.shard_size, "--batch-tokens": job.speed.batch_tokens,
                "--bucket-step": job.speed.bucket_step,
                "--vocab-chunk": job.speed.vocab_chunk, "--limit": job.input.limit,
                "--matryoshka-dim": job.embed.matryoshka_dim}
    for flag, value in positive.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise SettingsError(f"{flag}: must be a positive integer, got {value!r}")
    if job.devices.global_mesh and not job.devices.mesh:
        raise SettingsError("--global-mesh: needs --mesh (e.g. --mesh data=2,model=4)")


def _not_the_input(flag: str, path, input_path) -> None:
    """A file the job writes must not be its corpus (appending rejects to it, or overwriting it
    with the summary, would destroy the input)."""
    if not path or str(input_path) == STDIN:
        return
    inputs = [Path(input_path)] + [Path(input_path) / n for n in BEIR_CORPUS_FILES]
    if any(p.exists() and Path(path).exists() and os.path.samefile(p, path) for p in inputs):
        raise PathError(f"{_where(flag, path)}: is the input corpus; give another file")


def check_input(inp: InputSettings) -> None:
    """The corpus can be opened and its format told (``-`` is standard input)."""
    path, fmt = inp.input, inp.format
    if path is None:
        raise SettingsError("--input: a corpus file or BEIR folder is required")
    if fmt not in FORMATS:
        raise SettingsError(f"--format: must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if str(path) == STDIN:
        if fmt in ("beir", "parquet"):
            raise SettingsError(f"--input -: format {fmt!r} needs a path, not standard input")
        return
    p = Path(path)
    if not p.exists():
        raise PathError(f"--input {path}: no such file or directory")
    if fmt == "auto":
        try:
            fmt = detect_format(p)
        except CorpusError:
            raise PathError(f"--input {path}: cannot tell the format from the file name; pass "
                            f"--format (one of {', '.join(FORMATS[1:])})") from None
    if fmt == "beir":
        _check_beir(path, p)
        return
    if p.is_dir():
        raise PathError(f"--input {path}: is a directory; format {fmt!r} needs a file "
                        "(a BEIR folder is read with --format beir or auto)")
    check_readable_file("--input", path)
    if fmt == "parquet":
        parquet_columns(parquet_file(p), p, inp.id_field, tuple(inp.text_fields))
    else:
        _check_first_line(p)


def _check_first_line(p: Path) -> None:
    """A UTF-16/32 file is refused here, before the model loads and the store is created."""
    with open_binary(p) as f:
        check_encoding(f.readline(1 << 16), name_of(p))


def _check_beir(path, p: Path) -> None:
    if not p.is_dir():
        raise PathError(f"--input {path}: format 'beir' needs a BEIR dataset folder holding "
                        "corpus.jsonl")
    for name in BEIR_CORPUS_FILES:
        if (p / name).is_file():
            check_readable_file("--input", p / name)
            return
    raise PathError(f"--input {path}: BEIR folder without corpus.jsonl")


def _where(flag: str, path) -> str:
    """How a message names a path: ``--flag PATH``, or the path alone for a positional argument
    (``flag=""``)."""
    return f"{flag} {path}" if flag else str(path)


def check_readable_file(flag: str, path) -> None:
    """``path`` is a file this process can open for reading."""
    p = Path(path)
    if not p.exists():
        raise PathError(f"{_where(flag, path)}: no such file")
    if p.is_dir():
        raise PathError(f"{_where(flag, path)}: is a directory, not a file")
    try:
        with open(p, "rb"):
            pass
    except OSError as e:
        raise PathError(f"{_where(flag, path)}: cannot read it: {e.strerror or e}") from None


def _existing_ancestor(p: Path) -> Path:
    """The nearest path at or above ``p`` that exists (``p`` made absolute first)."""
    p = Path(os.path.abspath(p))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_writable_dir(flag: str, path, d: Path, what: str) -> None:
    if not d.is_dir():
        raise PathError(f"{_where(flag, path)}: {d} is a file, not a directory")
    if not os.access(d, os.W_OK | os.X_OK):
        raise PathError(f"{_where(flag, path)}: {what} {d} is not writable")
    if os.statvfs(d).f_flag & os.ST_RDONLY:
        raise PathError(f"{_where(flag, path)}: {d} is on a read-only file system")


def check_output_dir(flag: str, path) -> None:
    """``path`` is a writable directory, or can be created as one (its nearest existing ancestor
    is a writable directory)."""
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise PathError(f"{_where(flag, path)}: exists and is not a directory")
        _check_writable_dir(flag, path, p, "directory")
        return
    _check_writable_dir(flag, path, _existing_ancestor(p), "directory")


def check_output_file(flag: str, path, *, parent_may_be_created: bool = False) -> None:
    """``path`` can be written as a file: not a directory, its parent a writable directory (with
    ``parent_may_be_created``, the nearest existing ancestor), an existing file writable."""
    p = Path(path)
    if p.is_dir():
        raise PathError(f"{_where(flag, path)}: is a directory; give a file name")
    parent = Path(os.path.abspath(p)).parent
    if not parent.exists():
        if not parent_may_be_created:
            ancestor = _existing_ancestor(parent)
            if not ancestor.is_dir():
                raise PathError(f"{_where(flag, path)}: {ancestor} is a file, not a directory")
            raise PathError(f"{_where(flag, path)}: directory {parent} does not exist")
        parent = _existing_ancestor(parent)
    _check_writable_dir(flag, path, parent, "directory")
    if p.exists() and not os.access(p, os.W_OK):
        raise PathError(f"{_where(flag, path)}: the file is not writable")
