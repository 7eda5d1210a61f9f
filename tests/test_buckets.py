"""Length buckets: ``--bucket-step`` sets how finely texts are padded (the padding/compiled-shapes
trade of the CPU path); padding never changes a result."""
import json

import numpy as np
import pytest
from conftest import embed_runner

from keytok_jax import store as store_lib
from keytok_jax.pipeline import seq_buckets


def test_seq_buckets_steps():
    assert seq_buckets(512) == list(range(32, 513, 32))
    assert seq_buckets(512, 8) == list(range(8, 513, 8))
    assert seq_buckets(100, 16) == [16, 32, 48, 64, 80, 96, 112, 128]   # the top: 100 rounded up to 64s
    fine = seq_buckets(1024, 8)
    assert fine[:64] == list(range(8, 513, 8)) and fine[64:] == seq_buckets(1024)[16:]   # past 512 as before
    with pytest.raises(ValueError, match="positive"):
        seq_buckets(512, 0)


def test_finer_buckets_pad_less_and_write_the_same_store(tiny_folder, capsys, tmp_path):
    corpus = tmp_path / "c.jsonl"
    texts = [" ".join(["protein folding in the cell"] * (1 + i % 7)) + f" item {i}" for i in range(24)]
    corpus.write_text("".join(json.dumps({"_id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))
    run = embed_runner(tiny_folder, capsys, "--max-length", "96", "--top-k", "8", "--dense",
                       "--batch-tokens", "512")
    rc, err, coarse = run(corpus, tmp_path / "coarse")
    assert rc == 0, err
    rc, err, fine = run(corpus, tmp_path / "fine", "--bucket-step", "4")
    assert rc == 0, err
    assert fine["padded_tokens"] < coarse["padded_tokens"], (fine, coarse)
    assert (coarse["batch_tokens"], coarse["bucket_step"]) == (512, 16)   # the CPU's step, reported
    assert fine["bucket_step"] == 4
    a, b = store_lib.open(tmp_path / "coarse"), store_lib.open(tmp_path / "fine")
    np.testing.assert_array_equal(np.asarray(a.token_ids.read().result()), np.asarray(b.token_ids.read().result()))
    np.testing.assert_allclose(np.asarray(a.token_weights.read().result()),
                               np.asarray(b.token_weights.read().result()), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(a.dense.read().result()), np.asarray(b.dense.read().result()),
                               rtol=1e-5, atol=1e-6)


def test_batching_defaults_follow_the_device(tiny_folder):
    """On CPU the embedder takes the CPU's batching (small batches, finer buckets); an explicit
    value wins; an accelerator gets big batches (its platform name is all that decides)."""
    import keytok_jax
    from keytok_jax.pipeline import plan

    model = keytok_jax.load_model(str(tiny_folder))
    emb = keytok_jax.Embedder(model)
    assert (emb.batch_tokens, emb.bucket_step) == plan.BATCHING["cpu"]
    assert emb.shapes.buckets[:2] == (plan.BATCHING["cpu"][1], 2 * plan.BATCHING["cpu"][1])
    emb = keytok_jax.Embedder(model, batch_tokens=4096, bucket_step=64)
    assert (emb.batch_tokens, emb.bucket_step) == (4096, 64) and emb.shapes.batch_tokens == 4096
    assert plan.default_batching("gpu") == plan.default_batching("tpu") == plan.BATCHING["accelerator"]
    assert plan.BATCHING["accelerator"] == (8192, 32)
