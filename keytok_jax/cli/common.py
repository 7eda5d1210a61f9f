"""What every command shares: the one place where errors become ``error:`` lines and exit codes,
flags generated from the settings classes, and printing of key/value summaries.

Errors (every command, through :func:`run_command`): an expected failure -- a bad or missing flag,
a setting that cannot be used, a missing or unreadable file, a permission, a read-only or full
disk, a path that is not a directory, a missing, incomplete or damaged store, bad input -- is
printed as one line ``error: <path or flag>: <problem>`` on standard error (followed only by
indented lines when it lists several problems, as a damaged store's) and the command exits
with status 2. Ctrl-C prints ``error: interrupted`` and exits with 130 (128 + SIGINT, what shells
report for an interrupted command); a store being written is left resumable. A traceback is
printed only with ``--debug`` (every command takes it) or the environment variable
``KEYTOK_DEBUG=1``; an unexpected exception (a bug) keeps its traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import traceback
from typing import Any, Callable, Iterable, Mapping

from ..errors import KeytokError, SettingsError

__all__ = ["run_command", "new_parser", "Parser", "UsageError", "add_settings", "print_table",
           "error_line", "EXIT_ERROR", "EXIT_INTERRUPTED", "DEBUG_ENV"]

# Builtin errors that libraries under keytok (json, numpy, tensorstore, gzip, the OS) raise for
# bad input: reported like ours. Anything else is a bug and keeps its traceback.
USER_ERRORS = (KeytokError, ValueError, OSError, EOFError)
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
DEBUG_ENV = "KEYTOK_DEBUG"
DEBUG_HELP = (f"on an error, also print the Python traceback (or set {DEBUG_ENV}=1). Without it "
              "an expected error is one line 'error: <path or flag>: <problem>' and exit status "
              "2; Ctrl-C is 'error: interrupted' and exit status 130")


class UsageError(SettingsError):
    """A command line argparse refuses (unknown flag, missing or malformed value)."""


def _usage_message(message: str) -> str:
    """argparse's wording as ``<flag>: <problem>``."""
    if m := re.match(r"argument (\S+): (.*)", message, re.S):
        return f"{m[1]}: {m[2]}"
    if m := re.match(r"the following arguments are required: (.*)", message, re.S):
        return f"{m[1]}: required"
    if m := re.match(r"unrecognized arguments: (.*)", message, re.S):
        return f"{m[1]}: unrecognized argument (see --help)"
    return message


class Parser(argparse.ArgumentParser):
    """An argument parser that raises :class:`UsageError` instead of printing the usage and
    exiting, so a bad flag is reported like every other error; every parser (subcommands too)
    takes ``--debug``."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                          help=DEBUG_HELP)

    def error(self, message: str):
        raise UsageError(_usage_message(message))


def error_line(e: BaseException) -> str:
    """The one ``error:`` line of an expected failure."""
    message = str(e)
    if isinstance(e, OSError) and e.strerror:
        names = [str(n) for n in (e.filename, e.filename2) if n is not None]
        message = ": ".join(names + [e.strerror])
    elif not message:
        message = type(e).__name__
    # One line: line breaks inside a message (often a library's text quoted in ours) become
    # spaces; only indented detail lines (a list of problems, e.g. a damaged store's) stay.
    message = re.sub(r"\s*\n(?![ \t])\s*", " ", message.strip())
    return message if message.startswith("error:") else f"error: {message}"


def run_command(parser: argparse.ArgumentParser, argv,
                body: Callable[[argparse.Namespace], int | None]) -> int:
    """Parse ``argv`` and run ``body(args)``: an expected failure (see the module doc) becomes one
    ``error:`` line on standard error and exit status 2, Ctrl-C ``error: interrupted`` and 130.
    ``--debug`` is taken out of ``args`` before ``body`` sees them."""
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        args = parser.parse_args(argv)
        debug = vars(args).pop("debug", False) or debug
        return body(args) or 0
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except USER_ERRORS as e:
        if debug:
            traceback.print_exc()
        print(error_line(e), file=sys.stderr)
        return EXIT_ERROR


def new_parser(prog: str, doc: str | None, **kw) -> Parser:
    return Parser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                  **kw)


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


def add_settings(parser, classes: Iterable[type], shown: Mapping[str, Any] | None = None, *,
                 skip: Iterable[str] = (), suppress: bool = True) -> None:
    """One flag per field of ``classes``, from the field's :func:`keytok_jax.settings.setting`
    metadata. ``shown`` gives the default printed in the help (the command's resolved defaults;
    without it the field's own). With ``suppress`` a flag the user did not give is absent from
    the parsed namespace, so a preset below it is not overridden."""
    skip = set(skip)
    for cls in classes:
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if f.name in skip or meta.get("flag") == "":
                continue
            names = [meta.get("flag") or "--" + f.name.replace("_", "-")]
            if meta.get("short"):
                names.insert(0, meta["short"])
            kw: dict = {"help": meta.get("help", ""), "dest": f.name}
            default = (shown or {}).get(f.name, f.default)
            if suppress:
                kw["default"] = argparse.SUPPRESS
            else:
                kw["default"] = default
            if meta.get("required"):
                kw["required"] = True
            elif default is not None and default is not False and default != ():
                kw["help"] += f" (default: {_show(default)})"
            if isinstance(f.default, bool):
                kw["action"] = "store_true"
            else:
                if meta.get("choices"):
                    kw["choices"] = list(meta["choices"])
                kind = meta.get("type") or (type(f.default) if isinstance(f.default, (int, float))
                                            else None)
                if kind is None and "int" in str(f.type) and "str" not in str(f.type):
                    kind = int
                if kind is not None:
                    kw["type"] = kind
                if meta.get("nargs"):
                    kw["nargs"] = meta["nargs"]
                if meta.get("metavar"):
                    kw["metavar"] = meta["metavar"]
            parser.add_argument(*names, **kw)


def print_table(summary: Mapping[str, Any]) -> None:
    """``key  value`` lines, keys aligned."""
    width = max((len(k) for k in summary), default=0)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in summary.items()))
