import pytest
import torch
import transformers

from parity import LENGTHS, check_parity, make_hf_model, save

TINY = dict(vocab_size=101, hidden_size=32, num_heads=4, max_position_embeddings=64,
            bos_token_id=0, eos_token_id=0)

CASES = {
    # window 4 < the longest test text (16 tokens): the local layers really slide.
    "neo-global-local-w4": transformers.GPTNeoConfig(
        **TINY, num_layers=3, attention_types=[[["global", "local"], 1], [["local"], 1]], window_size=4),
    "neo-local-global-w3-inner-untied": transformers.GPTNeoConfig(
        **TINY, num_layers=2, attention_types=[[["local", "global"], 1]], window_size=3,
        intermediate_size=48, tie_word_embeddings=False),
    "neo-all-global-relu": transformers.GPTNeoConfig(
        **TINY, num_layers=2, attention_types=[[["global"], 2]], activation_function="relu"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_causal_parity(name, tmp_path):
    hf = make_hf_model(CASES[name])
    report = check_parity(hf, save(hf, tmp_path / name))
    print(name, report)


BIDIRECTIONAL = {
    "neo-all-global": transformers.GPTNeoConfig(**TINY, num_layers=2, attention_types=[[["global"], 2]]),
    # local window >= the longest text: a sliding window that never cuts anything off.
    "neo-global-local-w16": transformers.GPTNeoConfig(
        **TINY, num_layers=2, attention_types=[[["global", "local"], 1]], window_size=max(LENGTHS)),
}


@pytest.mark.parametrize("name", list(BIDIRECTIONAL))
def test_bidirectional_parity(name, tmp_path):
    # transformers' GPT-Neo masks scores with its own causal (or causal-local) `bias` buffer before
    # adding the attention mask, so a custom 4-D mask cannot lift causality. The reference is made
    # bidirectional by opening those buffers; that is exact only while no window cuts a text.
    hf = make_hf_model(BIDIRECTIONAL[name])
    with torch.no_grad():
        for block in hf.transformer.h:
            block.attn.attention.bias.fill_(True)
    report = check_parity(hf, save(hf, tmp_path / name), bidirectional=True, all_layers=False)
    print(name, "bidirectional", report)


def test_unsupported_activation_is_refused(tmp_path):
    import keytok_jax

    hf = make_hf_model(transformers.GPTNeoConfig(**TINY, num_layers=2, attention_types=[[["global"], 2]],
                                                 activation_function="quick_gelu"))
    with pytest.raises(keytok_jax.UnsupportedConfigError, match="activation_function"):
        keytok_jax.load_model(str(save(hf, tmp_path / "m")), cache=False)


def test_unknown_attention_type_is_refused():
    from keytok_jax.models import config_from_hf

    cfg = transformers.GPTNeoConfig(**TINY, num_layers=2, attention_types=[[["global", "sparse"], 1]])
    with pytest.raises(keytok_jax_error(), match="sparse"):
        config_from_hf(cfg)


def keytok_jax_error():
    import keytok_jax
    return keytok_jax.UnsupportedConfigError
