"""The corpus correction of the sparse vectors (issue 17): statistics fitted once on a sample of
the corpus, recorded in the store and reused on resume, a different fit refused by name; the same
correction for documents and queries; a planted common direction removed; batch, padding and
bucket independence kept."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import embed_runner

from keytok_jax import store as store_lib
from keytok_jax.pipeline import CorrectionFit, Embedder, EmbedSettings
from keytok_jax.pipeline.correction import Moments, correction_vectors
from keytok_jax.pipeline.fitting import sample_positions
from keytok_jax.projection import CORRECTIONS, correct, topk_projection
from keytok_jax.retrieval import Searcher

WORDS = "alpha beta gamma delta protein cell risk dose trial effect gene virus".split()


def write_corpus(path: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = [{"_id": f"d{i}", "text": " ".join(rng.choice(WORDS, rng.integers(2, 14)))} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def embed(tiny_folder, capsys):
    return embed_runner(tiny_folder, capsys, "--max-length", "32", "--top-k", "8", "--shard-size", "8")


# ------------------------------------------------------------------ the maths

def planted(n=64, dim=64, vocab=300, seed=0):
    """Pooled vectors = a large common vector (aligned with 'junk' tokens, its scale varying by
    ±10% per text) + each text's own key tokens' head rows; returns (pooled, head, key token sets,
    junk tokens)."""
    rng = np.random.default_rng(seed)
    head = rng.normal(size=(vocab, dim)).astype(np.float32)
    junk = np.arange(10)
    common = 6.0 * head[junk].sum(axis=0)
    keys = [rng.choice(np.arange(10, vocab), 3, replace=False) for _ in range(n)]
    pooled = np.stack([common * rng.uniform(0.9, 1.1) + head[k].sum(axis=0) for k in keys])
    return pooled.astype(np.float32), head, keys, junk


def fit_of(pooled):
    m = Moments(pooled.shape[1])
    m.add(pooled[: len(pooled) // 2])
    m.add(pooled[len(pooled) // 2:])
    return CorrectionFit.from_moments(m, "test")


def top(pooled, head, mode, fit, k=3):
    vectors = correction_vectors(mode, pooled.shape[1], fit)
    ids, _ = topk_projection(correct(pooled, vectors), head, k)
    return np.asarray(ids)


def recall(ids, keys):
    return np.mean([len(set(i) & set(k)) / len(k) for i, k in zip(ids.tolist(), keys)])


def test_the_correction_recovers_key_tokens_hidden_by_a_common_direction():
    pooled, head, keys, junk = planted()
    fit = fit_of(pooled)
    raw = top(pooled, head, "none", fit)
    assert len(np.unique(raw)) <= 6                  # the common direction's tokens, everywhere
    assert recall(raw, keys) < 0.1
    # removing the direction copes with its varying scale; subtracting the mean leaves ±10% of it
    assert recall(top(pooled, head, "pc1", fit), keys) > 0.95
    assert recall(top(pooled, head, "mean-pc1", fit), keys) > 0.95
    assert 0.7 < recall(top(pooled, head, "mean", fit), keys) < 0.9


def test_fit_statistics_match_numpy():
    pooled, *_ = planted()
    fit = fit_of(pooled)
    x = pooled.astype(np.float64)
    np.testing.assert_allclose(fit.mean, x.mean(0), rtol=1e-6)
    v = np.linalg.svd(x, full_matrices=False)[2][0]
    assert abs(abs(float(v @ fit.pc1)) - 1) < 1e-6
    vc = np.linalg.svd(x - x.mean(0), full_matrices=False)[2][0]
    assert abs(abs(float(vc @ fit.pc1_centered)) - 1) < 1e-6
    # removing pc1 is the projection onto its complement; mean is exactly the centred logits
    p = np.asarray(correct(pooled, correction_vectors("pc1", pooled.shape[1], fit)))
    np.testing.assert_allclose(p @ fit.pc1, 0, atol=1e-3)
    q = np.asarray(correct(pooled, correction_vectors("mean", pooled.shape[1], fit)))
    np.testing.assert_allclose(q, x - x.mean(0), atol=1e-4)
    assert np.array_equal(np.asarray(correct(pooled, np.zeros((3, pooled.shape[1])))), pooled)


def test_fit_file_round_trip_and_damage(tmp_path):
    fit = fit_of(planted()[0])
    fit.save(tmp_path / "fit.json")
    back = CorrectionFit.load(tmp_path / "fit.json")
    assert back.fingerprint() == fit.fingerprint() and back.docs == fit.docs
    data = json.loads((tmp_path / "fit.json").read_text())
    data["mean"][0] += 1.0
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(Exception, match="fingerprint"):
        CorrectionFit.load(tmp_path / "bad.json")


def test_sample_positions_spread_evenly():
    assert sample_positions(5, 10).tolist() == [0, 1, 2, 3, 4]
    pos = sample_positions(1000, 4)
    assert pos.tolist() == [0, 333, 666, 999]
    assert len(sample_positions(5183, 256)) == 256


# ------------------------------------------------------------------ the embedder

def test_correction_needs_a_fit_and_keeps_batch_and_bucket_independence(tiny_folder):
    emb = Embedder.from_pretrained(str(tiny_folder), correction="pc1", top_k=8, max_length=64,
                                   batch_tokens=256)
    texts = [" ".join(WORDS[i % 12: i % 12 + 1 + i % 7]) for i in range(40)]
    with pytest.raises(Exception, match="needs a fit"):
        emb.encode(texts[:2])
    fit = emb.fit_correction(texts)
    assert fit.docs == 40
    together = emb.encode(texts, output_value=None)
    for i in (0, 7, 39):
        alone = emb.encode(texts[i: i + 1], output_value=None)
        np.testing.assert_array_equal(together.token_ids[i], alone.token_ids[0])
        np.testing.assert_allclose(together.token_weights[i], alone.token_weights[0], rtol=1e-5, atol=1e-6)
    # the same text alone in a bigger bucket, with padding rows around it
    doc = emb.tokenize(texts[:1])[0]
    ids = np.zeros((3, 64), np.int32)
    mask = np.zeros_like(ids)
    ids[1, : len(doc.ids)], mask[1, : len(doc.ids)] = doc.ids, 1
    _, _, tok, _ = emb.executable(3, 64)(emb.model.params, (ids, mask, mask), emb.step.correction)
    np.testing.assert_array_equal(np.asarray(tok)[1], together.token_ids[0])
    # the dense vector is the model's own: the same without a correction
    plain = Embedder(emb.model, EmbedSettings(top_k=8, max_length=64))
    np.testing.assert_allclose(plain.encode(texts[:3]), together.dense[:3], rtol=1e-5, atol=1e-6)
    assert not np.array_equal(plain.encode(texts[:3], output_value=None).token_ids,
                              together.token_ids[:3])


# ------------------------------------------------------------------ the job

def test_fit_recorded_reused_and_a_different_fit_refused(embed, tmp_path, capsys):
    corpus = write_corpus(tmp_path / "c.jsonl", 30)
    out = tmp_path / "s"
    rc, err, summary = embed(corpus, out, "--correction", "pc1", "--fit-docs", "12", "--limit", "16")
    assert rc == 0, err
    assert summary["fit_from"] == "corpus" and summary["fit_docs"] == 12
    assert summary["real_tokens"] == int(np.asarray(store_lib.open(out).lengths.read().result()).sum())
    fit = CorrectionFit.load(out / "correction_fit.json")
    s = store_lib.open(out)
    assert s.settings["correction"] == "pc1" and s.settings["correction_fit"] == fit.fingerprint()
    assert "12 documents spread over the 16" in fit.sample
    # resumed (the limit lifted? no: same command) → the recorded fit is reused, not refitted
    rc, err, summary = embed(corpus, out, "--correction", "pc1", "--fit-docs", "12", "--limit", "16")
    assert rc == 0 and summary["fit_from"] == "store" and summary["shards_reused"] == 2
    # another fit size, another correction, another fit file: refused by name
    for flags, name in ((("--fit-docs", "13"), "fit_docs"), (("--fit-sample", "first"), "fit_sample")):
        rc, err, _ = embed(corpus, out, "--correction", "pc1", "--limit", "16", *flags)
        assert rc == 2 and name in err, err
    rc, err, _ = embed(corpus, out, "--correction", "mean", "--fit-docs", "12", "--limit", "16")
    assert rc == 2 and "correction" in err
    other = tmp_path / "other.json"
    CorrectionFit(fit.mean + 1, fit.pc1, fit.pc1_centered, 5, "elsewhere").save(other)
    rc, err, _ = embed(corpus, out, "--correction", "pc1", "--correction-fit", str(other), "--limit", "16")
    assert rc == 2 and "correction_fit" in err
    # the fit of one store applied to another corpus from its file
    rc, err, summary = embed(corpus, tmp_path / "t", "--correction", "pc1", "--correction-fit",
                             str(out / "correction_fit.json"))
    assert rc == 0 and summary["fit_from"] == "file"
    assert store_lib.open(tmp_path / "t").settings["correction_fit"] == fit.fingerprint()


def test_queries_get_the_documents_correction(embed, tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", 24, seed=3)
    out = tmp_path / "s"
    rc, err, _ = embed(corpus, out, "--correction", "pc1", "--fit-docs", "24", "--dense",
                       "--doc-tokens", "aligned")
    assert rc == 0, err
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    searcher = Searcher(out)
    vec = searcher.query_vectors(texts[5:6], "encode")
    s = store_lib.open(out)
    ids = np.asarray(s.token_ids[5].read().result())
    weights = np.asarray(s.token_weights[5].read().result())
    got = vec.toarray()[0]
    keep = weights != 0
    np.testing.assert_allclose(got[ids[keep]], weights[keep], rtol=1e-5, atol=1e-6)
    assert np.count_nonzero(got) == keep.sum()
    # literal document tokens: the query embedder (aligned) carries the same fit, and the same
    # text through the store's own settings gives the stored vector
    lit = tmp_path / "lit"
    rc, err, _ = embed(corpus, lit, "--correction", "pc1", "--fit-docs", "24")
    assert rc == 0, err
    q = Searcher(lit).embedder
    assert q.settings.doc_tokens == "aligned"
    assert q.correction_fit.fingerprint() == store_lib.open(lit).settings["correction_fit"]
    doc = Embedder(q.model, dataclasses.replace(q.settings, doc_tokens="literal"),
                   correction_fit=q.correction_fit).encode(texts[5:6], output_value=None)
    ls = store_lib.open(lit)
    np.testing.assert_array_equal(doc.token_ids[0], np.asarray(ls.token_ids[5].read().result()))
    np.testing.assert_allclose(doc.token_weights[0], np.asarray(ls.token_weights[5].read().result()),
                               rtol=1e-5, atol=1e-6)
    # the store's fit is checked against its recorded fingerprint
    fit = CorrectionFit.load(out / "correction_fit.json")
    CorrectionFit(fit.mean * 2, fit.pc1, fit.pc1_centered, fit.docs, fit.sample).save(
        out / "correction_fit.json")
    with pytest.raises(Exception, match="not the fit the store was embedded with"):
        Searcher(out).query_vectors(texts[:1], "encode")


def test_fit_refusals_before_anything_loads(embed, tmp_path, capsys):
    corpus = write_corpus(tmp_path / "c.jsonl", 4)
    rc, err, _ = embed(corpus, tmp_path / "a", "--correction", "none", "--correction-fit", str(corpus))
    assert rc == 2 and "--correction-fit: has no effect with --correction none" in err
    rc, err, _ = embed(corpus, tmp_path / "a", "--correction-fit", str(corpus))
    assert rc == 2 and f"--correction-fit {corpus}: cannot read a correction fit" in err
    rc, err, _ = embed(corpus, tmp_path / "b", "--correction", "pc1", "--correction-fit",
                       str(tmp_path / "missing.json"))
    assert rc == 2 and "--correction-fit" in err and "missing.json" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert set(CORRECTIONS) == {"none", "mean", "pc1", "mean-pc1"}


def test_spread_sample_with_rejected_lines(embed, tmp_path):
    """The document count is an upper bound when lines are rejected: the spread sample still gets
    its documents (the last ones stand in for positions past the end), and the rejects file is
    the corpus pass's alone."""
    corpus = write_corpus(tmp_path / "c.jsonl", 6)
    lines = corpus.read_text().splitlines()
    corpus.write_text("\n".join(lines[:2] + ["not json"] + lines[2:]) + "\n")
    rc, err, summary = embed(corpus, tmp_path / "s", "--correction", "pc1", "--fit-docs", "3",
                             "--on-error", "skip")
    assert rc == 0, err
    assert summary["rejected"] == 1 and summary["rows"] == 6 and summary["fit_docs"] == 3
    assert len((tmp_path / "s.rejects.jsonl").read_text().splitlines()) == 1


def test_an_edited_fit_sample_refuses_the_store(embed, tmp_path):
    """Every vector depends on the fit: when a sampled row changes, no shard can be kept (even
    with --recompute); a row outside the sample is recomputed shard by shard as usual."""
    corpus = write_corpus(tmp_path / "c.jsonl", 20)
    out = tmp_path / "s"
    flags = ("--correction", "pc1", "--fit-docs", "4")     # spread: rows 0, 6, 13, 19
    assert embed(corpus, out, *flags)[0] == 0
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    rows[3]["text"] += " edited"                            # not sampled
    write_corpus_rows = lambda rs: corpus.write_text("".join(json.dumps(r) + "\n" for r in rs))  # noqa: E731
    write_corpus_rows(rows)
    rc, err, summary = embed(corpus, out, *flags, "--recompute")
    assert rc == 0 and summary["shards_recomputed"] == 1 and summary["fit_from"] == "store", err
    rows[6]["text"] += " edited"                            # sampled
    write_corpus_rows(rows)
    for extra in ((), ("--recompute",)):
        rc, err, _ = embed(corpus, out, *flags, *extra)
        assert rc == 2 and "the correction was fitted on documents that changed" in err, err
        assert "sample document 2" in err and "id 'd6'" in err and "new --output" in err
