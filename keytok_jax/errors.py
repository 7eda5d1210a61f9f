"""The one base class of keytok_jax's errors.

Every expected failure (bad input, bad settings, a store in the wrong state, a dataset or index
that cannot be read) raises a :class:`KeytokError` subclass with a message meant for the user.
Library code never exits; the command layer (:mod:`keytok_jax.cli.common`) alone turns these into
one ``error:`` line and exit status 2. Subclasses that replaced ``ValueError`` ones keep
``ValueError`` as a second base so callers catching it still do.
"""
from __future__ import annotations

__all__ = ["KeytokError", "SettingsError", "CorpusError", "DatasetError", "SearchIndexError"]


class KeytokError(Exception):
    """An expected failure with a message for the user (the CLI prints ``error: <message>``)."""


class SettingsError(KeytokError, ValueError):
    """A setting, flag, preset file or combination of them that cannot be used."""


class CorpusError(KeytokError, ValueError):
    """Bad corpus input; the message starts with ``FILE:LINE:`` (or ``FILE:``) and names the problem."""


class DatasetError(KeytokError, ValueError):
    """A BEIR dataset folder (queries, qrels) that cannot be read."""


class SearchIndexError(KeytokError):
    """A saved search index that cannot be used (missing, damaged or of another format)."""


class PathError(SettingsError):
    """A file or directory named by a setting (``--input``, ``--output``, ``--rejects``, ...)
    that cannot be read or written as asked; the message starts with the flag and the path."""


__all__ += ["PathError"]
