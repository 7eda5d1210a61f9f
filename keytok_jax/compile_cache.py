"""JAX's persistent compilation cache for keytok's jobs.

A job compiles one program per batch shape: about 10 s each on an H200 for SmolLM2-135M and
Llama-3.2-1B shapes (benchmarks/accelerator.py, 12 shapes in 66-135 s), seconds each on a 2-core
CPU. With the cache, a rerun, a resumed job or the next corpus of the same shapes on the same
machine loads the compiled programs instead. JAX keys each entry on the program, the compile
options, jaxlib and the device, so an entry never serves another setup.

``"auto"`` (the jobs' default) is ``$KEYTOK_JAX_CACHE/xla`` (``~/.cache/keytok_jax/xla``) unless
the process already configured a cache (``JAX_COMPILATION_CACHE_DIR`` or ``jax.config``), which
it leaves alone; a directory sets it; ``"none"`` sets none (a cache configured through JAX stays).
It must be set before the process's first compile to take effect (the job does so before loading
the model).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import jax

from .loading.cache import cache_root

__all__ = ["enable_compile_cache", "default_compile_cache"]

# Only programs that took this long to compile are written (JAX's default is 1 s): the step's
# shapes take longer on every device measured; tiny helper programs are not worth a file.
MIN_COMPILE_SECONDS = 0.5


def default_compile_cache() -> Path:
    return cache_root() / "xla"


def enable_compile_cache(setting: str | os.PathLike | None = "auto") -> str | None:
    """Point JAX's persistent compilation cache at ``setting`` (see the module doc); the directory
    in use, or None when off. An unwritable directory is a warning on stderr, not an error: the
    job then compiles as if there were no cache."""
    if setting is None or str(setting) == "none":
        return None
    configured = jax.config.jax_compilation_cache_dir
    if str(setting) == "auto":
        if configured:
            return configured
        setting = default_compile_cache()
    path = Path(setting).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        writable = os.access(path, os.W_OK)
    except OSError:
        writable = False
    if not writable:
        print(f"warning: compilation cache {path} is not writable: compiling without it", file=sys.stderr)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return str(path)
