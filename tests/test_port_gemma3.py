import pytest
import transformers

from parity import check_parity, make_hf_model, save

import keytok_jax
from keytok_jax.models import config_from_hf

TINY = dict(vocab_size=101, hidden_size=32, intermediate_size=48, num_attention_heads=4, head_dim=16,
            max_position_embeddings=64, rms_norm_eps=1e-6, query_pre_attn_scalar=24)
# sliding window 4 < the longest 16-token text; sliding and full layers mixed
LAYERS = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"]
ROPE = {"full_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}}


def gemma3(**kw):
    base = dict(TINY, num_hidden_layers=len(LAYERS), layer_types=LAYERS, sliding_window=4,
                rope_parameters={k: dict(v) for k, v in ROPE.items()})
    base.update(kw)
    return transformers.Gemma3TextConfig(**base)


CASES = {
    "gemma3-gqa": lambda: gemma3(num_key_value_heads=2),
    # attn_logit_softcapping is ignored by transformers' Gemma3 (and so by the port)
    "gemma3-mha-untied-softcap-bias-linear-rope": lambda: gemma3(
        num_key_value_heads=4, tie_word_embeddings=False, attention_bias=True,
        final_logit_softcapping=1.5, attn_logit_softcapping=2.0,
        rope_parameters={"full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}),
    "gemma3-mqa-pattern": lambda: gemma3(  # layer_types from the legacy sliding_window_pattern
        num_key_value_heads=1, num_hidden_layers=5, layer_types=None, sliding_window_pattern=3),
}


@pytest.mark.parametrize("name", list(CASES))
def test_causal_parity(name, tmp_path):
    hf = make_hf_model(CASES[name]())
    report = check_parity(hf, save(hf, tmp_path / name, safe=name != "gemma3-gqa"))
    print(name, report)


def _same_weights(hf, config):
    """The weights of ``hf`` under another config (attention mask construction only)."""
    other = make_hf_model(config)
    other.load_state_dict(hf.state_dict())
    return other


def test_bidirectional_checkpoint(tmp_path):
    """An EmbeddingGemma-style checkpoint (use_bidirectional_attention=True): keytok's bidirectional
    attention matches transformers' own masks, |q - k| < W // 2 + 1 on sliding layers."""
    hf = make_hf_model(gemma3(num_key_value_heads=2, use_bidirectional_attention=True))
    assert hf.config.sliding_window == 3
    folder = save(hf, tmp_path / "bidir")
    report = check_parity(hf, folder, bidirectional=True)
    print("gemma3-bidirectional", report)
    # the same checkpoint in causal mode matches transformers built without the flag
    causal = _same_weights(hf, gemma3(num_key_value_heads=2))
    report = check_parity(hf, folder, reference_model=causal)
    print("gemma3-bidirectional-checkpoint-causal", report)


def test_bidirectional_attention_of_causal_checkpoint(tmp_path):
    """A causal checkpoint run with attention="bidirectional" matches transformers with the flag set."""
    hf = make_hf_model(gemma3(num_key_value_heads=2))
    bidir = _same_weights(hf, gemma3(num_key_value_heads=2, use_bidirectional_attention=True))
    report = check_parity(hf, save(hf, tmp_path / "causal"), bidirectional=True, reference_model=bidir)
    print("gemma3-causal-checkpoint-bidirectional", report)


def test_multimodal_config_is_refused():
    text = dict(TINY, num_hidden_layers=2, num_key_value_heads=2)
    vision = dict(model_type="siglip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, image_size=28, patch_size=14)
    hf = transformers.Gemma3Config(text_config=text, vision_config=vision)
    with pytest.raises(keytok_jax.UnsupportedConfigError, match="text-only checkpoint"):
        config_from_hf(hf)


@pytest.mark.parametrize("kw, match", [
    (dict(rope_parameters={"full_attention": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0},
                           "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}),
     "rope type 'dynamic'"),
    (dict(hidden_activation="gelu_10"), "hidden_activation='gelu_10'"),
    (dict(layer_types=["sliding_attention", "chunked_attention", "full_attention", "full_attention"]),
     "chunked_attention"),
])
def test_unsupported_config_is_refused(kw, match):
    try:
        hf = gemma3(num_key_value_heads=2, **kw)
    except Exception as e:  # transformers' own validation may already refuse it
        pytest.skip(f"transformers refuses the config itself: {e}")
    with pytest.raises(keytok_jax.UnsupportedConfigError, match=match):
        config_from_hf(hf)
