"""``python -m keytok_jax.finetune``: see :mod:`keytok_jax.cli.finetune` (the command) and
:mod:`keytok_jax.train` (the library)."""
from __future__ import annotations

import sys

from .cli.finetune import build_parser, main
from .train.batches import SEQ_MULTIPLE, Batches
from .train.checkpoint import RUN_FIELDS
from .train.export import export
from .train.loop import sts_spearman, train

__all__ = ["build_parser", "main", "train", "sts_spearman", "export", "Batches", "SEQ_MULTIPLE",
           "RUN_FIELDS"]

if __name__ == "__main__":
    sys.exit(main())
