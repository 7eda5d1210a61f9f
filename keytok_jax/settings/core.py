"""How settings are declared, read from presets and resolved; no defaults live here.

A settings class is a frozen dataclass whose fields are declared with :func:`setting`: the default
and the user-facing help (choices, flag type) sit on the field, so the flags of every command are
generated from the same declaration (:func:`keytok_jax.cli.flags.add_settings`) and the help text
can never disagree with the default. Every command resolves the same way:

    class defaults  →  the command's built-in preset  →  --config FILE.yaml  →  the flags given

:func:`resolve` does that merge and refuses a preset key that no settings class of the command
knows (a typo in a YAML file must not be silently ignored).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from ..errors import SettingsError

__all__ = ["setting", "setting_fields", "defaults", "read_preset", "resolve", "build"]

# Preset keys that describe a preset rather than set anything.
PRESET_INFO_KEYS = ("description",)


def setting(default: Any = None, help: str = "", *, choices: Iterable | None = None,
            type: Any = None, nargs: str | None = None, metavar: str | None = None,
            flag: str | None = None, short: str | None = None, required: bool = False,
            default_factory=None):
    """A dataclass field carrying its flag's help. ``flag`` overrides the generated ``--name``;
    ``flag=""`` means the field is not a flag (a preset key only)."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "type": type,
            "nargs": nargs, "metavar": metavar, "flag": flag, "short": short,
            "required": required}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def setting_fields(cls) -> list[dataclasses.Field]:
    return list(dataclasses.fields(cls))


def defaults(*classes) -> dict:
    """Field name → default of every field of ``classes`` (later classes win on a shared name)."""
    out: dict = {}
    for cls in classes:
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


def read_preset(path, known: Iterable[str]) -> dict:
    """The keys of a YAML preset; unknown keys raise :class:`SettingsError` naming them."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise SettingsError(f"{p}: cannot read the preset: {e.strerror or e}") from None
    try:
        preset = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise SettingsError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(preset, dict):
        raise SettingsError(f"{p}: a preset is a YAML mapping of setting: value")
    unknown = set(preset) - set(known) - set(PRESET_INFO_KEYS)
    if unknown:
        raise SettingsError(f"{path}: unknown keys {sorted(unknown)}")
    return {k: v for k, v in preset.items() if k not in PRESET_INFO_KEYS}


def resolve(classes: Iterable[type], flags: Mapping[str, Any], *, preset: Mapping | None = None,
            config=None, extra: Mapping[str, Any] | None = None) -> dict:
    """The flat dict of every setting: class defaults, then ``preset`` (a command's built-in),
    then the ``config`` YAML file, then ``flags`` (only the flags the user gave). ``extra`` adds
    keys the command accepts besides its settings classes (with their defaults)."""
    classes = list(classes)
    opts = defaults(*classes)
    opts.update(extra or {})
    opts.update(preset or {})
    if config is not None:
        opts.update(read_preset(config, opts))
    opts.update(flags)
    return opts


def build(cls, opts: Mapping[str, Any]):
    """An instance of settings class ``cls`` from the matching keys of a flat dict."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in opts.items() if k in names})
