import pytest
import transformers

from parity import check_parity, make_hf_model, save

TINY = dict(vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
            num_attention_heads=4, max_position_embeddings=64, rms_norm_eps=1e-5)

CASES = {
    "llama-mha": transformers.LlamaConfig(**TINY, num_key_value_heads=4, tie_word_embeddings=False),
    "llama-gqa-tied-bias": transformers.LlamaConfig(**TINY, num_key_value_heads=2, tie_word_embeddings=True,
                                                    attention_bias=True, mlp_bias=True),
    "llama3-rope-mqa": transformers.LlamaConfig(
        **TINY, num_key_value_heads=1, head_dim=16,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8}),
    "llama-linear-rope": transformers.LlamaConfig(
        **TINY, num_key_value_heads=2, rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}),
    "mistral-sliding": transformers.MistralConfig(**TINY, num_key_value_heads=2, sliding_window=4),
    "qwen2-bias-gqa": transformers.Qwen2Config(**TINY, num_key_value_heads=2),
    "qwen2-sliding-layers": transformers.Qwen2Config(**TINY, num_key_value_heads=2, use_sliding_window=True,
                                                     sliding_window=4, max_window_layers=1),
}


@pytest.mark.parametrize("name", list(CASES))
def test_causal_parity(name, tmp_path):
    hf = make_hf_model(CASES[name])
    report = check_parity(hf, save(hf, tmp_path / name, safe=name != "llama-mha"))
    print(name, report)


@pytest.mark.parametrize("name", ["llama-gqa-tied-bias", "qwen2-bias-gqa"])
def test_bidirectional_parity(name, tmp_path):
    hf = make_hf_model(CASES[name])
    check_parity(hf, save(hf, tmp_path / name), bidirectional=True, all_layers=False)


def test_unknown_rope_type_is_refused(tmp_path):
    cfg = transformers.LlamaConfig(**TINY, num_key_value_heads=2,
                                   rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0})
    hf = make_hf_model(cfg)
    import keytok_jax
    with pytest.raises(keytok_jax.UnsupportedConfigError, match="rope type 'dynamic'"):
        keytok_jax.load_model(str(save(hf, tmp_path / "m")), cache=False)
