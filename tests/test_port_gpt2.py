import pytest
import transformers

from parity import check_parity, make_hf_model, save

TINY = dict(vocab_size=101, n_embd=32, n_layer=3, n_head=4, n_positions=64,
            bos_token_id=0, eos_token_id=0)

CASES = {
    # GPT2LMHeadModel defaults: scaled scores, gelu_new, n_inner = 4 * n_embd, tied head.
    "gpt2-scaled-bin": transformers.GPT2Config(**TINY),
    "gpt2-unscaled-inner": transformers.GPT2Config(**TINY, scale_attn_weights=False, n_inner=48),
    "gpt2-untied-gelu-upcast": transformers.GPT2Config(**TINY, tie_word_embeddings=False,
                                                        activation_function="gelu",
                                                        reorder_and_upcast_attn=True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_causal_parity(name, tmp_path):
    hf = make_hf_model(CASES[name])
    report = check_parity(hf, save(hf, tmp_path / name, safe=name != "gpt2-scaled-bin"))
    print(name, report)


@pytest.mark.parametrize("name", ["gpt2-scaled-bin", "gpt2-unscaled-inner"])
def test_bidirectional_parity(name, tmp_path):
    # GPT-2 takes a custom 4-D additive mask as is (create_causal_mask returns it unchanged), so an
    # all-zero mask is true bidirectional attention in transformers.
    hf = make_hf_model(CASES[name])
    report = check_parity(hf, save(hf, tmp_path / name), bidirectional=True, all_layers=False)
    print(name, "bidirectional", report)


@pytest.mark.parametrize("field, value", [("scale_attn_by_inverse_layer_idx", True),
                                          ("add_cross_attention", True),
                                          ("activation_function", "quick_gelu")])
def test_unsupported_field_is_refused(field, value, tmp_path):
    import keytok_jax

    hf = make_hf_model(transformers.GPT2Config(**TINY, **{field: value}))
    with pytest.raises(keytok_jax.UnsupportedConfigError, match=field):
        keytok_jax.load_model(str(save(hf, tmp_path / "m")), cache=False)
