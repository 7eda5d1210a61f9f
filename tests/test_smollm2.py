"""The real default checkpoint (SmolLM2-135M-Instruct, GGUF Q4_1) against transformers' own GGUF
loading, which dequantizes the same file with PyTorch."""
import csv
import time

import numpy as np
import pytest

from conftest import SHARED, SMOLLM2_DIR, SMOLLM2_GGUF, shared_or_skip

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
import keytok_jax  # noqa: E402

pytestmark = pytest.mark.slow  # the real checkpoint against transformers


def sentences(n=8):
    path = shared_or_skip(SHARED / "data" / "sts" / "STSBenchmark" / "sts-test.csv")
    with open(path, encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r[5] for r in rows[:n]]


@pytest.fixture(scope="module")
def hf_model():
    shared_or_skip(SMOLLM2_GGUF)
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(SMOLLM2_DIR), gguf_file=SMOLLM2_GGUF.name, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def model():
    return keytok_jax.load_model(str(shared_or_skip(SMOLLM2_GGUF)), cache=False)


def test_hidden_states_match_transformers_gguf(model, hf_model):
    texts = sentences()
    ids, mask = model.tokenize(texts, padding_side="left")
    ours_left = np.asarray(model.hidden_states(ids, mask))
    ids_r, mask_r = model.tokenize(texts, padding_side="right")
    ours_right = np.asarray(model.hidden_states(ids_r, mask_r))
    worst_rel = 0.0
    for i, text in enumerate(texts):
        ref_ids = model.tokenizer(text)["input_ids"]
        with torch.no_grad():
            ref = hf_model(torch.tensor([ref_ids]), output_hidden_states=True).hidden_states[-1][0].numpy()
        for ours, m in ((ours_left, mask), (ours_right, mask_r)):
            got = ours[i][m[i].astype(bool)]
            rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
            worst_rel = max(worst_rel, rel)
    print(f"SmolLM2 GGUF: worst relative error {worst_rel:.3g}")
    assert worst_rel <= 1e-4


def test_gguf_tokenizer_matches_tokenizer_json(model):
    from keytok_jax.loading.gguf_file import gguf_tokenizer

    from_meta = gguf_tokenizer(SMOLLM2_GGUF)
    for text in sentences() + ["naïve café — “quotes” 12345\n\ttabs <|im_end|>"]:
        assert from_meta(text)["input_ids"] == model.tokenizer(text)["input_ids"]


def test_greedy_next_token(model):
    ids, mask = model.tokenize(["The capital of France is"])
    logits = np.asarray(model.logits(model.hidden_states(ids, mask)[:, -1]))
    assert model.tokenizer.decode([int(logits[0].argmax())]) == " Paris"


def test_second_load_comes_from_orbax_cache():
    t0 = time.perf_counter()
    cold = keytok_jax.load_model(str(shared_or_skip(SMOLLM2_GGUF)))
    t_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm = keytok_jax.load_model(str(SMOLLM2_GGUF))
    t_warm = time.perf_counter() - t0
    print(f"SmolLM2 load: cold {t_cold:.2f}s, cached {t_warm:.2f}s")
    assert not cold.load_info["from_cache"] and warm.load_info["from_cache"]
    assert cold.load_info["cache_key"] == warm.load_info["cache_key"]
    for a, b in zip(*(map(np.asarray, __import__("jax").tree.leaves(m.params)) for m in (cold, warm))):
        np.testing.assert_array_equal(a, b)
    bf16 = keytok_jax.load_model(str(SMOLLM2_GGUF), dtype="bfloat16")
    assert bf16.load_info["cache_key"] != cold.load_info["cache_key"]
    assert str(bf16.lm_head.dtype) == "bfloat16"


def test_bfloat16_close_to_float32(model):
    bf16 = keytok_jax.load_model(str(SMOLLM2_GGUF), dtype="bfloat16", cache=False)
    ids, mask = model.tokenize(sentences(4))
    ref = np.asarray(model.hidden_states(ids, mask), np.float32)
    got = np.asarray(bf16.hidden_states(ids, mask), np.float32)
    real = mask.astype(bool)
    a, b = ref[real], got[real]
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    assert got.dtype == np.float32 and cos.min() > 0.98, cos.min()
