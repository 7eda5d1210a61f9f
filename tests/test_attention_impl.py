"""Attention implementations: ``impl="fused"`` (jax.nn.dot_product_attention; XLA on CPU, cuDNN on
GPU) gives the hidden states of ``impl="xla"`` (the blocked einsums) for each family's tiny config of
the port tests, causal and bidirectional, with left and right padding, GQA/MQA and sliding windows;
what the fused path cannot do (logit softcapping) it refuses."""
from functools import lru_cache

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from parity import LENGTHS, pad, random_texts  # skips the module without torch
import test_port_gemma3
import test_port_gpt2
import test_port_gpt_neo
import test_port_gpt_neox
import test_port_llama
import test_port_opt
import test_port_qwen3

from keytok_jax.model import KeytokModel
from keytok_jax.models import config_from_hf, layers

TOL = 1e-5

# name → HF config (or a function building one), taken from the port tests
CASES = {
    "llama-gqa": test_port_llama.CASES["llama-gqa-tied-bias"],
    "llama3-mqa": test_port_llama.CASES["llama3-rope-mqa"],
    "mistral-sliding-gqa": test_port_llama.CASES["mistral-sliding"],
    "qwen2-sliding-layers": test_port_llama.CASES["qwen2-sliding-layers"],
    "qwen3-sliding-mqa": test_port_qwen3.CASES["qwen3-headdim16-sliding-layer-types-mqa"],
    "gemma3-sliding-gqa": test_port_gemma3.CASES["gemma3-gqa"],
    "gpt2": test_port_gpt2.CASES["gpt2-scaled-bin"],
    "gpt-neox-rot25": test_port_gpt_neox.CASES["neox-parallel-rot25"],
    "gpt-neo-local": test_port_gpt_neo.CASES["neo-global-local-w4"],
    "opt-post-ln-proj": test_port_opt.CASES["opt-post-ln-proj"],
}


def random_model(cfg, seed: int = 0) -> KeytokModel:
    """A KeytokModel of ``cfg`` with random float32 parameters (std 0.2: attention far from uniform)."""
    model = KeytokModel(config=cfg, params=None)
    ids = np.zeros((1, 4), np.int32)
    abstract = jax.eval_shape(model.module().init, jax.random.PRNGKey(0), ids, np.ones_like(ids))
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda a: jnp.asarray(rng.normal(0, 0.2, a.shape), jnp.float32),
                          nn.unbox(abstract["params"]))
    return KeytokModel(config=cfg, params=params)


@lru_cache(maxsize=None)
def family_model(name: str) -> KeytokModel:
    hf = CASES[name]() if callable(CASES[name]) else CASES[name]
    return random_model(config_from_hf(hf))


def mixed_batch(vocab: int):
    """The port tests' texts, right-padded then left-padded, in one [6, 16] batch."""
    texts = random_texts(vocab, LENGTHS)
    right, left = pad(texts, "right"), pad(texts, "left")
    return np.concatenate([right[0], left[0]]), np.concatenate([right[1], left[1]])


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
@pytest.mark.parametrize("name", list(CASES))
def test_fused_equals_xla(name, attention):
    model = family_model(name)
    ids, mask = mixed_batch(model.config.vocab_size)
    out = {impl: [np.asarray(a) for a in model.hidden_states(ids, mask, attention, all_layers=True, impl=impl)]
           for impl in layers.ATTENTION_IMPLS}
    (final_x, layers_x), (final_f, layers_f) = out["xla"], out["fused"]
    assert np.isfinite(final_f).all() and np.isfinite(layers_f).all()   # padding rows included
    real = mask.astype(bool)
    diff_final = float(np.abs(final_x[real] - final_f[real]).max())
    diff_layers = float(np.abs(layers_x[:, real] - layers_f[:, real]).max())
    print(name, attention, f"final {diff_final:.2g}", f"layers {diff_layers:.2g}")
    assert diff_final <= TOL and diff_layers <= TOL, (diff_final, diff_layers)


@pytest.mark.parametrize("kv", [4, 2, 1])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("side", ["left", "right"])
def test_attend_fused_equals_xla(side, causal, kv):
    """Layer level, longer than one query block, with a window and a row of padding only."""
    b, t, h, hd = 4, 150, 4, 8
    rng = jax.random.split(jax.random.PRNGKey(1), 3)
    q = jax.random.normal(rng[0], (b, t, h, hd))
    k, v = (jax.random.normal(r, (b, t, kv, hd)) for r in rng[1:])
    lengths = np.array([150, 97, 3, 0])[:, None]
    idx = np.arange(t)[None]
    valid = jnp.asarray(idx < lengths if side == "right" else idx >= t - lengths)
    pos = layers.positions_from_mask(valid)
    real = np.asarray(valid)
    for window in (0, 7):
        mask = layers.attention_mask(pos, layers.text_mask(valid), causal, window)
        xla = np.asarray(layers.attend(q, k, v, mask, 0.3, causal=causal, impl="xla"))
        fused = np.asarray(layers.attend(q, k, v, mask, 0.3, causal=causal, impl="fused"))
        assert np.isfinite(fused).all()
        np.testing.assert_allclose(fused[real], xla[real], atol=TOL, rtol=0)


def test_softcap_is_refused():
    q = jnp.ones((1, 4, 2, 8))
    mask = jnp.ones((1, 1, 4, 4), bool)
    with pytest.raises(ValueError, match="does not support attention logit softcapping"):
        layers.attend(q, q, q, mask, 0.3, softcap=30.0, impl="fused")


def test_softcap_model_is_refused():
    """The refusal reaches the attention inside the scanned blocks (impl is threaded down)."""
    cfg = family_model("llama-gqa").config.replace(attn_softcap=50.0)
    model = KeytokModel(config=cfg, params=family_model("llama-gqa").params)
    ids, mask = mixed_batch(cfg.vocab_size)
    with pytest.raises(ValueError, match=r"softcapping \(attn_softcap=50.0\)"):
        model.hidden_states(ids, mask, impl="fused")


def test_fused_on_gpu_needs_half_precision(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    q = jnp.ones((1, 4, 2, 8), jnp.float32)
    with pytest.raises(ValueError, match="bfloat16 or float16, not float32"):
        layers.attend(q, q, q, jnp.ones((1, 1, 4, 4), bool), 0.3, impl="fused")


def test_impl_is_a_static_module_attribute():
    model = family_model("gpt2")
    xla, fused = model.module(impl="xla"), model.module(impl="fused")
    assert model.module() == xla and xla != fused and hash(xla) != hash(fused)
    assert fused.attention_impl == "fused"
    with pytest.raises(ValueError, match="attention impl must be one of"):
        model.module(impl="flash")


def test_the_job_with_fused_attention_writes_the_same_vectors(tiny_folder, capsys, tmp_path):
    """--attention-impl fused through the corpus job: the same top-k ids, weights and dense
    vectors (up to float rounding) as the default."""
    import json

    from conftest import embed_runner
    from keytok_jax import store as store_lib

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"_id": str(i), "text": t}) + "\n" for i, t in enumerate(
        ["protein folding in the cell", "cats chase mice", "the stock market fell today",
         "a recipe for apple pie with cinnamon and a long list of steps to follow"])))
    run = embed_runner(tiny_folder, capsys, "--max-length", "32", "--top-k", "8", "--dense")
    stores = {}
    for impl in ("xla", "fused"):
        rc, err, _ = run(corpus, tmp_path / impl, "--attention-impl", impl)
        assert rc == 0, err
        stores[impl] = store_lib.open(tmp_path / impl)
    read = lambda s, name: np.asarray(getattr(s, name).read().result())  # noqa: E731
    np.testing.assert_array_equal(read(stores["xla"], "token_ids"), read(stores["fused"], "token_ids"))
    for name in ("token_weights", "dense"):
        np.testing.assert_allclose(read(stores["xla"], name), read(stores["fused"], name), atol=1e-5)


def test_dtype_auto_is_bfloat16_on_accelerators_only(monkeypatch, tiny_folder, capsys, tmp_path):
    """The accelerator path's default precision: ``--dtype auto`` (the default) is float32 on
    CPU — what the store records, so stores written before resume — and bfloat16 on GPU/TPU."""
    from types import SimpleNamespace

    from conftest import embed_runner
    from keytok_jax import store as store_lib
    from keytok_jax.loading import resolve_dtype

    assert resolve_dtype("auto") == "float32" and resolve_dtype("bfloat16") == "bfloat16"
    corpus = tmp_path / "c.txt"
    corpus.write_text("protein folding in the cell\ncats chase mice\n")
    rc, err, _ = embed_runner(tiny_folder, capsys, "--max-length", "32")(corpus, tmp_path / "s")
    assert rc == 0, err
    assert store_lib.open(tmp_path / "s").settings["dtype"] == "float32"
    for platform in ("gpu", "tpu"):
        monkeypatch.setattr(jax, "default_backend", lambda p=platform: p)
        assert resolve_dtype("auto") == "bfloat16" and resolve_dtype("float32") == "float32"
    mesh = SimpleNamespace(devices=np.array([SimpleNamespace(platform="cpu")]))
    assert resolve_dtype("auto", mesh) == "float32"     # the mesh's devices decide, not the default
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("float16")


def test_attention_impl_auto_is_fused_on_nvidia_gpus_in_half_precision(tiny_folder):
    """``auto`` (the jobs' default): cuDNN's fused kernel where it runs, the einsums elsewhere."""
    from types import SimpleNamespace

    import keytok_jax

    def device(platform, version=""):
        return SimpleNamespace(platform=platform, client=SimpleNamespace(platform_version=version))

    cuda, rocm, cpu = device("gpu", "PJRT C API\ncuda 13000"), device("gpu", "rocm 6.4"), device("cpu")
    assert layers.resolve_attention_impl("auto", "bfloat16", cuda) == "fused"
    assert layers.resolve_attention_impl("auto", jnp.float16, cuda) == "fused"
    assert layers.resolve_attention_impl("auto", "float32", cuda) == "xla"      # cuDNN takes half only
    assert layers.resolve_attention_impl("auto", "bfloat16", rocm) == "xla"
    assert layers.resolve_attention_impl("auto", "bfloat16", cpu) == "xla"
    assert layers.resolve_attention_impl("fused", "float32", cpu) == "fused"    # explicit choices kept
    with pytest.raises(ValueError, match="attention impl must be one of"):
        layers.resolve_attention_impl("flash", "bfloat16", cuda)
    model = keytok_jax.load_model(str(tiny_folder))
    assert keytok_jax.Embedder(model).attention_impl == "xla"                    # this CPU
    assert keytok_jax.Embedder(model, attention_impl="fused").attention_impl == "fused"
