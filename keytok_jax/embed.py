"""``python -m keytok_jax.embed``: the command lives in :mod:`keytok_jax.cli.embed`, the job in
:mod:`keytok_jax.pipeline.job`; this module keeps the old names importable."""
import sys

from .cli.embed import build_parser, main, resolve_options
from .pipeline.job import run

__all__ = ["main", "build_parser", "resolve_options", "run"]

if __name__ == "__main__":
    sys.exit(main())
