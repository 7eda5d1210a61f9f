"""Embedders saved without an LM head (the bare LlamaModel / MistralModel): ``--lm-head`` borrows the
base model's head; without it the error names the fix. Checked against transformers' logits."""
import json
import shutil

import numpy as np
import pytest
import transformers

import keytok_jax
from keytok_jax.retrieval.searcher import embedder_for_store
from keytok_jax.cli.embed import main as embed_main
from keytok_jax.errors import KeytokError
from keytok_jax.loading.sources import WeightError
from keytok_jax.pipeline import model_identity
from keytok_jax import store as store_lib
from conftest import SMOLLM2_DIR, one_error, shared_or_skip
from parity import make_hf_model, torch

TINY = dict(vocab_size=67, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)


def _bare(full, folder):
    """The base model of ``full`` saved alone, as a fine-tuned embedder is (``model.``-less names,
    no lm_head.weight)."""
    full.model.save_pretrained(folder)
    names = _names(folder)
    assert "lm_head.weight" not in names and not any(n.startswith("model.") for n in names)
    return folder


def _names(folder):
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="np") as f:
        return list(f.keys())


@pytest.fixture
def pair(tmp_path):
    full = make_hf_model(transformers.LlamaConfig(**TINY))
    full.save_pretrained(tmp_path / "base")
    return full, tmp_path / "base", _bare(full, tmp_path / "bare")


def test_no_head_names_the_fix(pair):
    _, _, bare = pair
    with pytest.raises(WeightError, match=r"has no LM head \(lm_head\.weight\) and does not tie it to the "
                                          r"embedding; pass --lm-head BASE_MODEL") as e:
        keytok_jax.load_model(str(bare))
    assert isinstance(e.value, KeytokError) and str(bare) in str(e.value)


def test_borrowed_head_gives_transformers_logits(pair):
    full, base, bare = pair
    model = keytok_jax.load_model(str(bare), lm_head=str(base))
    h = np.random.default_rng(0).standard_normal((3, 5, TINY["hidden_size"])).astype(np.float32)
    with torch.no_grad():
        want = full.lm_head(torch.from_numpy(h)).numpy()
    got = np.asarray(model.logits(h))
    assert np.abs(got - want).max() <= 1e-4
    # and the whole model: bare hidden states + borrowed head = the full CausalLM's logits
    ids = np.random.default_rng(1).integers(0, TINY["vocab_size"], size=(2, 7))
    with torch.no_grad():
        want = full(torch.from_numpy(ids)).logits.numpy()
    got = np.asarray(model.logits(model.hidden_states(ids)))
    assert np.abs(got - want).max() <= 1e-4
    assert model.load_info["lm_head"]["source"] == str(base)
    assert model_identity(model)["lm_head"]["source"] == "base"
    # the cached conversion is keyed on the head's files too
    again = keytok_jax.load_model(str(bare), lm_head=str(base))
    assert again.load_info["from_cache"] and np.array_equal(np.asarray(again.lm_head), np.asarray(model.lm_head))


def test_head_from_a_tied_base_is_its_embedding(pair, tmp_path):
    _, _, bare = pair
    tied = make_hf_model(transformers.LlamaConfig(**{**TINY, "tie_word_embeddings": True}), seed=3)
    tied.save_pretrained(tmp_path / "tied")
    model = keytok_jax.load_model(str(bare), lm_head=str(tmp_path / "tied"))
    np.testing.assert_array_equal(np.asarray(model.lm_head), tied.model.embed_tokens.weight.detach().numpy())


def test_wrong_shape_head_refused(pair, tmp_path):
    _, _, bare = pair
    other = make_hf_model(transformers.LlamaConfig(**{**TINY, "vocab_size": 71}))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(WeightError, match=r"has shape \(71, 32\), but .*bare needs \[vocab, hidden\] = \(67, 32\)"):
        keytok_jax.load_model(str(bare), lm_head=str(tmp_path / "other"))


def test_head_source_without_head_refused(pair):
    _, _, bare = pair
    with pytest.raises(WeightError, match="has no LM head either"):
        keytok_jax.load_model(str(bare), lm_head=str(bare))


def test_tied_model_refuses_lm_head(pair, tmp_path):
    _, base, _ = pair
    tied = make_hf_model(transformers.LlamaConfig(**{**TINY, "tie_word_embeddings": True}))
    tied.model.save_pretrained(tmp_path / "tied-bare")   # a bare tied model loads on its own
    assert keytok_jax.load_model(str(tmp_path / "tied-bare")).config.tie_word_embeddings
    with pytest.raises(WeightError, match="ties its LM head to the token embedding"):
        keytok_jax.load_model(str(tmp_path / "tied-bare"), lm_head=str(base))


# ------------------------------------------------------------------ the embed CLI

@pytest.fixture
def smol_pair(tmp_path):
    shared_or_skip(SMOLLM2_DIR)
    cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False)
    full = make_hf_model(cfg)
    base, bare = tmp_path / "base", tmp_path / "bare"
    full.save_pretrained(base)
    _bare(full, bare)
    for folder in (base, bare):
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(SMOLLM2_DIR / f, folder / f)
    corpus = tmp_path / "corpus.jsonl"
    words = "alpha beta gamma delta protein cell risk dose trial effect".split()
    rng = np.random.default_rng(2)
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": " ".join(rng.choice(words, rng.integers(1, 20)))})
                              + "\n" for i in range(12)))
    return base, bare, corpus


def test_cli_without_head_is_one_error(smol_pair, tmp_path, capsys):
    _, bare, corpus = smol_pair
    rc = embed_main(["--model", str(bare), "--input", str(corpus), "--output", str(tmp_path / "s"),
                     "--top-k", "8", "--no-progress"])
    assert rc == 2
    one_error(capsys, "has no LM head", "--lm-head BASE_MODEL")


def test_cli_borrowed_head_equals_full_model(smol_pair, tmp_path, capsys):
    base, bare, corpus = smol_pair
    common = ["--input", str(corpus), "--top-k", "8", "--max-length", "32", "--no-progress"]
    assert embed_main(["--model", str(base), "--output", str(tmp_path / "full")] + common) == 0
    assert embed_main(["--model", str(bare), "--lm-head", str(base), "--output", str(tmp_path / "borrowed")]
                      + common) == 0
    full, borrowed = store_lib.open(tmp_path / "full"), store_lib.open(tmp_path / "borrowed")
    a, b = (np.asarray(s.token_ids.read().result()) for s in (full, borrowed))
    assert a.shape == (12, 8) and np.array_equal(a, b)
    np.testing.assert_allclose(np.asarray(borrowed.token_weights.read().result()),
                               np.asarray(full.token_weights.read().result()), atol=1e-4)
    assert borrowed.settings["model_identity"]["lm_head"]["source"] == "base"
    # a resume with another head is refused
    other = tmp_path / "other"
    shutil.copytree(base, other)
    capsys.readouterr()
    rc = embed_main(["--model", str(bare), "--lm-head", str(other), "--output", str(tmp_path / "borrowed")] + common)
    out = capsys.readouterr()
    assert rc == 2 and "settings['model_identity']" in out.out + out.err and "'source': 'other'" in out.out + out.err
    # the same head resumes
    assert embed_main(["--model", str(bare), "--lm-head", str(base), "--output", str(tmp_path / "borrowed")]
                      + common) == 0
    # queries of the borrowed store reload the model with its head (recorded in the store)
    queries = [embedder_for_store(tmp_path / name).encode(["alpha beta protein"], output_value=None)
               for name in ("full", "borrowed")]
    assert np.array_equal(queries[0].token_ids, queries[1].token_ids)


def test_head_from_a_gguf_base(pair, tmp_path):
    pytest.importorskip("gguf")
    from test_gguf_families import write_gguf

    full, _, bare = pair
    gguf_path = write_gguf(full, "llama", tmp_path / "base.gguf")
    model = keytok_jax.load_model(str(bare), lm_head=str(gguf_path))
    np.testing.assert_array_equal(np.asarray(model.lm_head), full.lm_head.weight.detach().numpy())
    assert model_identity(model)["lm_head"] == {"source": "base.gguf",
                                                "files": [["base.gguf", gguf_path.stat().st_size]]}
