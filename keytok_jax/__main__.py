"""``python -m keytok_jax TEXT ...``: see :mod:`keytok_jax.cli.inspect`."""
import sys

from .cli.inspect import main

if __name__ == "__main__":
    sys.exit(main())
