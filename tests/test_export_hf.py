"""Export (keytok_jax.loading.save): a port's parameters back to a Hugging Face folder that both
load_model and transformers read, with the exported weights being exactly the ones given."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import transformers
from flax.traverse_util import flatten_dict
from safetensors import safe_open

from parity import TOL, make_hf_model, pad, random_texts, reference, save, torch

import keytok_jax
from keytok_jax.loading import save_hf_folder
from keytok_jax.loading.convert import _IGNORED
from keytok_jax.loading.save import unconvert

LLAMA = dict(vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=64)
GPT2 = dict(vocab_size=101, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)
NEOX = dict(vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=64)
OPT = dict(vocab_size=101, hidden_size=32, ffn_dim=48, num_hidden_layers=2, num_attention_heads=4,
           max_position_embeddings=64)
NEO = dict(vocab_size=101, hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
           window_size=4, max_position_embeddings=64, bos_token_id=0, eos_token_id=0)

ROUND_TRIP = {
    "llama-gqa-untied-bias": transformers.LlamaConfig(**LLAMA, num_key_value_heads=2, tie_word_embeddings=False,
                                                      attention_bias=True),
    "gpt2-tied": transformers.GPT2Config(**GPT2),
    "neox-parallel-rot25": transformers.GPTNeoXConfig(**NEOX, use_parallel_residual=True, rotary_pct=0.25),
    "opt-post-ln-proj-tied": transformers.OPTConfig(**OPT, do_layer_norm_before=False, word_embed_proj_dim=16),
    "qwen3-gqa-untied-bias-sliding": transformers.Qwen3Config(
        **LLAMA, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False, attention_bias=True,
        use_sliding_window=True, sliding_window=4, max_window_layers=1),
}
NAMES = {
    **ROUND_TRIP,
    "llama-gqa-tied": transformers.LlamaConfig(**LLAMA, num_key_value_heads=1, tie_word_embeddings=True),
    "gpt2-untied": transformers.GPT2Config(**GPT2, tie_word_embeddings=False),
    "neox-tied-nobias": transformers.GPTNeoXConfig(**NEOX, tie_word_embeddings=True, attention_bias=False),
    "opt-untied-nobias-noaffine": transformers.OPTConfig(**OPT, tie_word_embeddings=False, enable_bias=False,
                                                         layer_norm_elementwise_affine=False),
    "gpt_neo": transformers.GPTNeoConfig(**NEO),
    "gemma3-gqa": transformers.Gemma3TextConfig(
        vocab_size=101, hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"], sliding_window=4,
        max_position_embeddings=64, query_pre_attn_scalar=24),
    "qwen3-gqa-tied": transformers.Qwen3Config(**LLAMA, num_key_value_heads=2, head_dim=8, tie_word_embeddings=True),
}


def _tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                                eos_token="</s>")


def _source(name, tmp_path, tokenizer=False, configs=NAMES):
    hf = make_hf_model(configs[name])
    folder = save(hf, tmp_path / "src")
    if tokenizer:
        _tokenizer(hf.config.vocab_size).save_pretrained(folder)
    return hf, folder


def _flat(params) -> dict:
    return {"/".join(k): np.asarray(v) for k, v in flatten_dict(jax.device_get(params)).items()}


def _perturb(params, seed: int = 0, scale: float = 0.05):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(np.asarray(p) + scale * rng.standard_normal(p.shape), p.dtype),
                        params)


def _assert_same_params(a, b):
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        assert fa[k].dtype == fb[k].dtype, k
        assert np.array_equal(fa[k], fb[k]), f"{k} differs"


@pytest.mark.parametrize("name", list(NAMES))
def test_unconvert_gives_the_checkpoint_tensors(name, tmp_path):
    """Unconverting freshly loaded parameters gives back exactly the tensors save_pretrained wrote
    (same names, shapes, values), less lm_head when tied and the ignored buffers."""
    hf, folder = _source(name, tmp_path)
    model = keytok_jax.load_model(str(folder), cache=False)
    out = unconvert(model.config, model.params)
    with safe_open(str(folder / "model.safetensors"), "np") as f:
        original = {k: f.get_tensor(k) for k in f.keys()}
    tied = hf.config.tie_word_embeddings
    expected = {k for k in original if not _IGNORED.search(k) and not (tied and k == "lm_head.weight")}
    assert set(out) == expected
    for k in expected:
        assert out[k].shape == original[k].shape, k
        assert np.array_equal(out[k], original[k]), f"{k} differs"
        assert out[k].flags.c_contiguous, k


@pytest.mark.parametrize("name", list(ROUND_TRIP))
def test_export_round_trip(name, tmp_path):
    hf_orig, folder = _source(name, tmp_path, tokenizer=name.startswith("llama"), configs=ROUND_TRIP)
    model = keytok_jax.load_model(str(folder), cache=False)
    assert model.hf_config["model_type"] == hf_orig.config.model_type
    perturbed = _perturb(model.params)
    assert not np.array_equal(_flat(perturbed)["embed/embedding"], _flat(model.params)["embed/embedding"])
    out = save_hf_folder(model, tmp_path / "exported", params=perturbed)
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    with safe_open(str(out / "model.safetensors"), "np") as f:
        assert f.metadata() == {"format": "pt"}

    # (a) keytok_jax reads back exactly the perturbed parameters
    again = keytok_jax.load_model(str(out), cache=False)
    _assert_same_params(again.params, perturbed)
    assert again.config == model.config
    if model.tokenizer is not None:
        assert again.tokenizer is not None
        text = ["w5 w7 w99", "w3"]
        assert again.tokenize(text)[0].tolist() == model.tokenize(text)[0].tolist()

    # (b) transformers reads the folder and computes what keytok_jax computes on the perturbed params
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32,
                                                           attn_implementation="eager").eval()
    assert type(hf) is type(hf_orig)
    ours = dataclasses.replace(model, params=perturbed)
    texts = random_texts(hf.config.vocab_size)
    refs = [reference(hf, t) for t in texts]
    for side in ("right", "left"):
        ids, mask = pad(texts, side)
        final = np.asarray(ours.hidden_states(ids, mask))
        logits = np.asarray(ours.logits(final))
        for i, (h_ref, l_ref, _) in enumerate(refs):
            real = mask[i].astype(bool)
            dh = float(np.abs(final[i][real] - h_ref).max())
            dl = float(np.abs(logits[i][real] - l_ref).max())
            assert dh <= TOL and dl <= TOL, f"{side} padding, text {i}: hidden {dh:.3g}, logits {dl:.3g}"


def test_bfloat16_is_written_as_bfloat16(tmp_path):
    _, folder = _source("llama-gqa-untied-bias", tmp_path)
    model = keytok_jax.load_model(str(folder), dtype="bfloat16", cache=False)
    out = save_hf_folder(model, tmp_path / "bf16")
    with safe_open(str(out / "model.safetensors"), "np") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {np.dtype(ml_dtypes.bfloat16)}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    _assert_same_params(keytok_jax.load_model(str(out), dtype="bfloat16", cache=False).params, model.params)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.bfloat16)
    state = hf.state_dict()
    for k, v in unconvert(model.config, model.params).items():
        assert state[k].dtype == torch.bfloat16
        assert np.array_equal(state[k].float().numpy(), v.astype(np.float32)), k
    # float32 parameters cast on the way out
    out32 = save_hf_folder(model, tmp_path / "f32", dtype="float32")
    with safe_open(str(out32 / "model.safetensors"), "np") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {np.dtype(np.float32)}
    assert json.loads((out32 / "config.json").read_text())["dtype"] == "float32"


def test_hf_config_from_cache_hit(tmp_path):
    _, folder = _source("gpt2-tied", tmp_path)
    first = keytok_jax.load_model(str(folder))
    second = keytok_jax.load_model(str(folder))
    assert second.load_info["from_cache"] and not first.load_info["from_cache"]
    # the cached copy went through JSON (id2label keys become strings)
    assert second.hf_config == json.loads(json.dumps(first.hf_config))
    assert second.hf_config["model_type"] == "gpt2"
    out = save_hf_folder(second, tmp_path / "exported")
    _assert_same_params(keytok_jax.load_model(str(out), cache=False).params, first.params)


def test_refusals(tmp_path):
    _, folder = _source("gpt2-tied", tmp_path)
    model = keytok_jax.load_model(str(folder), cache=False)
    with pytest.raises(ValueError, match="no hf_config"):
        save_hf_folder(dataclasses.replace(model, hf_config={}), tmp_path / "none")
    assert not (tmp_path / "none").exists()
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(ValueError, match="index"):
        save_hf_folder(model, stale)
