"""Compiling every batch shape ahead of the first batch (the accelerator path): the shapes a
plan makes are among those precompiled, and a job with --precompile compiles nothing while it
runs and writes the same store."""
import json

import numpy as np
from conftest import embed_runner

import keytok_jax
from keytok_jax import store as store_lib


def test_every_planned_shape_is_precompiled(tiny_folder):
    model = keytok_jax.load_model(str(tiny_folder))
    emb = keytok_jax.Embedder(model, keytok_jax.EmbedSettings(max_length=200, top_k=8), batch_tokens=1024)
    every = set(emb.batch_shapes())
    assert len(every) == len(set(every))
    seqs = {seq for _, seq in every}
    assert seqs == set(emb.shapes.buckets)
    rng = np.random.default_rng(0)
    for n in (1, 3, 17, 100, 333):
        lengths = rng.integers(1, 201, n)
        planned = set(emb.batch_shapes(lengths))
        assert planned <= every, planned - every
    report = emb.precompile()
    assert report["precompiled"] == len(every) and report["precompile_seconds"] > 0
    assert emb.stats.compiles == 0                       # not counted as the run's compiles
    emb.embed_tokenized(emb.tokenize(["a short text", "and a much longer one " * 12]))
    assert emb.stats.compiles == 0                       # the run compiled nothing


def test_job_with_precompile_writes_the_same_store(tiny_folder, capsys, tmp_path):
    corpus = tmp_path / "c.jsonl"
    texts = ["protein folding in the cell", "cats chase mice", "the stock market fell today " * 5,
             "a recipe for apple pie with cinnamon and a long list of steps to follow " * 3]
    corpus.write_text("".join(json.dumps({"_id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))
    run = embed_runner(tiny_folder, capsys, "--max-length", "96", "--top-k", "8", "--dense")
    rc, err, plain = run(corpus, tmp_path / "plain")
    assert rc == 0, err
    rc, err, pre = run(corpus, tmp_path / "pre", "--precompile")
    assert rc == 0, err
    assert plain["compiles"] > 0 and "precompiled" not in plain
    assert pre["compiles"] == 0 and pre["precompiled"] >= plain["compiles"] and pre["precompile_seconds"] > 0
    a, b = store_lib.open(tmp_path / "plain"), store_lib.open(tmp_path / "pre")
    for name in ("token_ids", "token_weights", "dense"):
        np.testing.assert_array_equal(np.asarray(getattr(a, name).read().result()),
                                      np.asarray(getattr(b, name).read().result()))
