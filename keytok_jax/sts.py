"""``python -m keytok_jax.sts``: see :mod:`keytok_jax.cli.sts` (the command) and
:mod:`keytok_jax.analysis.sts` (``read_sts_pairs``, ``evaluate_sts``, re-exported here)."""
from __future__ import annotations

import sys

from .analysis.sts import evaluate_sts, read_sts_pairs
from .cli.sts import main

__all__ = ["evaluate_sts", "main", "read_sts_pairs"]

if __name__ == "__main__":
    sys.exit(main())
