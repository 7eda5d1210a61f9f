"""BEIR-style evaluation of a store's search modes.

Runs each query mode of :class:`~keytok_jax.retrieval.Searcher` over a BEIR dataset's queries
(those with relevance judgements in the split), a BM25 baseline (:mod:`keytok_jax.retrieval.bm25`:
``bm25s``, Lucene-style BM25, k1=1.5, b=0.75, English stop words and Snowball stemming) on the
same documents (the corpus
documents whose ids are in the store, so a store holding part of a corpus is compared with BM25 on
that part), and scores every run with ``ir-measures`` (trec_eval's implementations through
pytrec_eval): nDCG@10, Recall@100, MRR@10. The report holds each mode's ratio to dense nDCG@10
and queries/s; :func:`markdown` renders it as a table, under a line saying how many judged
documents the store lacks (``judged_docs_missing_from_store`` of ``judged_docs`` in the report):
no mode can retrieve those, and every metric counts them as misses.

Queries/s counts the work of a query after one-time costs: the model load and the compilations
(a warm-up pass over a few queries) are reported separately.
"""
from __future__ import annotations

import time
from collections.abc import Collection
from pathlib import Path

import numpy as np

from .. import store as store_lib
from ..settings.search import ALL_MODES, EvaluateSettings
from .bm25 import BM25Index, corpus_texts
from .queries import load_beir
from .searcher import Searcher

__all__ = ["METRICS", "LABELS", "ALL_MODES", "score", "bm25_run", "evaluate", "markdown"]

METRICS = ("nDCG@10", "R@100", "RR@10")
LABELS = {"nDCG@10": "nDCG@10", "R@100": "Recall@100", "RR@10": "MRR@10"}
_E = EvaluateSettings()


def score(run: dict[str, dict[str, float]], qrels) -> dict[str, float]:
    import ir_measures

    measures = [ir_measures.parse_measure(m) for m in METRICS]
    agg = ir_measures.calc_aggregate(measures, qrels, run)
    return {m: float(agg[ir_measures.parse_measure(m)]) for m in METRICS}


def bm25_run(dataset, queries: dict[str, str], k: int,
             doc_ids: Collection[str] | None = None) -> tuple[dict, dict]:
    """BM25 (:class:`~keytok_jax.retrieval.bm25.BM25Index`) over the dataset's corpus (title +
    text), restricted to ``doc_ids`` when given (a store's own documents, so BM25 and the store's
    modes rank the same documents); returns (run, timings and the number of documents indexed)."""
    ids, texts = corpus_texts(Path(dataset), None if doc_ids is None else set(doc_ids), format="beir")
    index = BM25Index(np.arange(len(ids)), texts)
    qids = list(queries)
    t0 = time.perf_counter()
    hits = index.search([queries[q] for q in qids], k)
    search_s = time.perf_counter() - t0
    run = {q: {ids[r]: float(s) for r, s in zip(rows.tolist(), scores.tolist())}
           for q, (rows, scores) in zip(qids, hits)}
    return run, {"index_seconds": index.index_seconds, "queries_per_s": len(qids) / search_s,
                 "docs": len(ids)}


def _mode_run(searcher: Searcher, mode: str, queries: dict[str, str], qrels, k: int,
              warmup: int) -> dict:
    """One mode's scores, its queries/s after a warm-up pass, and the warm-up's seconds."""
    qids = list(queries)
    texts = [queries[q] for q in qids]
    t0 = time.perf_counter()
    searcher.search(texts[:warmup], mode, k)       # loads the model, compiles, tokenizer tables
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = searcher.search(texts, mode, k)
    search_s = time.perf_counter() - t0
    run = {q: dict(r.hits) for q, r in zip(qids, results)}
    return {**score(run, qrels), "queries_per_s": len(qids) / search_s, "warmup_seconds": warm_s}


def evaluate(store_path, dataset, modes=ALL_MODES, *, split: str = _E.split, k: int = _E.k,
             warmup: int = _E.warmup, progress=None, **searcher_kw) -> dict:
    """Run and score each mode; returns the report dict (see the module doc). ``searcher_kw``
    go to :class:`Searcher` (the query settings)."""
    queries, qrels = load_beir(dataset, split)
    store = store_lib.open(store_path)
    judged_docs = {d for rel in qrels.values() for d in rel}
    report = {"store": str(store_path), "dataset": str(dataset), "split": split,
              "num_queries": len(queries), "k": k, "store_rows": len(store),
              "judged_docs": len(judged_docs),
              "judged_docs_missing_from_store": len(judged_docs - set(store.ids)), "modes": {}}
    searcher = None
    for mode in modes:
        if progress:
            progress(f"{mode} ...")
        if mode == "bm25":
            run, timing = bm25_run(dataset, queries, k, store.ids)
            report["modes"][mode] = {**score(run, qrels), **timing}
            continue
        if searcher is None:
            t0 = time.perf_counter()
            searcher = Searcher(store, corpus=dataset, **searcher_kw)
            report["index"] = {"build_or_open_seconds": time.perf_counter() - t0,
                               "sparse_bytes": searcher.sparse.nbytes, "nnz": searcher.sparse.postings.nnz}
        report["modes"][mode] = _mode_run(searcher, mode, queries, qrels, k, warmup)
    if searcher is not None and searcher._dense is not None:
        report["index"]["dense_bytes"] = searcher.dense.nbytes
    dense = report["modes"].get("dense", {}).get("nDCG@10")
    for m in report["modes"].values():
        m["ratio_to_dense"] = m["nDCG@10"] / dense if dense else None
    return report


def _missing_line(report: dict) -> str:
    missing, judged = report["judged_docs_missing_from_store"], report["judged_docs"]
    if not missing:
        return f"every judged document ({judged}) is in the store"
    return (f"{missing} of {judged} judged documents are not in the store: no mode can retrieve "
            "them (they count as misses); BM25 ranks the store's documents only")


def markdown(report: dict) -> str:
    lines = [f"{report['dataset']} ({report['split']}, {report['num_queries']} queries), "
             f"store {report['store']} ({report['store_rows']} docs)",
             _missing_line(report), "",
             "| mode | " + " | ".join(LABELS[m] for m in METRICS) + " | / dense nDCG@10 | queries/s |",
             "|---|" + "---|" * (len(METRICS) + 2)]
    for mode, r in report["modes"].items():
        ratio = f"{r['ratio_to_dense']:.3f}" if r.get("ratio_to_dense") is not None else "-"
        lines.append(f"| {mode} | " + " | ".join(f"{r[m]:.4f}" for m in METRICS)
                     + f" | {ratio} | {r['queries_per_s']:.1f} |")
    if "index" in report:
        ix = report["index"]
        lines += ["", f"sparse index: {ix['nnz']:,} postings, {ix['sparse_bytes'] / 2**20:.1f} MiB"
                  + (f"; dense: {ix['dense_bytes'] / 2**20:.1f} MiB" if "dense_bytes" in ix else "")]
    return "\n".join(lines)
