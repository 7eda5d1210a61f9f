"""What every command shares: the one place where errors become ``error:`` lines and exit codes,
flags generated from the settings classes, and printing of key/value summaries."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Callable, Iterable, Mapping

from ..errors import KeytokError

__all__ = ["run_command", "new_parser", "add_settings", "print_table"]

# Builtin errors that libraries under keytok (json, numpy, tensorstore, the OS) raise for bad
# input: reported like ours. Anything else is a bug and keeps its traceback.
USER_ERRORS = (KeytokError, ValueError, OSError)


def run_command(body: Callable[[], int | None]) -> int:
    """Run a command's body; an expected failure becomes one ``error:`` line and exit status 2."""
    try:
        return body() or 0
    except USER_ERRORS as e:
        message = str(e)
        if isinstance(e, OSError) and e.filename is not None and e.strerror:
            message = f"{e.filename}: {e.strerror}"
        print(message if message.startswith("error:") else f"error: {message}", file=sys.stderr)
        return 2


def new_parser(prog: str, doc: str | None, **kw) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter, **kw)


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
