"""``python -m keytok_jax.show STORE``: print a store's manifest summary and the aligned tokens of
its first rows, decoded with the tokenizer of the model that wrote it."""
from __future__ import annotations

import argparse

import numpy as np

from .. import store as store_lib
from ..errors import SettingsError
from ..loading import load_model
from .common import new_parser, run_command

__all__ = ["main", "show"]


def build_parser() -> argparse.ArgumentParser:
    p = new_parser("python -m keytok_jax.show", __doc__)
    p.add_argument("store", help="store directory written by python -m keytok_jax.embed")
    p.add_argument("--rows", type=int, default=10, help="rows to print (default: %(default)s)")
    p.add_argument("--tokens", type=int, default=10, help="tokens per row (default: %(default)s)")
    p.add_argument("--model", help="model whose tokenizer decodes ids (default: the store's)")
    return p


def show(args: argparse.Namespace) -> None:
    for flag, value in (("--rows", args.rows), ("--tokens", args.tokens)):
        if value < 0:
            raise SettingsError(f"{flag}: must be 0 or more, got {value}")
    s = store_lib.open(args.store)
    settings = s.manifest["settings"]
    print(f"{args.store}: {len(s)} rows, k={s.manifest['k']}, "
          f"dense={'yes' if s.dense is not None else 'no'}, model={settings.get('model')}, "
          f"pooling={settings.get('pooling')}, prompt={settings.get('prompt')}, "
          f"correction={settings.get('correction', 'none')}")
    tokenizer = load_model(args.model or settings["model"],
                           dtype=settings.get("dtype", "float32")).tokenizer
    n = min(args.rows, len(s))
    ids = np.asarray(s.token_ids[:n, : args.tokens].read().result())
    weights = np.asarray(s.token_weights[:n, : args.tokens].read().result())
    for doc_id, row, w in zip(s.ids[:n], ids, weights):
        shown = ", ".join(f"{tokenizer.decode([int(t)])!r}:{x:.1f}" for t, x in zip(row, w)
                          if t >= 0)
        print(f"{doc_id}: {shown or '(empty)'}")


def main(argv=None) -> int:
    return run_command(build_parser(), argv, show)
