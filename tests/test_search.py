"""Retrieval: sparse and dense indexes, query modes, fusion, BEIR metrics, export, CLIs."""
import json
import math
import mmap

import numpy as np
import pytest

from keytok_jax import export as export_lib
from keytok_jax import store as S
from keytok_jax.evaluate import load_beir, score
from keytok_jax.search import DenseIndex, Searcher, SparseIndex, bm25_idf, fuse

from conftest import SHARED, shared_or_skip

V = 50


def hand_store(path, token_ids, token_weights, dense=None, ids=None, settings=None, shard_size=4, vocab=V):
    """A finalized store with the given rows (several shards)."""
    token_ids = np.asarray(token_ids, np.int32)
    n, k = token_ids.shape
    ids = ids or [f"d{i}" for i in range(n)]
    w = S.StoreWriter.create_or_resume(path, settings or {"model": "hand"}, k=k, vocab_size=vocab,
                                       dim=None if dense is None else np.shape(dense)[1], shard_size=shard_size)
    shards = -(-n // shard_size)
    for s in range(shards):
        lo, hi = s * shard_size, min(n, (s + 1) * shard_size)
        w.write_shard(s, ids[lo:hi], token_ids[lo:hi], np.asarray(token_weights, np.float32)[lo:hi],
                      np.full(hi - lo, 8), np.zeros(hi - lo, np.uint8),
                      None if dense is None else np.asarray(dense, np.float32)[lo:hi])
    w.finalize(shards)
    return S.open(path)


# Six documents over tokens 1..9; -1 marks an empty text, weight 0 a relu-zeroed token.
TOKENS = [[1, 2, 3], [2, 3, 4], [5, 6, 7], [1, 5, 9], [-1, -1, -1], [3, 8, 0]]
WEIGHTS = [[3.0, 2.0, 1.0], [4.0, 1.0, 1.0], [2.0, 2.0, 2.0], [1.0, 1.0, 5.0], [0, 0, 0], [2.0, 2.0, 0.0]]


def test_sparse_index_scores_and_ties(tmp_path):
    store = hand_store(tmp_path / "s", TOKENS, WEIGHTS)
    ix = SparseIndex.from_store(store)
    assert ix.num_docs == 6 and ix.vocab_size == V
    # Posting lists hold only real, non-zero entries: token 0 (weight 0) and the empty row are absent.
    assert ix.postings.nnz == 3 + 3 + 3 + 3 + 2
    assert list(ix.doc_freq[[1, 2, 3, 0]]) == [2, 2, 3, 0]
    q = ix.query_matrix([[2], [1, 5], [3], [0, 42]], [[1.0], [1.0, 1.0], [1.0], [1.0, 1.0]])
    (r0, s0), (r1, s1), (r2, _), (r3, _) = ix.search(q, k=10)
    assert r0.tolist() == [1, 0] and s0.tolist() == [4.0, 2.0]
    # d0 = 3, d2 = 2, d3 = 1 + 1 = 2: the tie between d2 and d3 goes to the lower row.
    assert r1.tolist() == [0, 2, 3] and s1.tolist() == [3.0, 2.0, 2.0]
    # token 3: d0 1, d1 1, d5 2 → d5 first, then the tie d0 < d1; k cuts the list.
    assert ix.search(ix.query_matrix([[3]]), k=2)[0][0].tolist() == [5, 0]
    assert r2.tolist() == [5, 0, 1]
    assert len(r3) == 0   # nothing shares a token: an empty list, not padding
    # Numpy reference: dot products of query vectors and the documents' top-k vectors.
    dense_docs = np.zeros((6, V), np.float32)
    for i, (t, w) in enumerate(zip(TOKENS, WEIGHTS)):
        for tt, ww in zip(t, w):
            if tt >= 0:
                dense_docs[i, tt] += ww
    rng = np.random.default_rng(0)
    qd = rng.random((5, V)).astype(np.float32) * (rng.random((5, V)) < 0.2)
    hits = ix.search(ix.query_matrix([np.flatnonzero(r) for r in qd], [r[r > 0] for r in qd]), k=6)
    for qv, (rows, scores) in zip(qd, hits):
        ref = dense_docs @ qv
        order = [i for i in np.lexsort((np.arange(6), -ref)) if ref[i] > 0]
        assert rows.tolist() == order
        np.testing.assert_allclose(scores, ref[order], rtol=1e-6)
    assert ix.explain(ix.query_matrix([[1, 5]]), 3) == [(1, 1.0, 1.0), (5, 1.0, 1.0)]


def test_sparse_index_saves_mmaps_and_follows_its_store(tmp_path):
    store = hand_store(tmp_path / "s", TOKENS, WEIGHTS)
    ix = SparseIndex.for_store(store)
    assert (store.path / "index" / "sparse" / "meta.json").exists()
    for arr in (ix.postings.data, ix.postings.indices, ix.postings.indptr):
        base = arr
        while isinstance(base, np.ndarray):
            base = base.base
        assert isinstance(base, mmap.mmap)      # views of the mapped files, not copies
    again = SparseIndex.load(store.path / "index" / "sparse")
    assert (again.postings != SparseIndex.from_store(store).postings).nnz == 0
    assert again.ids == store.ids
    # Another store's content under the same index directory: stale, rebuilt.
    import shutil

    store2 = hand_store(tmp_path / "s2", [[7, 8, 9]] * 6, [[1.0, 1.0, 1.0]] * 6)
    shutil.copytree(store.path / "index", store2.path / "index")
    ix2 = SparseIndex.for_store(store2)
    assert ix2.doc_freq[7] == 6 and ix2.doc_freq[1] == 0
    assert SparseIndex.load(store2.path / "index" / "sparse").doc_freq[7] == 6


def test_idf_and_token_queries(tmp_path, tiny_folder):
    from keytok_jax.loading import load_tokenizer

    tok = load_tokenizer(str(tiny_folder))
    words = ["cell", "protein", "cancer", "gene"]
    ids = {w: tok(" " + w, add_special_tokens=False)["input_ids"] for w in words}
    assert all(len(v) == 1 for v in ids.values()), ids
    c, p, ca, g = (ids[w][0] for w in words)
    store = hand_store(tmp_path / "s", [[c, p, 0], [ca, g, 0], [c, ca, 0], [g, 0, 0]],
                       [[1.0, 1.0, 0], [1.0, 1.0, 0], [1.0, 3.0, 0], [1.0, 0, 0]], vocab=49152)
    s = Searcher(store, tokenizer=tok)
    np.testing.assert_allclose(s._idf[[c, p]], bm25_idf(np.array([2, 1]), 4))
    q = s.token_vectors(["cell protein?"])
    got = set(q.indices.tolist())
    # Both word forms (" protein" and "protein"), punctuation ("?") left out, weight = IDF.
    assert {c, p} | set(tok("protein", add_special_tokens=False)["input_ids"]) <= got
    assert not got & set(tok("?", add_special_tokens=False)["input_ids"])
    np.testing.assert_allclose(q[[0]].toarray()[0, [c, p]], s._idf[[c, p]])
    res = s.search(["cell protein?"], "tokens", 10)[0]
    # d0 has both (idf(c) + idf(p)), d2 has cell only.
    assert [d for d, _ in res.hits] == ["d0", "d2"]
    assert [t for t, _, _ in s.explain(res, 0)] == [" protein", " cell"]
    binary = Searcher(store, tokenizer=tok, query_weights="binary").search(["cancer"], "tokens")[0]
    assert [d for d, _ in binary.hits] == ["d2", "d1"]           # weights 3 > 1


def test_dense_index_cosine_topk():
    rng = np.random.default_rng(1)
    docs = rng.normal(size=(37, 8)).astype(np.float32)
    ix = DenseIndex(docs * rng.uniform(0.5, 3, size=(37, 1)), [str(i) for i in range(37)], chunk=16)
    q = rng.normal(size=(3, 8)).astype(np.float32)
    unit = docs / np.linalg.norm(docs, axis=1, keepdims=True)
    for qv, (rows, scores) in zip(q, ix.search(q, k=5)):
        ref = unit @ (qv / np.linalg.norm(qv))
        assert rows.tolist() == np.argsort(-ref)[:5].tolist()
        np.testing.assert_allclose(scores, np.sort(ref)[::-1][:5], atol=1e-5)
    assert len(ix.search(q[:1], k=100)[0][0]) == 37


def test_fusion():
    sparse = (np.array([1, 2, 3]), np.array([9.0, 5.0, 1.0], np.float32))
    dense = (np.array([3, 4]), np.array([0.9, 0.8], np.float32))
    rows, scores = fuse(sparse, dense, 10, method="rrf")
    ref = {1: 1 / 61, 2: 1 / 62, 3: 1 / 63 + 1 / 61, 4: 1 / 62}
    assert rows.tolist() == [3, 1, 2, 4]        # 2 and 4 tie: the lower row first
    np.testing.assert_allclose(scores, [ref[r] for r in rows.tolist()], rtol=1e-6)
    rows, scores = fuse(sparse, dense, 2, method="weighted", alpha=0.25)
    # min-max: sparse {1: 1, 2: .5, 3: 0}, dense {3: 1, 4: 0} → 1: .25, 2: .125, 3: .75, 4: 0
    assert rows.tolist() == [3, 1]
    np.testing.assert_allclose(scores, [0.75, 0.25], rtol=1e-6)


def test_metrics_equal_trec_eval():
    import pytrec_eval

    qrels = {"q1": {"a": 1, "b": 1}, "q2": {"c": 2, "d": 1}}
    run = {"q1": {"x": 3.0, "a": 2.0, "b": 1.0}, "q2": {"d": 2.0, "c": 1.0}}
    got = score(run, qrels)
    # By hand, q1: DCG 1/log2(3) + 1/log2(4), ideal 1 + 1/log2(3); RR 1/2.
    q1 = (1 / math.log2(3) + 0.5) / (1 + 1 / math.log2(3))
    # q2: grade 1 then grade 2 (trec_eval's gain is the raw grade), ideal 2 then 1.
    q2 = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))
    assert got["nDCG@10"] == pytest.approx((q1 + q2) / 2, abs=1e-4)
    assert got["RR@10"] == pytest.approx((0.5 + 1) / 2)
    assert got["R@100"] == pytest.approx(1.0)
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10", "recip_rank", "recall_100"})
    per = ev.evaluate(run)
    assert got["nDCG@10"] == pytest.approx(np.mean([v["ndcg_cut_10"] for v in per.values()]))


def test_export_round_trip(tmp_path, tiny_folder):
    from keytok_jax.loading import load_tokenizer

    tok = load_tokenizer(str(tiny_folder))
    rng = np.random.default_rng(2)
    vocab = 49152
    ids = np.stack([rng.choice(vocab, 6, replace=False) for _ in range(9)]).astype(np.int32)
    ids[4] = -1
    weights = np.round(rng.uniform(0, 30, ids.shape), 4).astype(np.float32)
    weights[4] = 0
    weights[0, 5] = 0.001       # rounds to 0 at factor 100: dropped and counted
    path = tmp_path / "s"
    w = S.StoreWriter.create_or_resume(path, {"model": str(tiny_folder)}, k=6, vocab_size=vocab, shard_size=4)
    for s in range(3):
        lo, hi = 4 * s, min(9, 4 * s + 4)
        w.write_shard(s, [f"doc {i}" for i in range(lo, hi)], ids[lo:hi], weights[lo:hi],
                      np.ones(hi - lo, np.int32), np.zeros(hi - lo, np.uint8))
    w.finalize(3)
    out = tmp_path / "vectors" / "docs.jsonl.gz"
    assert export_lib.main(["--store", str(path), "--output", str(out), "--factor", "100"]) == 0
    got_ids, got_tok, got_w = export_lib.read_vectors(out, tok, vocab)
    assert got_ids == [f"doc {i}" for i in range(9)]
    for i in range(9):
        want = {int(t): float(x) for t, x in zip(ids[i], weights[i]) if t >= 0 and round(x * 100) > 0}
        assert dict(zip(got_tok[i], got_w[i])) == pytest.approx(want, abs=0.5 / 100)
    assert got_tok[4] == []
    counts = export_lib.export_store(S.open(path), tmp_path / "again.jsonl", tok)
    assert counts["dropped_entries"] == 1 and counts["empty_vectors"] == 1
    first = json.loads((tmp_path / "again.jsonl").read_text().splitlines()[0])
    assert set(first) == {"id", "contents", "vector"} and all(isinstance(v, int) for v in first["vector"].values())

    class SpaceTokenizer:          # a vocabulary string with whitespace gets the [tok:ID] key
        def convert_ids_to_tokens(self, ids):
            return ["a", " ", "", "b c"][: len(ids)]

        def convert_tokens_to_ids(self, t):
            return {"a": 0}.get(t)

    keys = export_lib.token_keys(SpaceTokenizer(), 4)
    assert keys == ["a", "[tok:1]", "[tok:2]", "[tok:3]"]
    assert export_lib.key_ids(SpaceTokenizer(), keys) == [0, 1, 2, 3]


# ----------------------------------------------------------------------------- SciFact end to end

SCIFACT = SHARED / "data" / "scifact"


@pytest.fixture(scope="module")
def mini_scifact(tmp_path_factory):
    """A BEIR subset of SciFact: the first 30 test queries, their judged documents and 60 others,
    embedded with SmolLM2 (dense too) at max length 128."""
    shared_or_skip(SCIFACT)
    from keytok_jax.embed import main as embed_main

    root = tmp_path_factory.mktemp("mini-scifact")
    queries, qrels = load_beir(SCIFACT)
    qids = list(qrels)[:30]
    judged = {d for q in qids for d in qrels[q]}
    docs, others = [], 0
    for line in (SCIFACT / "corpus.jsonl").read_text().splitlines():
        d = json.loads(line)
        if d["_id"] in judged or others < 60:
            others += d["_id"] not in judged
            docs.append(line)
    (root / "data" / "qrels").mkdir(parents=True)
    (root / "data" / "corpus.jsonl").write_text("\n".join(docs) + "\n")
    (root / "data" / "queries.jsonl").write_text(
        "\n".join(json.dumps({"_id": q, "text": queries[q]}) for q in qids) + "\n")
    (root / "data" / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q in qids for d, s in qrels[q].items()))
    store = root / "store"
    assert embed_main(["--input", str(root / "data"), "--output", str(store), "--max-length", "128",
                       "--dense", "--shard-size", "64"]) == 0
    return root / "data", store


@pytest.mark.slow
def test_evaluate_cli_on_scifact_subset(mini_scifact, tmp_path, capsys):
    from keytok_jax.evaluate import main as eval_main

    data, store = mini_scifact
    out = tmp_path / "results.json"
    assert eval_main(["--store", str(store), "--dataset", str(data), "--output", str(out),
                      "--markdown", str(tmp_path / "t.md")]) == 0
    report = json.loads(out.read_text())
    assert set(report["modes"]) == {"bm25", "tokens", "encode", "expand", "union", "dense", "hybrid",
                                    "bm25-hybrid"}
    assert report["num_queries"] == 30 and report["judged_docs_missing_from_store"] == 0
    for mode, r in report["modes"].items():
        assert 0 <= r["nDCG@10"] <= 1 and 0 <= r["R@100"] <= 1 and r["queries_per_s"] > 0, mode
    # Real signal on ~110 documents (chance nDCG@10 is ~0.05): BM25 is strong, dense and the
    # model's sparse modes clearly better than chance.
    assert report["modes"]["bm25"]["nDCG@10"] > 0.6
    assert report["modes"]["dense"]["nDCG@10"] > 0.3
    assert report["modes"]["expand"]["nDCG@10"] > 0.2
    assert report["modes"]["dense"]["ratio_to_dense"] == 1.0
    table = capsys.readouterr().out
    assert "| bm25 |" in table and "| hybrid |" in table and "/ dense nDCG@10" in table


def test_search_cli(mini_scifact, tmp_path, capsys):
    from keytok_jax.search import main as search_main

    data, store = mini_scifact
    assert search_main(["--store", str(store), "--query", "vitamin D deficiency and bone fractures",
                        "-k", "3"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("query 1: vitamin D deficiency") and "matched" in text and "  1. " in text
    assert search_main(["--store", str(store), "--queries", str(data / "queries.jsonl"), "--mode", "dense",
                        "-k", "5", "--format", "trec", "--output", str(tmp_path / "run.trec")]) == 0
    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert len(lines) == 30 * 5 and lines[0].split()[1] == "Q0" and lines[0].split()[3] == "1"
    assert search_main(["--store", str(store), "--query", "x", "--mode", "nope"]) == 2
    assert "error: --mode: invalid choice" in capsys.readouterr().err
    assert search_main(["--store", str(tmp_path / "missing"), "--query", "x"]) == 2
    assert "error:" in capsys.readouterr().err


# ----------------------------------------------------------------------------- honest outputs (issue 19)

TINY_DOCS = [("d1", "cats chase mice in the barn"), ("d2", "dogs bark at the mail carrier"),
             ("d3", "protein folding in the cell"), ("d4", "the stock market fell today"),
             ("d5", "a recipe for apple pie"), ("d6", "cell division and mitosis"),
             ("d7", "protein synthesis in ribosomes"), ("d8", "cats sleep most of the day")]
TINY_QUERIES = {"q1": "cell protein", "q2": "cats", "q3": "dogs"}
TINY_QRELS = {"q1": {"d3": 1, "d7": 1}, "q2": {"d1": 1, "d8": 1}, "q3": {"d2": 1}}


@pytest.fixture(scope="module")
def tiny_partial(tmp_path_factory, tiny_folder):
    """A tiny BEIR folder and a store of its first 5 documents (dense too): d7 and d8, both
    judged, are not in the store."""
    from keytok_jax.embed import main as embed_main

    root = tmp_path_factory.mktemp("tiny-beir")
    data = root / "data"
    (data / "qrels").mkdir(parents=True)
    (data / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n"
                                               for i, t in TINY_DOCS))
    (data / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n"
                                                for q, t in TINY_QUERIES.items()))
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{s}\n" for q, rel in TINY_QRELS.items() for d, s in rel.items()))
    store = root / "store"
    assert embed_main(["--input", str(data), "--output", str(store), "--model", str(tiny_folder),
                       "--max-length", "32", "--top-k", "8", "--limit", "5", "--dense",
                       "--no-progress"]) == 0
    return data, store


def test_evaluate_partial_store_is_honest(tiny_partial, tmp_path, capsys):
    """BM25 ranks only the store's documents, and the judged documents the store lacks are
    printed with the table and kept in the JSON."""
    from keytok_jax.evaluate import main as eval_main
    from keytok_jax.retrieval.evaluate import bm25_run

    data, store = tiny_partial
    out = tmp_path / "r.json"
    capsys.readouterr()
    assert eval_main(["--store", str(store), "--dataset", str(data), "--mode", "bm25", "--mode",
                      "tokens", "--output", str(out)]) == 0
    screen = capsys.readouterr().out
    assert "2 of 5 judged documents are not in the store" in screen
    report = json.loads(out.read_text())
    assert report["judged_docs_missing_from_store"] == 2 and report["judged_docs"] == 5
    assert report["modes"]["bm25"]["docs"] == 5 and report["store_rows"] == 5
    run, timing = bm25_run(data, TINY_QUERIES, 10, S.open(store).ids)
    assert timing["docs"] == 5
    assert all(set(hits) <= {"d1", "d2", "d3", "d4", "d5"} for hits in run.values())
    assert set(run["q2"]) == {"d1"}                 # d8 ("cats sleep ...") is not in the store
    whole, _ = bm25_run(data, TINY_QUERIES, 10)
    assert set(whole["q2"]) == {"d1", "d8"}


def test_empty_query_has_no_hits_in_every_mode(tiny_partial, capsys):
    from keytok_jax.search import main as search_main

    _, store = tiny_partial
    s = Searcher(store)
    queries = ["", "   \t", "cats chase mice"]
    for mode in ("tokens", "encode", "expand", "union", "dense", "hybrid", "bm25", "bm25-hybrid"):
        res = s.search(queries, mode, 3)
        assert res[0].hits == [] and res[1].hits == [] and len(res[0].rows) == 0, mode
        if mode in ("dense", "hybrid"):
            assert len(res[2].hits) == 3, mode       # a real query still gets its hits
    for mode in ("encode", "expand"):
        vectors = s.query_vectors(queries, mode)
        assert vectors[[0]].nnz == 0 and vectors[[1]].nnz == 0 and vectors[[2]].nnz > 0, mode
    assert s.search("", "dense", 3)[0].hits == []
    capsys.readouterr()
    assert search_main(["--store", str(store), "--query", " ", "--mode", "dense"]) == 0
    assert "(empty query: no hits)" in capsys.readouterr().out


def test_union_is_the_papers_query_form(tiny_partial):
    """union: the query's own tokens ∪ its top-M aligned tokens, every weight 1; M = 0 leaves the
    query's own tokens (the tokens mode's set, binary)."""
    _, store = tiny_partial
    queries = ["cell protein", "cats chase mice"]
    s = Searcher(store, union_m=4)
    out = s.embedder.encode(queries, output_value=None)
    union = s.query_vectors(queries, "union", out)
    for i, literal in enumerate(s.literal_tokens(queries)):
        want = set(literal) | {int(t) for t in out.token_ids[i, :4]}
        row = union[[i]]
        assert set(row.indices.tolist()) == want and set(row.data.tolist()) == {1.0}
    bare = Searcher(store, union_m=0, query_weights="binary")
    np.testing.assert_array_equal(bare.query_vectors(queries, "union").toarray(),
                                  bare.query_vectors(queries, "tokens").toarray())
    # a document scores the sum of its weights over the set
    hits = s.search(queries[:1], "union", 5)[0]
    docs = s.sparse.postings.T.tocsr()
    for row, score in zip(hits.rows.tolist(), (sc for _, sc in hits.hits)):
        assert score == pytest.approx((docs[[row]] @ union[[0]].T.toarray()).item(), rel=1e-5)


def test_bm25_modes_rank_the_stores_documents(tiny_partial):
    from keytok_jax.retrieval.evaluate import bm25_run

    data, store = tiny_partial
    s = Searcher(store)
    run, _ = bm25_run(data, TINY_QUERIES, 10, S.open(store).ids)
    for q, text in TINY_QUERIES.items():
        hits = s.search(text, "bm25", 10)[0].hits
        assert [d for d, _ in hits] == list(run[q])
        assert [sc for _, sc in hits] == pytest.approx(list(run[q].values()), rel=1e-5)
    assert [d for d, _ in s.search("cats", "bm25", 10)[0].hits] == ["d1"]   # d8 is not in the store
    fused = Searcher(store, bm25_with="tokens", fusion="rrf").search("cats", "bm25-hybrid", 3)[0]
    assert fused.hits[0][0] == "d1" and len(fused.hits) <= 3
    with pytest.raises(Exception, match="bm25_with"):
        Searcher(store, bm25_with="bm25")
