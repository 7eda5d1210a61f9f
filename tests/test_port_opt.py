import pytest
import torch
import transformers

from parity import check_parity, make_hf_model, save

TINY = dict(vocab_size=101, hidden_size=32, ffn_dim=48, num_hidden_layers=3, num_attention_heads=4,
            max_position_embeddings=64)

CASES = {
    "opt-pre-ln": transformers.OPTConfig(**TINY),
    # opt-350m: LayerNorm after each residual add, no final LayerNorm, project_in/out around the stack
    "opt-post-ln-proj": transformers.OPTConfig(**TINY, do_layer_norm_before=False, word_embed_proj_dim=16),
    "opt-post-ln": transformers.OPTConfig(**TINY, do_layer_norm_before=False, tie_word_embeddings=False),
    "opt-pre-ln-proj-untied": transformers.OPTConfig(**TINY, word_embed_proj_dim=24, tie_word_embeddings=False),
    "opt-nobias-noaffine-gelu": transformers.OPTConfig(**TINY, enable_bias=False, layer_norm_elementwise_affine=False,
                                                       activation_function="gelu"),
    "opt-removed-final-ln": transformers.OPTConfig(**TINY, _remove_final_layer_norm=True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_causal_parity(name, tmp_path):
    hf = make_hf_model(CASES[name])
    # hidden_states[0] of transformers is the input of layer 0 (project_in output + positions), which is
    # the port's embedding output too, so all layers compare even with project_in / project_out.
    report = check_parity(hf, save(hf, tmp_path / name, safe=name != "opt-post-ln"))
    print(name, report)


class _ArangePositions:
    """transformers' OPT derives positions from ``attention_mask`` by a cumsum over dim 1, which breaks
    on the 4-D additive mask the bidirectional reference passes: give it positions 0..T-1 instead."""

    def __init__(self, model):
        self.model, self.config = model, model.config

    def __call__(self, input_ids, **kwargs):
        positions = torch.arange(input_ids.shape[1])[None]
        return self.model(input_ids=input_ids, position_ids=positions, **kwargs)


@pytest.mark.parametrize("name", ["opt-pre-ln", "opt-post-ln-proj"])
def test_bidirectional_parity(name, tmp_path):
    hf = make_hf_model(CASES[name])
    report = check_parity(_ArangePositions(hf), save(hf, tmp_path / name), bidirectional=True, all_layers=False)
    print(name, "bidirectional", report)


def test_unsupported_activation_is_refused(tmp_path):
    hf = make_hf_model(transformers.OPTConfig(**TINY, activation_function="quick_gelu"))
    import keytok_jax
    with pytest.raises(keytok_jax.UnsupportedConfigError, match="activation_function='quick_gelu'"):
        keytok_jax.load_model(str(save(hf, tmp_path / "m")), cache=False)
