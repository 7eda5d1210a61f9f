"""GGUF for every family llama.cpp writes that keytok ports: a tiny random transformers model is
written to GGUF the way llama.cpp's convert_hf_to_gguf.py writes it (tensor names from the ``gguf``
package's own name tables, its value conventions, its metadata keys), in several quantization
types, and loads to the HF folder's weights (float32: exactly; quantized: the ``gguf`` package's
dequantized values) and, in float32, to transformers' hidden states (≤ 1e-4)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
import transformers  # noqa: E402

from parity import check_parity, make_hf_model, save  # noqa: E402

import keytok_jax  # noqa: E402
from keytok_jax.loading.gguf_file import GGUFSource  # noqa: E402
from keytok_jax.models import FAMILIES  # noqa: E402

Q = gguf.GGMLQuantizationType
# hidden 256 and every in-feature a multiple of 256: rows fit K-quant blocks (QK_K = 256)
LLAMA_LIKE = dict(vocab_size=300, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6)


def _gemma3(**kw):
    # what GGUF metadata can express: every 6th layer global, sliding rope base 10000,
    # query_pre_attn_scalar = head_dim (llama.cpp derives all three)
    base = dict(LLAMA_LIKE, num_hidden_layers=6, head_dim=64, query_pre_attn_scalar=64, sliding_window=4,
                rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 20000.0},
                                 "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})
    base.update(kw)
    return transformers.Gemma3TextConfig(**base)


# family → (llama.cpp architecture, HF config, extra quant types, bidirectional)
FAMILY_CASES = {
    "llama": ("llama", lambda: transformers.LlamaConfig(**LLAMA_LIKE, rope_theta=5000.0), (Q.F16, Q.Q4_0, Q.Q2_K)),
    "qwen2": ("qwen2", lambda: transformers.Qwen2Config(**LLAMA_LIKE, tie_word_embeddings=False),
              (Q.BF16, Q.Q4_1, Q.Q3_K)),
    "qwen3": ("qwen3", lambda: transformers.Qwen3Config(**LLAMA_LIKE, head_dim=64, tie_word_embeddings=True),
              (Q.F16, Q.Q5_0, Q.Q4_K)),
    "gemma3": ("gemma3", lambda: _gemma3(final_logit_softcapping=3.0), (Q.F16, Q.Q5_1, Q.Q5_K)),
    "embeddinggemma": ("gemma-embedding", lambda: _gemma3(sliding_window=8, use_bidirectional_attention=True),
                       (Q.BF16, Q.Q4_0, Q.Q6_K)),
    "gpt2": ("gpt2", lambda: transformers.GPT2Config(vocab_size=300, n_embd=256, n_layer=2, n_head=4, n_positions=64),
             (Q.F16, Q.Q4_1, Q.Q6_K)),
    "gptneox": ("gptneox", lambda: transformers.GPTNeoXConfig(
        vocab_size=300, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, rotary_pct=0.5, use_parallel_residual=True), (Q.BF16, Q.Q5_0, Q.Q3_K)),
}
# model_type the port must know (qwen3 arrives with its port)
_MODEL_TYPE = {"qwen3": "qwen3"}


# transformers 5 names GPT-NeoX's head lm_head; checkpoints (and keytok's name map) say embed_out
_HF_ALIASES = {"embed_out.weight": "lm_head.weight"}


def _skip_unported(family):
    mt = _MODEL_TYPE.get(family)
    if mt and mt not in FAMILIES:
        pytest.skip(f"{mt} has no port yet")


# ------------------------------------------------- a tiny convert_hf_to_gguf for these models

def _permute(w, n_head):  # convert_hf_to_gguf LlamaModel.permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _neox_regroup(w, n_head):  # GPTNeoXModel.modify_tensors: per-head [q k v] → [q | k | v]
    rest = w.shape[1:]
    return w.reshape(n_head, 3, -1, *rest).swapaxes(0, 1).reshape(w.shape)


def to_gguf_layout(arch: str, cfg, hf_name: str, w: np.ndarray) -> np.ndarray:
    """What llama.cpp's converter does to one HF tensor's values (names aside)."""
    if arch == "llama" and hf_name.endswith("q_proj.weight"):
        return _permute(w, cfg.num_attention_heads)
    if arch == "llama" and hf_name.endswith("k_proj.weight"):
        return _permute(w, cfg.num_key_value_heads)
    if arch in ("gemma3", "gemma-embedding") and hf_name.endswith("norm.weight"):
        return w + np.float32(1.0)
    if arch == "gpt2" and hf_name.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
        return np.ascontiguousarray(w.T)
    if arch == "gptneox" and ".query_key_value." in hf_name:
        return _neox_regroup(w, cfg.num_attention_heads)
    return w


# K-quants: the gguf package dequantizes but does not quantize them; blocks of random bits with
# small float16 scales (byte offsets of d / dmin in each block, from ggml's block layouts).
_K_SCALES = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}


def _quantize(w: np.ndarray, qtype, rng) -> np.ndarray:
    if qtype in _K_SCALES:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        blocks = rng.integers(0, 256, size=(*w.shape[:-1], w.shape[-1] // block, size), dtype=np.uint8)
        for off in _K_SCALES[qtype]:
            scale = rng.uniform(1e-4, 2e-3, size=blocks.shape[:-1]).astype(np.float16)
            blocks[..., off:off + 2] = scale.view(np.uint8).reshape(*scale.shape, 2)
        return blocks.reshape(*w.shape[:-1], -1)
    return gguf.quants.quantize(w, qtype)


def write_gguf(hf, arch: str, path, qtype=Q.F32, seed: int = 0, original_window=None, n_vocab=None):
    """``hf`` written as llama.cpp would: names from ``gguf.get_tensor_name_map``, value conventions
    of :func:`to_gguf_layout`, metadata of the architecture's ``set_gguf_parameters``. 1-D tensors
    stay F32 and 2-D ones whose rows do not fit the type's blocks too, as llama.cpp keeps them."""
    cfg = hf.config
    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    n_layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    names = gguf.get_tensor_name_map(arch_enum, n_layers)
    w = gguf.GGUFWriter(str(path), arch)
    if arch == "gpt2":
        w.add_block_count(cfg.n_layer)
        w.add_context_length(cfg.n_positions)
        w.add_embedding_length(cfg.n_embd)
        w.add_feed_forward_length(4 * cfg.n_embd)
        w.add_head_count(cfg.n_head)
        w.add_layer_norm_eps(cfg.layer_norm_epsilon)
    elif arch == "gptneox":
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_block_count(cfg.num_hidden_layers)
        w.add_feed_forward_length(cfg.intermediate_size)
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        w.add_rope_dimension_count(int(cfg.rope_parameters["partial_rotary_factor"] * head_dim))
        w.add_head_count(cfg.num_attention_heads)
        w.add_parallel_residual(cfg.use_parallel_residual)
        w.add_layer_norm_eps(cfg.layer_norm_eps)
    else:
        w.add_block_count(cfg.num_hidden_layers)
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.num_attention_heads)
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        if getattr(cfg, "head_dim", None) is not None:
            w.add_key_length(cfg.head_dim)
            w.add_value_length(cfg.head_dim)
        if arch in ("gemma3", "gemma-embedding"):
            w.add_rope_freq_base(cfg.rope_parameters["full_attention"]["rope_theta"])
            if cfg.final_logit_softcapping:
                w.add_final_logit_softcapping(cfg.final_logit_softcapping)
            w.add_sliding_window(original_window or cfg.sliding_window)
        else:
            w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
            w.add_vocab_size(cfg.vocab_size)
    rng = np.random.default_rng(seed)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    for name, t in hf.state_dict().items():
        if name.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")):
            continue
        if tied and name in ("lm_head.weight", "embed_out.weight"):
            continue  # a tied checkpoint has no head tensor
        out = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert out is not None, f"gguf has no name for {name}"
        value = to_gguf_layout(arch, cfg, name, t.numpy().astype(np.float32))
        if n_vocab is not None and out == "token_embd.weight":
            value = value[:n_vocab]  # Gemma3Model.modify_tensors drops out-of-vocabulary rows
        block = gguf.GGML_QUANT_SIZES[qtype][0]
        if value.ndim == 1 or value.shape[-1] % block or qtype == Q.F32:
            w.add_tensor(out, np.ascontiguousarray(value))
        else:
            w.add_tensor(out, _quantize(value, qtype, rng), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _case(family, tmp_path, qtype=Q.F32):
    arch, make_cfg, _types = FAMILY_CASES[family]
    hf = make_hf_model(make_cfg())
    window = 8 if arch == "gemma-embedding" else None
    return arch, hf, write_gguf(hf, arch, tmp_path / f"{family}-{qtype.name}.gguf", qtype, original_window=window)


# ------------------------------------------------------------------------------------ tests

@pytest.mark.parametrize("family", list(FAMILY_CASES))
def test_float32_gguf_weights_and_hidden_states(family, tmp_path):
    _skip_unported(family)
    arch, hf, path = _case(family, tmp_path)
    source = GGUFSource(path)
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    seen = 0
    for name in source.names():
        want = state[_HF_ALIASES.get(name, name)]
        got = source.get(name)
        if name.endswith("norm.weight") and arch.startswith("gemma"):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=name)  # (w + 1) - 1
        else:
            np.testing.assert_array_equal(got, want, err_msg=name)
        seen += 1
    assert seen >= len([k for k in state if not k.endswith((".attn.bias", ".attn.masked_bias"))]) - 1
    bidir = arch == "gemma-embedding"
    report = check_parity(hf, path, bidirectional=bidir, all_layers=True)
    print(family, "F32", report)


def _quant_cases():
    return [(f, t) for f, (_a, _c, types) in FAMILY_CASES.items() for t in (Q.Q8_0, *types)]


@pytest.mark.parametrize("family,qtype", _quant_cases(), ids=lambda x: getattr(x, "name", x))
def test_quantized_gguf_equals_gguf_dequantize(family, qtype, tmp_path):
    """Each tensor loads (in the HF layout) to what the gguf package dequantizes from the file."""
    _skip_unported(family)
    arch, hf, path = _case(family, tmp_path, qtype)
    reader = gguf.GGUFReader(str(path))
    source = GGUFSource(path)
    quantized = 0
    for t in reader.tensors:
        want = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32).reshape(
            tuple(int(d) for d in reversed(t.shape)))
        hf_name = source.arch.hf_name(t.name)
        got = to_gguf_layout(arch, hf.config, hf_name, source.get(hf_name))
        if t.name.endswith("norm.weight") and arch.startswith("gemma"):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=t.name)
        else:
            np.testing.assert_array_equal(got, want, err_msg=t.name)
        quantized += t.tensor_type == qtype
    assert quantized >= 4, f"only {quantized} tensors were written as {qtype.name}"


@pytest.mark.parametrize("family", ["llama", "gptneox"])
def test_quantized_gguf_loads_as_a_model(family, tmp_path):
    """A Q8_0 file converts to a model whose outputs stay near the float32 checkpoint's."""
    arch, hf, path = _case(family, tmp_path, Q.Q8_0)
    model = keytok_jax.load_model(str(path), cache=False)
    ids = np.array([[5, 9, 17, 33, 2]], np.int32)
    final = model.hidden_states(ids, np.ones_like(ids), attention="causal", all_layers=False)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids.astype(np.int64)), output_hidden_states=True).hidden_states[-1][0].numpy()
    assert np.abs(np.asarray(final)[0] - ref).max() < 0.05 * np.abs(ref).max()


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_folder_with_gguf_and_config(family, tmp_path):
    """A folder holding config.json (and tokenizer files) with a .gguf instead of safetensors loads
    the GGUF as its weights."""
    arch, hf, _ = _case(family, tmp_path)
    folder = save(hf, tmp_path / "folder")
    (folder / "model.safetensors").unlink()
    write_gguf(hf, arch, folder / "model-f32.gguf")
    report = check_parity(hf, folder, all_layers=False)
    print(family, "folder+gguf", report)
    model = keytok_jax.load_model(str(folder), cache=False)
    assert model.load_info["files"][0].endswith("model-f32.gguf")


def test_folder_prefers_safetensors_over_gguf(tmp_path):
    arch, hf, _ = _case("llama", tmp_path)
    folder = save(hf, tmp_path / "both")
    shutil.copy(write_gguf(hf, arch, tmp_path / "x.gguf"), folder / "model.gguf")
    model = keytok_jax.load_model(str(folder), cache=False)
    assert model.load_info["files"][0].endswith("model.safetensors")


def test_unknown_architecture_is_refused(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "mamba")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(keytok_jax.errors.KeytokError, match="GGUF architecture 'mamba' is not supported"):
        keytok_jax.load_model(str(tmp_path / "m.gguf"), cache=False)


def test_folder_gguf_with_fewer_embedding_rows(tmp_path):
    """llama.cpp's Gemma3 converter keeps only the tokenizer's rows of the embedding: with config.json
    beside, the model takes the GGUF's rows and matches transformers on those tokens."""
    arch, hf, _ = _case("gemma3", tmp_path)
    folder = save(hf, tmp_path / "g")
    (folder / "model.safetensors").unlink()
    write_gguf(hf, arch, folder / "m.gguf", n_vocab=290)
    model = keytok_jax.load_model(str(folder), cache=False)
    assert model.config.vocab_size == 290
    ids = np.array([[5, 9, 17, 33, 289, 2]], np.int32)
    final = np.asarray(model.hidden_states(ids, np.ones_like(ids), attention="causal", all_layers=False))
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids.astype(np.int64)), output_hidden_states=True).hidden_states[-1][0].numpy()
    assert np.abs(final[0] - ref).max() <= 1e-4


def test_folder_gguf_contradicting_config_is_refused(tmp_path):
    arch, hf, _ = _case("gpt2", tmp_path)
    folder = save(hf, tmp_path / "g")
    (folder / "model.safetensors").unlink()
    write_gguf(hf, arch, folder / "m.gguf")
    cfg = (folder / "config.json").read_text().replace('"n_layer": 2', '"n_layer": 3')
    (folder / "config.json").write_text(cfg)
    with pytest.raises(keytok_jax.errors.KeytokError, match="num_hidden_layers=3 but the GGUF metadata says 2"):
        keytok_jax.load_model(str(folder), cache=False)
