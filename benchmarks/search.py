"""Search cost per query mode and how it grows with the corpus.

    python benchmarks/search.py --store STORE --dataset ../shared/data/scifact \
        [--sizes store,100000,1000000] [--latency-queries 100] --output search.json

STORE is a store with dense vectors (``python -m keytok_jax.embed ... --dense``); DATASET gives
the queries (BEIR queries.jsonl, its test split). For each corpus size, ``store`` being the store
itself and a number N being N rows sampled with replacement from the store (a synthetic corpus
with the store's token and weight statistics), it reports:

* index build time (sparse: postings from top-k arrays; dense: normalise + place on device),
  save time, reopen time (memory-mapped), index bytes, and the process's peak RSS so far;
* per mode, search only (the query vectors are made once beforehand): queries/s over all
  queries in one call, and p50 / p99 latency of single-query calls (``--latency-queries``);
* the query-side cost, independent of corpus size: tokenizer-only vectors (``tokens``) vs a
  model call (``encode``/``expand``/``dense``/``hybrid``): p50 / p99 single-query latency and
  batched queries/s.

End-to-end latency of a mode ≈ its query-side cost + its search cost. A markdown table is printed
last; ``--output`` writes the JSON.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from keytok_jax import store as store_lib
from keytok_jax.evaluate import load_beir
from keytok_jax.search import DenseIndex, Searcher, SparseIndex, fuse

MODES = ("tokens", "encode", "expand", "dense", "hybrid")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentiles(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def query_side(searcher: Searcher, texts: list[str], n_latency: int) -> tuple[dict, dict]:
    """Query vectors per mode (made once) and the cost of making them."""
    vectors, cost = {}, {}
    searcher.token_vectors(texts[:2])                  # tokenizer tables
    vectors["tokens"], t = timed(searcher.token_vectors, texts)
    single = [timed(searcher.token_vectors, [q])[1] for q in texts[:n_latency]]
    cost["tokens"] = {"queries_per_s": len(texts) / t, **percentiles(single), "model": False}
    # Model load and compilation of every shape the timed calls use, outside the timings.
    searcher._encoded(texts)
    searcher._encoded(texts[:1])
    encoded, t = timed(searcher._encoded, texts)
    single = [timed(searcher._encoded, [q])[1] for q in texts[:n_latency]]
    cost["model"] = {"queries_per_s": len(texts) / t, **percentiles(single), "model": True}
    vectors["encode"] = searcher.query_vectors(texts, "encode", encoded)
    vectors["expand"] = searcher.query_vectors(texts, "expand", encoded)
    vectors["dense"] = encoded.dense
    return vectors, cost


def sample_corpus(store, size: int, seed: int = 0):
    """``size`` rows drawn with replacement from the store (token ids, weights, dense, ids)."""
    token_ids = store.token_ids.read().result()
    token_weights = store.token_weights.read().result()
    dense = store.dense.read().result()
    ids = store.ids
    if size == len(store):
        return token_ids, token_weights, dense, ids
    rows = np.random.default_rng(seed).integers(0, len(store), size)
    return (token_ids[rows], token_weights[rows], dense[rows],
            [f"{ids[r]}#{i}" for i, r in enumerate(rows.tolist())])


def bench_size(store, size: int, vectors: dict, n_latency: int, modes, k: int, workdir: Path,
               hybrid: dict) -> dict:
    token_ids, token_weights, dense, ids = sample_corpus(store, size)
    out: dict = {"docs": size}
    sparse, t = timed(SparseIndex.from_arrays, token_ids, token_weights, ids, store.vocab_size)
    out["sparse_build_s"] = t
    d = workdir / f"sparse-{size}"
    _, out["sparse_save_s"] = timed(sparse.save, d)
    sparse, out["sparse_reopen_s"] = timed(SparseIndex.load, d)
    out["sparse_bytes"] = sparse.nbytes
    out["sparse_postings"] = int(sparse.postings.nnz)
    out["sparse_disk_bytes"] = sum(f.stat().st_size for f in d.iterdir())
    dense_index, out["dense_build_s"] = timed(DenseIndex, dense, ids)
    out["dense_bytes"] = dense_index.nbytes
    del token_ids, token_weights, dense
    out["peak_rss_mb"] = peak_rss_mb()

    def search(mode, sl):
        if mode == "dense":
            return dense_index.search(vectors["dense"][sl], k)
        if mode == "hybrid":
            s = sparse.search(vectors[hybrid["sparse"]][sl], hybrid["depth"])
            dd = dense_index.search(vectors["dense"][sl], hybrid["depth"])
            return [fuse(a, b, k, method=hybrid["fusion"], alpha=hybrid["alpha"]) for a, b in zip(s, dd)]
        return sparse.search(vectors[mode][sl], k)

    nq = vectors["dense"].shape[0]
    out["modes"] = {}
    for mode in modes:
        search(mode, slice(0, 1))                       # compile both shapes (dense), warm caches
        search(mode, slice(0, nq))
        _, t = timed(search, mode, slice(0, nq))
        single = [timed(search, mode, slice(i, i + 1))[1] for i in range(min(n_latency, nq))]
        out["modes"][mode] = {"queries_per_s": nq / t, **percentiles(single)}
        print(f"  {size:>9,} docs  {mode:<7} {nq / t:10.1f} q/s  p50 {out['modes'][mode]['p50_ms']:.2f} ms",
              file=sys.stderr)
    shutil.rmtree(d, ignore_errors=True)
    return out


def markdown(report: dict) -> str:
    lines = ["| docs | sparse build s | reopen s | sparse MiB | postings | dense MiB | peak RSS MiB |",
             "|---|---|---|---|---|---|---|"]
    for r in report["sizes"]:
        lines.append(f"| {r['docs']:,} | {r['sparse_build_s']:.3f} | {r['sparse_reopen_s']:.3f} | "
                     f"{r['sparse_bytes'] / 2**20:.0f} | {r['sparse_postings']:,} | {r['dense_bytes'] / 2**20:.0f} | "
                     f"{r['peak_rss_mb']:.0f} |")
    lines += ["", "Search only (query vectors made beforehand):", "",
              "| docs | mode | queries/s (batched) | p50 ms | p99 ms |", "|---|---|---|---|---|"]
    for r in report["sizes"]:
        for mode, m in r["modes"].items():
            lines.append(f"| {r['docs']:,} | {mode} | {m['queries_per_s']:.1f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} |")
    q = report["query_side"]
    lines += ["", "Query side (any corpus size):", "", "| query vectors | queries/s (batched) | p50 ms | p99 ms |",
              "|---|---|---|---|",
              f"| tokenizer only (tokens) | {q['tokens']['queries_per_s']:.0f} | {q['tokens']['p50_ms']:.2f} | {q['tokens']['p99_ms']:.2f} |",
              f"| model call (encode, expand, dense, hybrid) | {q['model']['queries_per_s']:.1f} | {q['model']['p50_ms']:.1f} | {q['model']['p99_ms']:.1f} |"]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="store with dense vectors")
    p.add_argument("--dataset", required=True, help="BEIR folder whose queries (test split) are used")
    p.add_argument("--split", default="test")
    p.add_argument("--sizes", default="store,100000,1000000",
                   help="corpus sizes: 'store' or a row count sampled from the store (default store,100000,1000000)")
    p.add_argument("--modes", default=",".join(MODES), help="modes to time (default all)")
    p.add_argument("--latency-queries", type=int, default=100, help="single-query calls timed per mode")
    p.add_argument("-k", type=int, default=10, help="results per query (default 10)")
    p.add_argument("--output", help="JSON report")
    args = p.parse_args(argv)
    store = store_lib.open(args.store)
    if store.dense is None:
        p.error(f"{args.store} has no dense vectors (embed with --dense)")
    queries, _ = load_beir(args.dataset, args.split)
    texts = list(queries.values())
    modes = args.modes.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        searcher = Searcher(store, index_dir=Path(tmp) / "ix")
        vectors, cost = query_side(searcher, texts, args.latency_queries)
        hybrid = {"sparse": searcher.hybrid_sparse, "depth": searcher.depth, "fusion": searcher.fusion,
                  "alpha": searcher.alpha}
        report = {"store": args.store, "queries": len(texts), "k": args.k, "query_side": cost,
                  "hybrid": hybrid, "sizes": []}
        for size in args.sizes.split(","):
            n = len(store) if size == "store" else int(size)
            report["sizes"].append(bench_size(store, n, vectors, args.latency_queries, modes, args.k,
                                              Path(tmp), hybrid))
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
