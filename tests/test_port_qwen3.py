import numpy as np
import pytest
import transformers

from parity import TOL, check_parity, make_hf_model, pad, random_texts, save, torch

import keytok_jax
from keytok_jax.models import config_from_hf

TINY = dict(vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
            num_attention_heads=4, max_position_embeddings=64, rms_norm_eps=1e-6)
# sliding window 4 < the longest 16-token text
SLIDING = ["full_attention", "sliding_attention", "sliding_attention"]


def qwen3(**kw):
    return transformers.Qwen3Config(**{**TINY, "head_dim": 8, **kw})


CASES = {
    "qwen3-gqa-tied": lambda: qwen3(num_key_value_heads=2, tie_word_embeddings=True),
    "qwen3-mha-untied-bias": lambda: qwen3(num_key_value_heads=4, tie_word_embeddings=False, attention_bias=True),
    # head_dim 16 != hidden 32 / 4 heads; sliding layers listed in layer_types; MQA; linear rope
    "qwen3-headdim16-sliding-layer-types-mqa": lambda: qwen3(
        num_key_value_heads=1, head_dim=16, use_sliding_window=True, sliding_window=4, layer_types=SLIDING,
        rope_parameters={"rope_type": "linear", "rope_theta": 1e6, "factor": 2.0}),
    # layer_types derived by Qwen3Config: layers >= max_window_layers slide
    "qwen3-sliding-max-window-layers": lambda: qwen3(
        num_key_value_heads=2, use_sliding_window=True, sliding_window=4, max_window_layers=1),
}


@pytest.mark.parametrize("name", list(CASES))
def test_causal_parity(name, tmp_path):
    hf = make_hf_model(CASES[name]())
    report = check_parity(hf, save(hf, tmp_path / name, safe=name != "qwen3-gqa-tied"))
    print(name, report)


def test_derived_layer_types():
    cfg = config_from_hf(CASES["qwen3-sliding-max-window-layers"]())
    assert cfg.layer_windows == (0, 4, 4)
    # use_sliding_window=False: transformers drops the window, every layer is full
    assert config_from_hf(qwen3(num_key_value_heads=2, sliding_window=4, max_window_layers=1)).windows == (0, 0, 0)


def test_bare_qwen3model_checkpoint(tmp_path):
    """Qwen3-Embedding's layout: saved from the bare Qwen3Model (tensors without the ``model.``
    prefix, no lm_head, tied): the final hidden states match Qwen3Model's."""
    hf = make_hf_model(qwen3(num_key_value_heads=2, head_dim=16, tie_word_embeddings=True),
                       cls=transformers.AutoModel)
    hf.save_pretrained(tmp_path / "bare")
    model = keytok_jax.load_model(str(tmp_path / "bare"), cache=False)
    texts = random_texts(hf.config.vocab_size)
    with torch.no_grad():
        refs = [hf(input_ids=torch.tensor([t])).last_hidden_state[0].numpy() for t in texts]
    for side in ("right", "left"):
        ids, mask = pad(texts, side)
        final = np.asarray(model.hidden_states(ids, mask))
        worst = max(float(np.abs(final[i][mask[i].astype(bool)] - r).max()) for i, r in enumerate(refs))
        print("qwen3-bare", side, worst)
        assert worst <= TOL


def _same_weights(hf, config):
    """The weights of ``hf`` under another config (attention mask construction only)."""
    other = make_hf_model(config)
    other.load_state_dict(hf.state_dict())
    return other


@pytest.mark.parametrize("name", ["qwen3-gqa-tied", "qwen3-headdim16-sliding-layer-types-mqa"])
def test_bidirectional_parity(name, tmp_path):
    """attention="bidirectional" matches transformers with ``is_causal=False`` (its bidirectional
    masks; sliding layers see |q - k| <= W)."""
    hf = make_hf_model(CASES[name]())
    config = CASES[name]()
    config.is_causal = False
    bidir = _same_weights(hf, config)
    report = check_parity(hf, save(hf, tmp_path / name), bidirectional=True, reference_model=bidir)
    print(name, "bidirectional", report)


@pytest.mark.parametrize("kw, match", [
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
                           "original_max_position_embeddings": 32}), "rope type 'yarn'"),
    (dict(rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}), "rope type 'dynamic'"),
    (dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}),
     "partial rotary"),
    (dict(hidden_act="gelu_10"), "hidden_act='gelu_10'"),
    (dict(layer_types=["full_attention", "chunked_attention", "full_attention"]), "chunked_attention"),
    (dict(layer_types=SLIDING, sliding_window=4), "sliding_window=None"),   # use_sliding_window=False
])
def test_unsupported_config_is_refused(kw, match):
    try:
        hf = qwen3(num_key_value_heads=2, **kw)
    except Exception as e:  # transformers' own validation may already refuse it
        pytest.skip(f"transformers refuses the config itself: {e}")
    with pytest.raises(keytok_jax.UnsupportedConfigError, match=match):
        config_from_hf(hf)


# --- Issue 18 item 6, for the families next to Qwen3 (to move into test_port_llama.py /
# test_port_gemma3.py, whose owners were not part of this change).
LLAMA_TINY = dict(TINY, num_key_value_heads=2)


@pytest.mark.parametrize("make", [
    lambda: transformers.MistralConfig(**LLAMA_TINY, sliding_window=4),
    lambda: transformers.Qwen2Config(**LLAMA_TINY, use_sliding_window=True, sliding_window=4, max_window_layers=1),
], ids=["mistral-sliding", "qwen2-sliding-layers"])
def test_llama_family_bidirectional_sliding_parity(make, tmp_path):
    """Llama-family sliding layers, bidirectional: transformers' is_causal=False masks, |q - k| <= W."""
    hf = make_hf_model(make())
    config = make()
    config.is_causal = False
    report = check_parity(hf, save(hf, tmp_path / "m"), bidirectional=True, reference_model=_same_weights(hf, config))
    print(hf.config.model_type, "bidirectional sliding", report)


@pytest.mark.parametrize("make, match", [
    (lambda: transformers.LlamaConfig(**LLAMA_TINY, rope_parameters={
        "rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}), "partial rotary"),
    (lambda: transformers.Qwen2Config(**LLAMA_TINY, layer_types=["full_attention", "chunked_attention",
                                                                "full_attention"]), "chunked_attention"),
    (lambda: transformers.Qwen2Config(**LLAMA_TINY, layer_types=SLIDING), "sliding_window=None"),
], ids=["llama-partial-rotary", "qwen2-chunked", "qwen2-sliding-without-window"])
def test_llama_family_refusals(make, match):
    with pytest.raises(keytok_jax.UnsupportedConfigError, match=match):
        config_from_hf(make())


def test_gemma3_is_causal_false_with_sliding_layers_is_refused():
    """transformers' generic bidirectional masks (is_causal=False) differ from EmbeddingGemma's
    use_bidirectional_attention windows on sliding layers; the port implements only the latter."""
    config = transformers.Gemma3TextConfig(
        vocab_size=101, hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"], sliding_window=4,
        max_position_embeddings=64, query_pre_attn_scalar=24)
    config.is_causal = False
    with pytest.raises(keytok_jax.UnsupportedConfigError, match="is_causal=false"):
        config_from_hf(config)
