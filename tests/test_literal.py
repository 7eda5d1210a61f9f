"""Literal document tokens (``doc_tokens="literal"``, the job's default): a text's own words, both
forms, ranked and weighted by their corrected projection; the same rule for documents and token
queries; exact against a numpy reference; batch, padding and bucket independence; only the part
of a text the model sees."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import embed_runner

from keytok_jax import store as store_lib
from keytok_jax.errors import SettingsError
from keytok_jax.pipeline import Embedder, EmbedSettings
from keytok_jax.pipeline.literal import LiteralTokens
from keytok_jax.pipeline.plan import literal_width, pad_literal
from keytok_jax.projection import literal_projection
from keytok_jax.retrieval import Searcher

WORDS = "alpha beta gamma delta protein cell risk dose trial effect gene virus".split()


def reference(pooled, head, literal, k):
    """numpy: the top-k of each row's literal ids by logit (ties: lower id), weight 1 + min-max."""
    ids = np.full((len(pooled), k), -1, np.int64)
    w = np.zeros((len(pooled), k), np.float32)
    for b, row in enumerate(literal):
        row = np.unique(row[row >= 0])
        if not len(row):
            continue
        lg = head[row].astype(np.float64) @ pooled[b].astype(np.float64)
        order = np.lexsort((row, -lg))[:k]
        span = lg.max() - lg.min()
        ids[b, : len(order)] = row[order]
        w[b, : len(order)] = 1 + ((lg[order] - lg.min()) / span if span > 0 else 0)
    return ids, w


def test_literal_projection_matches_numpy():
    rng = np.random.default_rng(0)
    V, D, B = 500, 16, 6
    head = rng.standard_normal((V, D)).astype(np.float32)
    head[7] = head[3]                                   # a tie: 3 must come before 7
    pooled = rng.standard_normal((B, D)).astype(np.float32)
    literal = np.full((B, 40), -1, np.int32)
    for b, n in enumerate([40, 25, 3, 1, 0, 12]):
        literal[b, :n] = rng.choice(V, n, replace=False)
    literal[0, :2] = [7, 3]
    literal[5] = np.roll(literal[5], 20)                # padding anywhere in the row
    for k in (1, 8, 40, 64):
        ids, w = literal_projection(pooled, head, literal, k)
        ref_ids, ref_w = reference(pooled, head, literal, k)
        np.testing.assert_array_equal(np.asarray(ids), ref_ids)
        np.testing.assert_allclose(np.asarray(w), ref_w, rtol=1e-5, atol=1e-5)
    ids, w = literal_projection(pooled, head, literal, 40)
    pos3, pos7 = list(np.asarray(ids)[0]).index(3), list(np.asarray(ids)[0]).index(7)
    assert pos3 == pos7 - 1
    assert (np.asarray(ids)[4] == -1).all() and (np.asarray(w)[4] == 0).all()   # no tokens
    assert np.asarray(w)[3, 0] == 1.0                                           # one token


def test_literal_tokens_both_forms(tiny_folder):
    emb = Embedder.from_pretrained(str(tiny_folder), doc_tokens="literal", top_k=8, max_length=64)
    tok = emb.model.tokenizer
    lit = LiteralTokens(tok, emb.model.config.vocab_size)
    (ids,) = lit(["The (TNF) receptor, protein."])
    spaced = set(tok(" The (TNF) receptor, protein.", add_special_tokens=False)["input_ids"])
    bare = set(tok("TNF", add_special_tokens=False)["input_ids"])
    assert bare <= set(ids.tolist())                          # bare form of a word after "("
    assert {t for t in spaced if lit.word_table[t]} <= set(ids.tolist())
    assert not any(tok.decode([t]).strip() in {",", ".", "(", ")"} for t in ids)   # no punctuation
    assert list(ids) == sorted(set(ids.tolist()))
    # the query side of the tokens mode is this very rule
    assert lit(["a query about TNF"])[0].tolist() == lit(["a query about TNF"])[0].tolist()


def test_documents_and_token_queries_share_the_rule(tiny_folder, tmp_path):
    corpus = tmp_path / "c.jsonl"
    texts = [" ".join(WORDS[i % 12: i % 12 + 2 + i % 5]) for i in range(20)]
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    from keytok_jax.cli.embed import main as embed_main
    out = tmp_path / "s"
    assert embed_main(["--model", str(tiny_folder), "--input", str(corpus), "--output", str(out),
                       "--max-length", "32", "--shard-size", "8", "--no-progress"]) == 0
    s = store_lib.open(out)
    assert s.settings["doc_tokens"] == "literal" and s.k == 256
    searcher = Searcher(out)
    ids = np.asarray(s.token_ids.read().result())
    for i in (0, 5, 13):
        stored = sorted(int(t) for t in ids[i] if t >= 0)
        assert stored == searcher.literal_tokens([texts[i]])[0]   # every word token of the text


def test_batch_padding_and_bucket_independence(tiny_folder):
    emb = Embedder.from_pretrained(str(tiny_folder), doc_tokens="literal", top_k=16, max_length=64,
                                   batch_tokens=256)
    texts = [" ".join(WORDS[i % 12: i % 12 + 1 + i % 9]) + f" item{i}" for i in range(30)]
    together = emb.encode(texts, output_value=None)
    for i in (0, 11, 29):
        alone = emb.encode(texts[i: i + 1], output_value=None)
        np.testing.assert_array_equal(together.token_ids[i], alone.token_ids[0])
        np.testing.assert_allclose(together.token_weights[i], alone.token_weights[0], rtol=1e-5, atol=1e-6)
    # against the numpy reference from the model's own pooled vectors (correction none)
    head = np.asarray(emb.model.lm_head, np.float32)
    docs = emb.tokenize(texts)
    pooled = emb.embed_tokenized(docs, keep_pooled=True).pooled
    literal = pad_literal([d.literal for d in docs], len(docs), max(len(d.literal) for d in docs))
    ref_ids, ref_w = reference(pooled, head, literal, 16)
    np.testing.assert_array_equal(together.token_ids, ref_ids)
    np.testing.assert_allclose(together.token_weights, ref_w, rtol=1e-4, atol=1e-4)
    # a text with more literal tokens than 2 x its bucket gets a wider batch, nothing dropped
    many = " ".join(f"w{i}x" for i in range(40))
    (doc,) = emb.tokenize([many])
    assert len(doc.literal) > 2 * 64 > 0 or literal_width([doc], 64, 16) >= len(doc.literal)
    out = emb.encode([many], output_value=None)
    assert (out.token_ids[0] >= 0).sum() == min(16, len(doc.literal))


def test_only_the_part_the_model_sees(tiny_folder):
    emb = Embedder.from_pretrained(str(tiny_folder), doc_tokens="literal", top_k=64, max_length=24)
    text = "alpha beta gamma " * 10 + "zebrafish"
    (doc,) = emb.tokenize([text])
    assert doc.flags & 1   # truncated
    zebra = set(emb.literal_tokens(["zebrafish"])[0].tolist()) - set(emb.literal_tokens(["alpha beta gamma"])[0].tolist())
    assert zebra and not zebra & set(doc.literal.tolist())
    (short,) = emb.tokenize(["alpha zebrafish"])
    assert zebra <= set(short.literal.tolist())


def test_settings_refusals(tiny_folder):
    with pytest.raises(SettingsError, match="applies to doc_tokens='aligned'"):
        EmbedSettings(doc_tokens="literal", weighting="log1p_relu")
    with pytest.raises(SettingsError, match="doc_tokens must be one of"):
        EmbedSettings(doc_tokens="words")
    emb = Embedder.from_pretrained(str(tiny_folder), doc_tokens="literal", top_k=8, max_length=64)
    (doc,) = emb.tokenize(["alpha"])
    doc.literal = None
    with pytest.raises(SettingsError, match="literal tokens"):
        emb.embed_tokenized([doc])


def test_resume_and_old_stores(tiny_folder, capsys, tmp_path):
    embed = embed_runner(tiny_folder, capsys, "--max-length", "32", "--shard-size", "8")
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": " ".join(WORDS[i % 12:])}) + "\n"
                              for i in range(12)))
    out = tmp_path / "s"
    rc, err, _ = embed(corpus, out)
    assert rc == 0, err
    rc, err, summary = embed(corpus, out)
    assert rc == 0 and summary["shards_reused"] == 2, err
    rc, err, _ = embed(corpus, out, "--doc-tokens", "aligned")
    assert rc == 2 and "doc_tokens" in err
    # an aligned store records no doc_tokens (as stores written before the setting): it resumes
    old = tmp_path / "old"
    rc, err, _ = embed(corpus, old, "--doc-tokens", "aligned", "--top-k", "8", "--correction", "none")
    assert rc == 0 and "doc_tokens" not in store_lib.open(old).settings
