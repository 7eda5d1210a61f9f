"""The host side of the corpus job alone: read → tokenize → plan → write, the device step replaced
by a no-op, in real tokens/s, with tokenization in a thread (0 workers) or in N worker processes
(issue 21: can the host keep up with a fast accelerator?).

    python benchmarks/host_pipeline.py --dataset ../shared/data/scifact --limit 2000 --workers 0 1 2

Per setting: the job's own stages in the job's order (``pipeline.read.read_corpus`` in shards of
``--shard-size``, :class:`keytok_jax.pipeline.tokenize_pool.TokenizePool` one shard ahead, the
embedder's plan and the host arrays of every batch (``Embedder.host_arrays``), and the
store's ``write_shard`` of each shard with blank vectors), timed from the first read to the last
write; the pool's start-up (spawning workers) is reported apart. Each setting starts from a fresh copy
of the tokenizer (the literal tokens' word cache empty, as in a new job). Beside them: the raw tokenizer
(one batched ``tokenizer(texts)`` call over the same texts, no template, no truncation, no rows
built) and the reader alone. The preset is the job's (literal document tokens included: their
second tokenizer call is host work too). Every setting must give the same tokens (checked).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from keytok_jax import store as store_lib  # noqa: E402
from keytok_jax.loading import load_model  # noqa: E402
from keytok_jax.pipeline import Embedder  # noqa: E402
from keytok_jax.pipeline.read import read_corpus  # noqa: E402
from keytok_jax.pipeline.tokenize_pool import TokenizePool  # noqa: E402
from keytok_jax.settings import JOB_PRESET, EmbedSettings, ModelSettings, build, resolve  # noqa: E402


def read_shards(path: Path, limit: int, shard_size: int):
    shard = []
    for i, doc in enumerate(read_corpus(path)):
        if i >= limit:
            break
        shard.append(doc)
        if len(shard) == shard_size:
            yield shard
            shard = []
    if shard:
        yield shard


def host_work(emb: Embedder, tokenized) -> int:
    """The embedder's host work for one shard: its plan and every batch's arrays; real tokens."""
    lengths = np.array([len(d.ids) for d in tokenized], np.int32)
    for batch in emb.plan(lengths):
        emb.host_arrays(tokenized, batch)
    return int(lengths.sum())


def run(emb: Embedder, tokenizer, path: Path, limit: int, shard_size: int, workers: int, out: Path) -> dict:
    """One setting, from a fresh copy of the tokenizer (its word cache empty, as a job starts)."""
    k, s = emb.settings.top_k, emb.settings
    t0 = time.perf_counter()
    pool = TokenizePool(copy.deepcopy(tokenizer), workers)
    pool.start()
    startup = time.perf_counter() - t0
    writer = store_lib.StoreWriter.create_or_resume(out, {"bench": "host", **s.as_dict()}, k=k,
                                                    vocab_size=emb.model.config.vocab_size,
                                                    shard_size=shard_size)
    tokens, checksum, docs_n = 0, 0, 0
    t0 = time.perf_counter()
    pending = None
    shards = read_shards(path, limit, shard_size)

    def finish(index, docs, future):
        nonlocal tokens, checksum, docs_n
        tokenized = future.result()
        tokens += host_work(emb, tokenized)
        checksum = (checksum * 31 + sum(int(d.ids.sum()) + (0 if d.literal is None else int(d.literal.sum()))
                                        for d in tokenized)) % (1 << 61)
        n = len(docs)
        writer.write_shard(index, [d.id for d in docs], np.full((n, k), -1, np.int32),
                           np.zeros((n, k), np.float32),
                           np.array([len(d.ids) for d in tokenized], np.int32),
                           np.array([d.flags for d in tokenized], np.uint8))
        docs_n += n

    for index, docs in enumerate(shards):
        future = pool.submit(docs)
        if pending is not None:
            finish(*pending)
        pending = (index, docs, future)
    if pending is not None:
        finish(*pending)
    seconds = time.perf_counter() - t0
    pool.close()
    return {"workers": workers, "docs": docs_n, "real_tokens": tokens, "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds), "docs_per_s": round(docs_n / seconds, 1),
            "startup_seconds": round(startup, 2), "checksum": checksum}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=str(ROOT.parent / "shared" / "data" / "scifact"),
                   help="BEIR folder or corpus file (default: ../shared/data/scifact)")
    p.add_argument("--limit", type=int, default=2000, help="documents (default: %(default)s)")
    p.add_argument("--shard-size", type=int, default=256, help="documents per shard (default: %(default)s)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2],
                   help="tokenize worker counts measured (0: a thread; default: %(default)s)")
    p.add_argument("--output", default=None, help="JSON report (default: print only)")
    args = p.parse_args(argv)
    path = Path(args.dataset)
    path = path / "corpus.jsonl" if path.is_dir() else path
    if not path.exists():
        raise SystemExit(f"{path} not found (../shared/data holds SciFact)")
    opts = resolve([EmbedSettings, ModelSettings], {}, preset=JOB_PRESET)
    emb = Embedder(load_model(opts["model"]), build(EmbedSettings, opts))
    pristine = copy.deepcopy(emb.doc_tokenizer)
    texts = [d.text for _, d in zip(range(args.limit), read_corpus(path))]
    t0 = time.perf_counter()
    raw = emb.model.tokenizer(texts, add_special_tokens=False)["input_ids"]
    raw_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = sum(1 for _ in zip(range(args.limit), read_corpus(path)))
    read_s = time.perf_counter() - t0
    report = {"cores": os.cpu_count(), "dataset": str(path), "docs": len(texts),
              "doc_tokens": emb.settings.doc_tokens,
              "raw_tokenizer": {"tokens": sum(map(len, raw)), "seconds": round(raw_s, 3),
                                "tokens_per_s": round(sum(map(len, raw)) / raw_s)},
              "read_only": {"docs": n, "seconds": round(read_s, 3), "docs_per_s": round(n / read_s)},
              "runs": []}
    tmp = Path(tempfile.mkdtemp(prefix="keytok-host-"))
    try:
        for w in args.workers:
            r = run(emb, pristine, path, args.limit, args.shard_size, w, tmp / f"w{w}-{len(report['runs'])}")
            report["runs"].append(r)
            print(f"workers {w}: {r['tokens_per_s']:,} real tokens/s ({r['docs_per_s']} docs/s, "
                  f"{r['seconds']} s, start-up {r['startup_seconds']} s)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if len({r["checksum"] for r in report["runs"]}) > 1:
        raise SystemExit("the worker settings gave different tokens")
    print(f"raw tokenizer: {report['raw_tokenizer']['tokens_per_s']:,} tokens/s; "
          f"reader alone: {report['read_only']['docs_per_s']:,} docs/s")
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
