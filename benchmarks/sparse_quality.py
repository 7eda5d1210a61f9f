"""Sparse retrieval quality before and after the corpus correction, on SciFact (issue 17).

    python benchmarks/sparse_quality.py --out out/sparse-quality               # all of SciFact
    python benchmarks/sparse_quality.py --out out/sparse-583 --distractors 300 --max-length 256

Steps (each kept when its output exists, so an interrupted run resumes where it stopped):

1. the corpus: all of SciFact, or (``--distractors N``) every document judged in the test qrels
   plus the first N others;
2. two corpus jobs (``python -m keytok_jax.embed``, the default preset, ``--dense``): ``before``
   with ``--correction none`` (what the job wrote before the correction) and ``after`` with the
   job's default correction (the fit's seconds are in its summary). ``--after derived`` saves the
   second model pass (an hour on 2 cores for all of SciFact): ``after`` is then derived from
   ``before`` as in step 4, its fit made from ``before``'s dense vectors of the documents the job
   samples (the job's own rule, :func:`keytok_jax.pipeline.fitting.sample_positions`); run the
   sub-corpus with both to see the derived store equal the job's;
3. ``python -m keytok_jax.evaluate`` of both stores: BM25, every keytok mode, the BM25 fusions;
4. sweeps without another model pass: stores derived from ``before``'s dense vectors (for this
   preset the dense vector is the pooled vector the top-k projects), re-projected through the same
   jitted functions as the job's step (``projection.correct`` → ``topk_projection``) with each
   correction (the fit of ``after``), weighting and document top-K; the derived ``none`` store
   is compared with ``before`` token by token (the re-projection is the job's projection);
5. ``OUT/report.json`` and ``OUT/tables.md`` (the README's tables).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from beir_subset import judged_subcorpus

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
sys.path.insert(0, str(ROOT))

from keytok_jax import store as store_lib  # noqa: E402
from keytok_jax.loading import load_model  # noqa: E402
from keytok_jax.pipeline.correction import (CorrectionFit, Moments, correction_vectors,  # noqa: E402
                                            model_hash)
from keytok_jax.pipeline.fitting import FIT_ATTACHMENT, sample_positions  # noqa: E402
from keytok_jax.pipeline import Embedder  # noqa: E402
from keytok_jax.pipeline.plan import pad_literal  # noqa: E402
from keytok_jax.projection import (CORRECTIONS, DOC_TOKENS, correct, literal_projection,  # noqa: E402
                                  topk_projection)
from keytok_jax.retrieval.bm25 import corpus_texts  # noqa: E402
from keytok_jax.settings import JOB_PRESET, EmbedSettings, FitSettings, defaults  # noqa: E402

# The before job: what the corpus job wrote before the correction and literal document tokens.
BEFORE = ["--correction", "none", "--doc-tokens", "aligned", "--top-k", "64"]
EMBED_FIELDS = {f.name for f in dataclasses.fields(EmbedSettings)}
BINARY = "binary"   # the control's weighting (derived stores only; token queries need no embedder)
MODES = ("bm25", "tokens", "encode", "expand", "union", "dense", "hybrid", "bm25-hybrid")
SWEEP_MODES = ("tokens", "union")
FUSIONS = [f"{w}:weighted:{a}" for w in ("dense", "tokens", "union", "expand") for a in (0.5, 0.7, 0.8, 0.9)] + [
    "dense:rrf:0.5", "union:rrf:0.5"]


def sh(cmd: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-m", *cmd], check=True, stdout=f, stderr=subprocess.STDOUT,
                       cwd=ROOT)


def embed(dataset: Path, store: Path, flags: list[str]) -> dict:
    """The job's summary (run, or resumed, unless the store is finished)."""
    summary = Path(f"{store}.summary.json")
    if not (summary.exists() and (store / "manifest.json").exists()
            and json.loads((store / "manifest.json").read_text()).get("complete")):
        sh(["keytok_jax.embed", "--input", str(dataset), "--output", str(store), "--dense",
            "--no-progress", "--summary-json", str(summary), *flags], Path(f"{store}.log"))
    return json.loads(summary.read_text())


def evaluate(store: Path, dataset: Path, modes, name: str, extra=()) -> dict:
    out = store.parent / "eval" / f"{name}.json"
    if not out.exists():
        cmd = ["keytok_jax.evaluate", "--store", str(store), "--dataset", str(dataset),
               "--output", str(out), *extra]
        for m in modes:
            cmd += ["--mode", m]
        sh(cmd, out.with_suffix(".log"))
    return json.loads(out.read_text())


def derive(src: Path, dst: Path, head: np.ndarray, fit: CorrectionFit, correction: str,
           top_k: int, weighting: str, doc_tokens: str = "aligned", literal=None,
           chunk: int = 4096, rows: int = 512) -> None:
    """A store like ``src`` whose sparse vectors are ``src``'s dense vectors re-projected with
    another correction, document tokens, top-K or weighting (the settings say which);
    ``literal``: each row's literal tokens (:func:`literal_of`), for ``doc_tokens="literal"``."""
    if (dst / "manifest.json").exists() and store_lib.open(dst).complete:
        return
    s = store_lib.open(src)
    settings = {**s.settings, "correction": correction, "top_k": top_k, "weighting": weighting,
                "doc_tokens": doc_tokens}
    if correction != "none":
        settings["correction_fit"] = fit.fingerprint()
    writer = store_lib.StoreWriter.create_or_resume(dst, settings, k=top_k, vocab_size=s.vocab_size,
                                                    dim=s.dim, shard_size=s.shard_size)
    if correction != "none":
        writer.attach(FIT_ATTACHMENT, fit.as_json())
    vectors = correction_vectors(correction, head.shape[1], fit)

    def project(start, x):
        x = correct(x, vectors)
        if doc_tokens == "aligned":
            return topk_projection(x, head, top_k, chunk=chunk, weighting=weighting)
        docs = literal[start: start + len(x)]
        width = max(max((len(d) for d in docs), default=0), top_k)
        ids, w = literal_projection(x, head, pad_literal(docs, len(docs), width), top_k)
        if weighting == BINARY:   # the control: the same tokens, every weight 1
            w = (np.asarray(ids) >= 0).astype(np.float32)
        return ids, w

    for i, rec in enumerate(s.shard_records()):
        start, n = rec["row_start"], rec["num_rows"]
        dense = np.asarray(s.dense[start: start + n].read().result())
        parts = [project(start + j, dense[j: j + rows]) for j in range(0, n, rows)]
        ids = np.concatenate([np.asarray(p[0]) for p in parts])
        weights = np.concatenate([np.asarray(p[1]) for p in parts])
        flags = np.asarray(s.flags[start: start + n].read().result())
        empty = (flags & store_lib.FLAG_EMPTY).astype(bool)
        ids[empty], weights[empty] = -1, 0.0
        writer.write_shard(i, s.ids[start: start + n], ids, weights,
                           np.asarray(s.lengths[start: start + n].read().result()), flags, dense)
    writer.finalize(len(s.shard_records()))


def literal_of(store: Path, model) -> list[np.ndarray]:
    """Each row's literal tokens as the job's tokenizer gives them (``doc_tokens="literal"``), the
    corpus read as the job read it (the store's recorded input and fields)."""
    s = store_lib.open(store)
    st = s.settings
    _, texts = corpus_texts(st["input"], None, id_field=st.get("id_field", "_id"),
                            text_fields=tuple(st.get("text_fields", ("title", "text"))))
    if len(texts) != len(s):
        raise SystemExit(f"{st['input']} has {len(texts)} documents, the store {len(s)}")
    settings = EmbedSettings(**{k: v for k, v in st.items() if k in EMBED_FIELDS
                                and k not in ("correction", "weighting", "top_k")} | {"doc_tokens": "literal"})
    tok = Embedder(model, settings).doc_tokenizer
    return [d.literal for i in range(0, len(texts), 1024) for d in tok(texts[i: i + 1024])]


def fit_from_dense(store: Path, hash_: str, docs: int = FitSettings().fit_docs) -> CorrectionFit:
    """The fit the job would make with ``--fit-docs docs`` (spread), from a store's dense vectors
    (the pooled vectors, for this preset)."""
    s = store_lib.open(store)
    pos = sample_positions(len(s), docs)
    dense = np.asarray(s.dense.read().result())[pos]
    flags = np.asarray(s.flags.read().result())[pos]
    m = Moments(dense.shape[1])
    m.add(dense[~(flags & store_lib.FLAG_EMPTY).astype(bool)])
    return CorrectionFit.from_moments(m, f"{len(pos)} documents spread over the {len(s)} of "
                                         f"{Path(s.settings['input']).name}", hash_)


def agreement(a: Path, b: Path) -> float:
    """Share of rows whose token ids are identical in two stores of the same documents."""
    x = np.asarray(store_lib.open(a).token_ids.read().result())
    y = np.asarray(store_lib.open(b).token_ids.read().result())
    return float((x == y).all(axis=1).mean())


def row(label: str, r: dict, bm25: float, dense: float) -> str:
    return (f"| {label} | {r['nDCG@10']:.3f} | {r['R@100']:.3f} | {r['nDCG@10'] / dense:.2f} | "
            f"{r['nDCG@10'] / bm25:.2f} | {r['queries_per_s']:.0f} |")


HEADER = ("| | nDCG@10 | Recall@100 | / dense | / BM25 | queries/s |\n"
          "|---|---|---|---|---|---|")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/sparse-quality", help="work and output folder (default: %(default)s)")
    p.add_argument("--dataset", default=str(SCIFACT), help="BEIR folder (default: ../shared/data/scifact)")
    p.add_argument("--distractors", type=int, default=-1,
                   help="sub-corpus: judged documents plus the first N others; -1: the whole corpus")
    p.add_argument("--max-length", type=int, default=512, help="tokens per document (default: %(default)s)")
    p.add_argument("--top-ks", type=int, nargs="+", default=[16, 32, 64, 128, 256],
                   help="document top-K values swept (default: %(default)s)")
    p.add_argument("--after", choices=("job", "derived"), default="job",
                   help="the after store: a second corpus job, or derived from before's dense "
                        "vectors (see step 2; default: %(default)s)")
    p.add_argument("--fit-docs", type=int, nargs="+", default=[32, 64, 128, 256, 1024, 100000],
                   help="fit sample sizes swept, for the default correction (default: %(default)s; "
                        "more than the corpus: all of it)")
    p.add_argument("--fusions", nargs="+", default=FUSIONS, metavar="WITH:FUSION:ALPHA",
                   help="bm25-hybrid settings swept: keytok mode, fusion, BM25 weight (default: %(default)s)")
    p.add_argument("--union-ms", type=int, nargs="+", default=[0, 4, 16, 64],
                   help="union mode's M values swept (default: %(default)s)")
    args = p.parse_args(argv)
    out = (ROOT / args.out).resolve()
    dataset = Path(args.dataset).resolve()
    if not (dataset / "corpus.jsonl").exists():
        raise SystemExit(f"{dataset}/corpus.jsonl not found: this script needs a BEIR folder (../shared/data)")
    if args.distractors >= 0:
        dataset = judged_subcorpus(dataset, out / "data" / f"test+{args.distractors}", args.distractors)
    common = ["--max-length", str(args.max_length)]
    t0 = time.perf_counter()
    model = load_model(JOB_PRESET["model"])
    head = np.asarray(model.lm_head, np.float32)
    job = {**defaults(EmbedSettings), **JOB_PRESET}
    default, k0, tokens0 = job["correction"], job["top_k"], job["doc_tokens"]
    before = out / "before"
    jobs = {"before": embed(dataset, before, common + BEFORE)}
    literal = literal_of(before, model)
    if args.after == "job":
        jobs["after"] = embed(dataset, out / "after", common)
        fit = CorrectionFit.from_json(store_lib.open(out / "after").attachment(FIT_ATTACHMENT), out / "after")
    else:
        fit = fit_from_dense(before, model_hash(model))
        derive(before, out / "after", head, fit, default, k0, job["weighting"], tokens0, literal)
        jobs["after"] = {**jobs["before"], "derived": True, "fit_docs": fit.docs}
    reports = {name: evaluate(out / name, dataset, MODES, name) for name in jobs}
    w0 = job["weighting"]

    def derived(correction, weighting=w0, k=k0, fit_=fit, tag="", doc_tokens=tokens0):
        name = f"{correction}-{weighting}-k{k}{tag}"
        d = out / "derived" / (name if doc_tokens == "aligned" else f"literal-{name}")
        derive(before, d, head, fit_, correction, k, weighting, doc_tokens, literal)
        return d

    def score(d, modes=SWEEP_MODES, name=None, extra=()):
        return evaluate(d, dataset, modes, name or d.name, extra)

    aligned_k = int(BEFORE[BEFORE.index("--top-k") + 1])
    sweeps = {"correction": {f"{t} {c}": score(derived(c, doc_tokens=t, k=k0 if t == tokens0 else aligned_k))
                             for t in DOC_TOKENS for c in CORRECTIONS},
              "weighting (aligned)": {w: score(derived(default, weighting=w, doc_tokens="aligned", k=aligned_k))
                                      for w in ("relu", "log1p_relu", "logit")},
              "top_k": {f"{t} {k}": score(derived(default, k=k, doc_tokens=t))
                        for t in DOC_TOKENS for k in args.top_ks},
              "fit_docs": {}, "union_m": {}, "bm25_fusion": {}}
    # control: literal tokens without the model's weights (which tokens are kept still uses it)
    sweeps["control"] = {"literal, every weight 1": score(derived(default, weighting=BINARY), ("tokens",))}
    for n in args.fit_docs:
        sample = fit_from_dense(before, fit.model_hash, n)
        sweeps["fit_docs"][n] = score(derived(default, fit_=sample, tag=f"-fit{n}"))
    for m in args.union_ms:
        sweeps["union_m"][m] = score(out / "after", ("union",), f"after-union-m{m}", ["--union-m", str(m)])
    for with_, fusion, alpha in (f.split(":") for f in args.fusions):
        name = f"after-bm25-{with_}-{fusion}-{alpha}"
        sweeps["bm25_fusion"][name] = score(out / "after", ("bm25-hybrid",), name,
                                            ["--bm25-with", with_, "--fusion", fusion, "--bm25-alpha", str(alpha)])
    check = {"derived aligned none = before": agreement(derived("none", doc_tokens="aligned", k=aligned_k), before)}
    if args.after == "job":
        check[f"derived {tokens0} {default} = after (job)"] = agreement(derived(default), out / "after")
    report = {"dataset": str(dataset), "max_length": args.max_length, "default_correction": default,
              "jobs": jobs, "evaluations": reports, "sweeps": sweeps, "checks": check,
              "seconds": round(time.perf_counter() - t0, 1)}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "tables.md").write_text(tables(report))
    print(tables(report))
    return 0


def tables(report: dict) -> str:
    ev, sw = report["evaluations"], report["sweeps"]
    bm25 = ev["after"]["modes"]["bm25"]["nDCG@10"]
    dense = ev["after"]["modes"]["dense"]["nDCG@10"]   # the same dense vectors in every store
    job = report["jobs"]["after"]
    how = (f"after: derived from before's dense vectors, the fit made from those of the "
           f"{job['fit_docs']} documents the job samples (no second model pass)" if job.get("derived")
           else f"after: the job, its fit on {job['fit_docs']} documents taking {job['fit_seconds']:.0f} s "
                f"of its {job['wall_seconds']:.0f} s")
    lines = [f"{report['dataset']}, test split, {ev['after']['num_queries']} queries, "
             f"{ev['after']['store_rows']} documents, max length {report['max_length']}, correction "
             f"`{report['default_correction']}`; {how}", "",
             "| mode | before nDCG@10 | after nDCG@10 | after Recall@100 | after / dense | after / BM25 | queries/s |",
             "|---|---|---|---|---|---|---|"]
    for mode in MODES:
        b, a = ev["before"]["modes"][mode], ev["after"]["modes"][mode]
        ratio = f"{a['ratio_to_dense']:.2f}" if a.get("ratio_to_dense") is not None else "-"
        lines.append(f"| {mode} | {b['nDCG@10']:.3f} | {a['nDCG@10']:.3f} | {a['R@100']:.3f} | "
                     f"{ratio} | {a['nDCG@10'] / bm25:.2f} | {a['queries_per_s']:.0f} |")
    ix = ev["after"].get("index", {})
    lines += ["", f"sparse index {ix.get('sparse_bytes', 0) / 2**20:.1f} MiB "
                  f"({ix.get('nnz', 0):,} postings), dense {ix.get('dense_bytes', 0) / 2**20:.1f} MiB", ""]
    for title, key, modes in (("document tokens and correction (top-K: literal as the job, aligned as before)",
                               "correction", SWEEP_MODES),
                              ("weighting of aligned tokens", "weighting (aligned)", SWEEP_MODES),
                              ("document top-K", "top_k", SWEEP_MODES),
                              ("fit sample (documents)", "fit_docs", SWEEP_MODES),
                              ("control", "control", ("tokens",)),
                              ("union M", "union_m", ("union",)), ("BM25 fusion", "bm25_fusion", ("bm25-hybrid",))):
        lines += [f"**{title}**", "", HEADER]
        for value, r in sw[key].items():
            for mode in modes:
                lines.append(row(f"{value} · {mode}", r["modes"][mode], bm25, dense))
        lines.append("")
    lines.append("checks (share of documents with identical top-K ids): "
                 + ", ".join(f"{k}: {v:.4f}" for k, v in report["checks"].items()))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
