import importlib.util
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("KEYTOK_JAX_TEST_COMPILE_CACHE", str(Path.home() / ".cache/keytok_jax/jit-tests")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SMOLLM2_DIR = SHARED / "models" / "smollm2-135m-instruct"
SMOLLM2_GGUF = SMOLLM2_DIR / "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_benchmark(name: str):
    """A script under benchmarks/ (not a package) as a module, to test its functions directly."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def shared_or_skip(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found: ../shared (datasets and models) is absent in this clone")
    return path


@pytest.fixture(autouse=True)
def _isolated_param_cache(tmp_path_factory, monkeypatch):
    # Converted-parameter caches of one test never leak into another.
    monkeypatch.setenv("KEYTOK_JAX_CACHE", str(tmp_path_factory.getbasetemp() / "param-cache"))


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """A tiny random Llama with SmolLM2's real tokenizer: CLI and job tests run in seconds."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    shared_or_skip(SMOLLM2_DIR)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=2)
    folder = tmp_path_factory.mktemp("tiny-smol")
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(SMOLLM2_DIR / f, folder / f)
    return folder


def embed_runner(tiny_folder, capsys, *base_flags: str):
    """``run(corpus, out, *flags)`` → (exit status, stderr, summary dict or None): the embed CLI
    on the tiny model with ``base_flags`` (max length, top-k, shard size) and ``flags``."""
    import json

    from keytok_jax.cli.embed import main as embed_main

    def run(corpus, out, *flags):
        summary = out.parent / f"{out.name}.summary.json"
        summary.unlink(missing_ok=True)
        rc = embed_main(["--model", str(tiny_folder), "--input", str(corpus), "--output", str(out),
                         *base_flags, "--no-progress", "--summary-json", str(summary), *flags])
        err = capsys.readouterr().err
        return rc, err, json.loads(summary.read_text()) if summary.exists() else None
    return run


def one_error(capsys, *expected: str) -> str:
    """The command's standard error is one ``error:`` line holding ``expected``, no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]
