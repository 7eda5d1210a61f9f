"""``python -m keytok_jax.evaluate``: BEIR-style evaluation of a store's search modes.

Runs each query mode of :mod:`keytok_jax.search` over a BEIR dataset's queries (those with
relevance judgements in the split), a BM25 baseline (``bm25s``: Lucene-style BM25, k1=1.5,
b=0.75, English stop words and Snowball stemming) on the same corpus, and scores every run with
``ir-measures`` (trec_eval's implementations through pytrec_eval): nDCG@10, Recall@100, MRR@10.
Prints a markdown table (with each mode's ratio to dense nDCG@10 and queries/s) and writes JSON.

Queries/s counts the work of a query after one-time costs: the model load and the compilations
(a warm-up pass over a few queries) are reported separately.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


from . import store as store_lib
from .search import FUSIONS, MODES, QUERY_WEIGHTS, Searcher

METRICS = ("nDCG@10", "R@100", "RR@10")
LABELS = {"nDCG@10": "nDCG@10", "R@100": "Recall@100", "RR@10": "MRR@10"}
ALL_MODES = ("bm25",) + MODES


class DatasetError(ValueError):
    pass


def read_queries(path: Path) -> dict[str, str]:
    """BEIR ``queries.jsonl``: ``{"_id", "text"}`` per line."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out[str(row["_id"])] = str(row["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DatasetError(f"{path}:{n}: not a BEIR query line ({type(e).__name__}: {e})") from None
    return out


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """BEIR ``qrels/SPLIT.tsv``: ``query-id  corpus-id  score`` (header optional)."""
    out: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if n == 1 and parts[0] == "query-id" or not line.strip():
                continue
            try:
                qid, did, score = parts
                out.setdefault(qid, {})[did] = int(score)
            except ValueError:
                raise DatasetError(f"{path}:{n}: expected 'query-id<TAB>corpus-id<TAB>score', "
                                   f"got {line.rstrip()!r}") from None
    return out


def load_beir(dataset, split: str = "test") -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """Queries that have judgements in ``split``, and the judgements."""
    d = Path(dataset)
    qrels_path = d / "qrels" / f"{split}.tsv"
    for p in (d / "queries.jsonl", qrels_path):
        if not p.exists():
            raise DatasetError(f"{p} not found ({d} is not a BEIR dataset with a {split!r} split)")
    queries = read_queries(d / "queries.jsonl")
    qrels = read_qrels(qrels_path)
    missing = sorted(set(qrels) - set(queries))
    if missing:
        raise DatasetError(f"{qrels_path}: {len(missing)} judged queries are not in queries.jsonl "
                           f"(first: {missing[:5]})")
    return {q: queries[q] for q in qrels}, qrels


def score(run: dict[str, dict[str, float]], qrels) -> dict[str, float]:
    import ir_measures

    measures = [ir_measures.parse_measure(m) for m in METRICS]
    agg = ir_measures.calc_aggregate(measures, qrels, run)
    return {m: float(agg[ir_measures.parse_measure(m)]) for m in METRICS}


def bm25_run(dataset, queries: dict[str, str], k: int) -> tuple[dict, dict]:
    """BM25 over the dataset's corpus (title + text) with bm25s; returns (run, timings)."""
    import bm25s
    import Stemmer

    from .readers import read_corpus

    ids, texts = [], []
    for doc in read_corpus(Path(dataset), format="beir"):
        ids.append(doc.id)
        texts.append(doc.text)
    stemmer = Stemmer.Stemmer("english")
    t0 = time.perf_counter()
    retriever = bm25s.BM25(k1=1.5, b=0.75)
    retriever.index(bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False),
                    show_progress=False)
    index_s = time.perf_counter() - t0
    qids = list(queries)
    t0 = time.perf_counter()
    q_tokens = bm25s.tokenize([queries[q] for q in qids], stopwords="en", stemmer=stemmer, show_progress=False)
    rows, scores = retriever.retrieve(q_tokens, k=min(k, len(ids)), show_progress=False, n_threads=1)
    search_s = time.perf_counter() - t0
    run = {q: {ids[r]: float(s) for r, s in zip(rr, ss) if s > 0} for q, rr, ss in zip(qids, rows, scores)}
    return run, {"index_seconds": index_s, "queries_per_s": len(qids) / search_s}


def evaluate(store_path, dataset, modes=ALL_MODES, *, split: str = "test", k: int = 100,
             warmup: int = 8, progress=None, **searcher_kw) -> dict:
    """Run and score each mode; returns the report dict (see module doc)."""
    queries, qrels = load_beir(dataset, split)
    store = store_lib.open(store_path)
    store_ids = set(store.ids)
    judged_docs = {d for rel in qrels.values() for d in rel}
    report = {"store": str(store_path), "dataset": str(dataset), "split": split,
              "num_queries": len(queries), "k": k, "store_rows": len(store),
              "judged_docs_missing_from_store": len(judged_docs - store_ids), "modes": {}}
    searcher = None
    qids = list(queries)
    texts = [queries[q] for q in qids]
    for mode in modes:
        if progress:
            progress(f"{mode} ...")
        if mode == "bm25":
            run, timing = bm25_run(dataset, queries, k)
            report["modes"][mode] = {**score(run, qrels), **timing}
            continue
        if searcher is None:
            t0 = time.perf_counter()
            searcher = Searcher(store, **searcher_kw)
            report["index"] = {"build_or_open_seconds": time.perf_counter() - t0,
                               "sparse_bytes": searcher.sparse.nbytes, "nnz": searcher.sparse.postings.nnz}
        t0 = time.perf_counter()
        searcher.search(texts[:warmup], mode, k)       # loads the model, compiles, tokenizer tables
        warm_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        results = searcher.search(texts, mode, k)
        search_s = time.perf_counter() - t0
        run = {q: dict(r.hits) for q, r in zip(qids, results)}
        report["modes"][mode] = {**score(run, qrels), "queries_per_s": len(qids) / search_s,
                                 "warmup_seconds": warm_s}
    if searcher is not None and searcher._dense is not None:
        report["index"]["dense_bytes"] = searcher.dense.nbytes
    dense = report["modes"].get("dense", {}).get("nDCG@10")
    for m in report["modes"].values():
        m["ratio_to_dense"] = m["nDCG@10"] / dense if dense else None
    return report


def markdown(report: dict) -> str:
    lines = [f"{report['dataset']} ({report['split']}, {report['num_queries']} queries), "
             f"store {report['store']} ({report['store_rows']} docs)", "",
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m keytok_jax.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="store written by python -m keytok_jax.embed "
                   "(with --dense for the dense and hybrid modes)")
    p.add_argument("--dataset", required=True, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    p.add_argument("--mode", action="append", choices=ALL_MODES + ("all",),
                   help="mode to evaluate; repeat for several (default: all). bm25 is the baseline")
    p.add_argument("--split", default="test", help="qrels split (qrels/SPLIT.tsv; default test)")
    p.add_argument("--k", type=int, default=100, help="results retrieved per query (default 100, "
                   "what Recall@100 needs)")
    p.add_argument("--query-weights", choices=QUERY_WEIGHTS, default="idf",
                   help="tokens/expand modes: weight of a query token (default idf)")
    p.add_argument("--expand-m", type=int, default=16, help="expand mode: aligned tokens added (default 16)")
    p.add_argument("--hybrid-sparse", choices=("tokens", "encode", "expand"), default="expand",
                   help="the sparse side of hybrid (default expand)")
    p.add_argument("--fusion", choices=FUSIONS, default="weighted",
                   help="hybrid fusion: weighted (min-max normalised scores, default) or rrf "
                        "(reciprocal rank, k=60)")
    p.add_argument("--alpha", type=float, default=0.3,
                   help="weighted fusion: weight of the sparse side (default 0.3)")
    p.add_argument("--shift", help="the shift file the store was embedded with, if any")
    p.add_argument("--query-instruction", help="instruction for queries (asymmetric models)")
    p.add_argument("--output", help="write the report as JSON here")
    p.add_argument("--markdown", help="also write the table as markdown here")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    modes = args.mode or ["all"]
    if "all" in modes:
        modes = list(ALL_MODES)
    try:
        report = evaluate(args.store, args.dataset, modes, split=args.split, k=args.k,
                          progress=lambda m: print(m, file=sys.stderr),
                          query_weights=args.query_weights, expand_m=args.expand_m,
                          hybrid_sparse=args.hybrid_sparse, fusion=args.fusion, alpha=args.alpha,
                          shift=args.shift, query_instruction=args.query_instruction)
    except (DatasetError, store_lib.StoreError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = markdown(report)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
