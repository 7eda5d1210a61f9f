import pytest
import transformers

from parity import check_parity, make_hf_model, save

# GPT-NeoX is always multi-head attention (no kv-head field); head_dim = 32 / 4 = 8.
TINY = dict(vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            max_position_embeddings=64)

CASES = {
    # Pythia: parallel residual, rotary on the first 25% of each head, separate embed_out head
    "neox-parallel-rot25": transformers.GPTNeoXConfig(**TINY, use_parallel_residual=True, rotary_pct=0.25),
    "neox-sequential-rot100": transformers.GPTNeoXConfig(**TINY, use_parallel_residual=False, rotary_pct=1.0),
    "neox-parallel-rot100-tied": transformers.GPTNeoXConfig(**TINY, use_parallel_residual=True, rotary_pct=1.0,
                                                            tie_word_embeddings=True),
    "neox-sequential-rot25-nobias-base": transformers.GPTNeoXConfig(
        **TINY, use_parallel_residual=False, rotary_pct=0.25, attention_bias=False, rotary_emb_base=500,
        hidden_act="gelu_new"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_causal_parity(name, tmp_path):
    hf = make_hf_model(CASES[name])
    # .bin case on a tied model: torch's state_dict names the untied head ``lm_head.weight`` (the
    # transformers 5 module name) while save_pretrained and the Pythia checkpoints write ``embed_out.weight``.
    report = check_parity(hf, save(hf, tmp_path / name, safe=name != "neox-parallel-rot100-tied"))
    print(name, report)


@pytest.mark.parametrize("name", ["neox-parallel-rot25", "neox-sequential-rot100"])
def test_bidirectional_parity(name, tmp_path):
    hf = make_hf_model(CASES[name])
    report = check_parity(hf, save(hf, tmp_path / name), bidirectional=True, all_layers=False)
    print(name, "bidirectional", report)


def test_unsupported_rope_type_is_refused(tmp_path):
    cfg = transformers.GPTNeoXConfig(**TINY, rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4,
                                                               "partial_rotary_factor": 0.5, "factor": 2.0})
    hf = make_hf_model(cfg)
    import keytok_jax
    with pytest.raises(keytok_jax.UnsupportedConfigError, match="rope type 'dynamic'"):
        keytok_jax.load_model(str(save(hf, tmp_path / "m")), cache=False)


def test_unsupported_activation_is_refused(tmp_path):
    hf = make_hf_model(transformers.GPTNeoXConfig(**TINY, hidden_act="quick_gelu"))
    import keytok_jax
    with pytest.raises(keytok_jax.UnsupportedConfigError, match="hidden_act='quick_gelu'"):
        keytok_jax.load_model(str(save(hf, tmp_path / "m")), cache=False)
