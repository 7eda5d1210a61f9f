"""The jobs' persistent compilation cache (keytok_jax.compile_cache): a second job of the same
shapes loads every program from the cache (it writes no new entry) and writes the same store."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT
from keytok_jax import store as store_lib
from keytok_jax.compile_cache import default_compile_cache, enable_compile_cache


def test_auto_leaves_a_configured_cache_and_none_turns_it_off(tmp_path, monkeypatch):
    configured = jax.config.jax_compilation_cache_dir          # conftest's test cache
    assert configured
    assert enable_compile_cache("auto") == configured
    assert enable_compile_cache("none") is None and enable_compile_cache(None) is None
    assert jax.config.jax_compilation_cache_dir == configured
    monkeypatch.setenv("KEYTOK_JAX_CACHE", str(tmp_path / "kc"))
    assert default_compile_cache() == tmp_path / "kc" / "xla"


def test_unusable_directory_is_a_warning(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    before = jax.config.jax_compilation_cache_dir
    assert enable_compile_cache(blocker / "xla") is None
    err = capsys.readouterr().err
    assert err.startswith("warning: compilation cache") and "compiling without it" in err
    assert jax.config.jax_compilation_cache_dir == before


@pytest.mark.slow
def test_second_job_loads_every_program_from_the_cache(tiny_folder, tmp_path):
    corpus = tmp_path / "c.jsonl"
    texts = ["protein folding in the cell", "cats chase mice", "the stock market fell today " * 5,
             "a recipe for apple pie with cinnamon and a long list of steps to follow " * 3]
    corpus.write_text("".join(json.dumps({"_id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))
    cache = tmp_path / "xla"
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}

    def job(name):
        summary = tmp_path / f"{name}.json"
        proc = subprocess.run(
            [sys.executable, "-m", "keytok_jax.embed", "--model", str(tiny_folder), "--input", str(corpus),
             "--output", str(tmp_path / name), "--max-length", "96", "--top-k", "8", "--dense",
             "--no-progress", "--compile-cache", str(cache), "--summary-json", str(summary)],
            capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(summary.read_text()), sorted(p.name for p in cache.iterdir())

    first, entries = job("a")
    assert first["compile_cache"] == str(cache) and first["compiles"] > 0
    assert any("jit" in e for e in entries), entries          # the step's programs were written
    second, again = job("b")
    assert second["compile_cache"] == str(cache)
    assert again == entries                                   # every program came from the cache
    a, b = store_lib.open(tmp_path / "a"), store_lib.open(tmp_path / "b")
    for name in ("token_ids", "token_weights", "dense"):
        np.testing.assert_array_equal(np.asarray(getattr(a, name).read().result()),
                                      np.asarray(getattr(b, name).read().result()))
