"""``python -m keytok_jax.show STORE``: see :mod:`keytok_jax.cli.show`."""
from __future__ import annotations

import sys

from .cli.show import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
