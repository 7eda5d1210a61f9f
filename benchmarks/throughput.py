"""Throughput of keytok_jax's embedding pipeline against a Hugging Face transformers (PyTorch) baseline.

Both sides embed the same documents (a BEIR ``corpus.jsonl``: title + " " + text, the first
``--limit``) from the *same token ids*: the texts are tokenized once with keytok_jax's
DocTokenizer and the preset's template (default configs/smollm2.yaml: PromptEOL prompt,
last-token pooling, top-64 LM-head tokens, relu weights, max length 512), and both do the same
work per document: a forward pass, the last token's final hidden state as the dense vector, and
the top-k of ``pooled @ lm_head.T`` as the sparse vector.

keytok
    ``Embedder.embed_tokenized`` (the real path: length buckets, fixed (rows, seq) shapes,
    in-flight batches, chunked top-k). Warm-up (``--keytok-warmup``): ``compile`` (default)
    compiles every shape the run's batch plan needs before the clock starts (their time is
    ``compile_seconds``; the timed pass then compiles nothing, but the first run of each program
    still pays small one-time costs, visible only on tiny models); ``pass`` runs the whole input
    once untimed first (compiling on the way), then times a second pass.
baseline
    ``AutoModelForCausalLM`` with the same weights (a GGUF is dequantized by transformers, a
    folder read as is), ``torch.inference_mode()``, ``torch.set_num_threads(os.cpu_count())``,
    documents sorted by length and padded per batch on the left, explicit ``position_ids``
    counted from the first real token (as keytok does; RoPE makes this equivalent to any offset),
    the base model's last hidden state at position -1, ``torch.topk`` over
    ``pooled @ lm_head.weight.T``. The batch size is the best (real tokens/s) of a sweep
    (``--batch-sizes``) on ``--sweep-docs`` documents: a contiguous block of the length-sorted
    input around its median, so the sweep's batches pad like the full run's. Warm-up, untimed and
    reported: the process's first forward (one short document, ``first_call_seconds``) and, per
    batch size, one batch of the shortest documents (``warmup_seconds``).

Reported per side: docs/s, real tokens/s (padding excluded), padding fraction, warm-up / compile
seconds, achieved FLOP/s from the analytic count of keytok_jax.flops (``useful``: matmuls, causal
attention pairs, the LM head once per document, over real tokens; ``padded``: what the
implementation computes on its padded batches — keytok's blocked attention on bucket lengths,
the chunked LM head on every row; the baseline's full ``L x L`` attention on each batch's
longest length), MFU = useful FLOP/s / ``peak_flops``, where ``peak_flops`` is the best XLA float32
matmul rate measured in this run (jitted, best of ``--peak-reps``; torch's best is reported for
reference, and the baseline's MFU against it too), peak memory, and ``speedup`` = keytok /
baseline real tokens/s. The outputs are compared: cosine of the dense vectors, overlap of the
top-k ids.

Memory: by default the baseline runs in a child process (this script with ``--baseline-worker``;
token ids in, vectors out through an .npz), so each side's peak RSS (``rss_peak_mb``: VmHWM
of a process that ran only that side, model loading included; both processes import
transformers, which imports torch) is its own. ``--in-process`` runs both in this process: RSS is then sampled
during each phase (``rss_phase_peak_mb``, ``rss_phase_increase_mb`` over the phase's start), and
the second phase may reuse memory the first one freed. Either way, each phase samples RSS every
20 ms.

Long runs (``--parts N``): the documents are cut into N consecutive parts and each part is a
whole side-by-side measurement (keytok, the XLA peak, the baseline, the torch peak); the JSON is
written after every part and a rerun with the same arguments resumes after the last finished one.
The totals add each side's tokens and seconds over the parts; MFU divides the useful FLOPs by the
sum over parts of seconds x that part's own measured peak, so a machine that slows down between
parts is measured against what it could do then. The baseline's batch size is swept in the first
part and kept for the others. A table of the parts comes before the totals.

    python benchmarks/throughput.py --model smollm2-135m --dataset ../shared/data/scifact \\
        --limit 200 --output out/throughput.json
    python benchmarks/throughput.py --dataset ../shared/data/scifact --parts 10 \\
        --output out/throughput-scifact.json          # all 5,183 docs; rerun to resume
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_CONFIG = ROOT / "configs" / "smollm2.yaml"
# Representative shapes: SmolLM2's q/o and MLP projections over a 4096-token batch, and a large
# square matmul (the best case of the BLAS/Eigen kernels).
PEAK_SHAPES = ((4096, 576, 1536), (4096, 1536, 576), (4096, 576, 576), (4096, 4096, 4096))


# ----------------------------------------------------------------------------- helpers

class RssSampler:
    """Resident memory of this process sampled every ``interval`` s while the block runs."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self.proc, self.interval = psutil.Process(), interval
        self.start = self.peak = self.end = 0

    def __enter__(self):
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.end = self.proc.memory_info().rss
        self.peak = max(self.peak, self.end)

    def as_dict(self) -> dict:
        mb = 1 / 2**20
        return {"rss_phase_start_mb": round(self.start * mb, 1), "rss_phase_peak_mb": round(self.peak * mb, 1),
                "rss_phase_increase_mb": round((self.peak - self.start) * mb, 1)}


def max_rss_mb() -> float:
    """Peak RSS of this process. VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork + exec,
    so a child process would report its parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def read_texts(dataset: str, limit: int | None) -> list[str]:
    """The first ``limit`` documents of a BEIR folder / corpus file, title and text joined by a
    space (as ``python -m keytok_jax.embed`` reads them)."""
    from keytok_jax.pipeline import read_corpus

    texts = []
    for doc in read_corpus(dataset):
        if limit is not None and len(texts) >= limit:
            break
        texts.append(doc.text)
    return texts


def load_settings(config: str | None, max_length: int | None):
    """(EmbedSettings, model) of the preset, resolved as the embed job resolves ``--config``
    (a key the job does not know is refused), with ``--max-length`` over it. Without the corpus
    correction: the baseline projects the raw pooled vector (the correction is one rank-one update
    of ``[batch, dim]`` per batch, and its fit pass a fraction of a job measured by
    benchmarks/sparse_quality.py), and both take the top-64 of the whole vocabulary's projection
    (``doc_tokens="aligned"``; the preset's literal tokens need only the rows of the head for each
    text's own tokens, less work than the full projection measured here)."""
    from keytok_jax import settings

    classes = [cls for _, group in settings.JOB_GROUPS for cls in group]
    flags = {"correction": "none", "doc_tokens": "aligned", "top_k": 64}
    if max_length is not None:
        flags["max_length"] = max_length
    opts = settings.resolve(classes, flags, config=config or None)
    return settings.build(settings.EmbedSettings, opts), opts["model"]


def matmul_peak(framework: str, shapes, reps: int) -> dict:
    """Best float32 matmul FLOP/s per shape (``m x k @ k x n``: 2 m k n FLOPs), best of ``reps``
    after one untimed call."""
    out = {}
    for m, k, n in shapes:
        if framework == "xla":
            import jax
            import jax.numpy as jnp

            a = jnp.asarray(np.random.default_rng(0).standard_normal((m, k), np.float32))
            b = jnp.asarray(np.random.default_rng(1).standard_normal((k, n), np.float32))
            f = jax.jit(lambda x, y: x @ y)
            def run(f=f, a=a, b=b):
                return f(a, b).block_until_ready()
        else:
            import torch

            a = torch.randn(m, k, dtype=torch.float32)
            b = torch.randn(k, n, dtype=torch.float32)
            def run(a=a, b=b):
                return torch.mm(a, b)
        run()
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t0)
        out[f"{m}x{k}@{k}x{n}"] = 2.0 * m * k * n / best
    return {"per_shape": out, "best": max(out.values())}


# ----------------------------------------------------------------------------- FLOP accounting

def useful_flops(cfg, lengths) -> dict:
    from keytok_jax import flops as F

    total = F.corpus_flops(cfg, lengths, "sparse", count="useful")
    return {"total": total.model, "matmul": total.matmul, "attention": total.attention,
            "lm_head": total.lm_head, "per_real_token": total.model / max(int(np.sum(lengths)), 1),
            "per_doc_mean": total.model / max(len(lengths), 1)}


def keytok_padded_flops(cfg, batches, vocab_chunk: int, causal: bool) -> float:
    from keytok_jax import flops as F

    return sum(F.step_flops(cfg, rows, seq, sparse=True, count="implemented", causal=causal,
                            vocab_chunk=vocab_chunk).model for rows, seq in batches)


def baseline_padded_flops(cfg, batches) -> float:
    from keytok_jax import flops as F

    return sum(rows * F.doc_flops(cfg, seq, "sparse", count="full").model for rows, seq in batches)


# ----------------------------------------------------------------------------- keytok side

def keytok_batches(embedder, lengths) -> list[tuple[int, int]]:
    """(rows, seq) of every batch ``embed_tokenized`` will run for these lengths (its own plan)."""
    return [(embedder.rows_for(seq, len(rows)), seq) for rows, seq in
            ((b.rows, b.seq) for b in embedder.plan(np.asarray(lengths)))]


def run_keytok(model, settings, docs, args) -> tuple[dict, object]:
    from keytok_jax import Embedder
    from keytok_jax.pipeline import RunStats

    lengths = np.array([len(d.ids) for d in docs], np.int32)
    emb = Embedder(model, settings, batch_tokens=args.batch_tokens, vocab_chunk=args.vocab_chunk,
                   bucket_step=args.bucket_step)
    batches = keytok_batches(emb, lengths)
    t0 = time.perf_counter()
    if args.keytok_warmup == "pass":
        emb.embed_tokenized(docs)
        compile_stats = (emb.stats.compiles, emb.stats.compile_seconds)
    else:
        pre = emb.precompile(lengths)
        compile_stats = (pre["precompiled"], pre["precompile_seconds"])
    warm = time.perf_counter() - t0
    emb.stats = RunStats()
    t0 = time.perf_counter()
    out = emb.embed_tokenized(docs)
    seconds = time.perf_counter() - t0
    st = emb.stats
    if st.compiles:
        log(f"warning: the timed keytok pass compiled {st.compiles} programs ({st.compile_seconds:.1f} s)")
    if st.padded_tokens != sum(r * s for r, s in batches):
        log("warning: keytok's batch plan differs from the one this benchmark computed")
    padded = keytok_padded_flops(model.config, batches, args.vocab_chunk, settings.attention == "causal")
    res = {
        "seconds": seconds, "docs": len(docs), "real_tokens": st.real_tokens,
        "padded_tokens": st.padded_tokens, "padding_fraction": st.padding_fraction,
        "batches": st.batches, "shapes": sorted([list(s) for s in set(batches)]),
        "warmup": args.keytok_warmup, "warmup_seconds": warm,
        "compiles": compile_stats[0], "compile_seconds": compile_stats[1],
        "timed_pass_compiles": st.compiles, "timed_pass_compile_seconds": st.compile_seconds,
        "batch_tokens": emb.batch_tokens, "bucket_step": emb.bucket_step, "vocab_chunk": args.vocab_chunk,
        "docs_per_s": len(docs) / seconds, "tokens_per_s": st.real_tokens / seconds,
        "padded_flops": padded, "padded_flops_per_s": padded / seconds,
    }
    return res, out


# ----------------------------------------------------------------------------- baseline side

def hf_model(name: str, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM

    from keytok_jax.loading import _gguf_file, resolve

    path = resolve(name)
    gguf = _gguf_file(path)
    kw = {"dtype": {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]}
    if gguf is not None:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, **kw)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kw)
    return model.eval()


class TorchEmbedder:
    """The baseline's per-batch work: forward, last-token pooling, LM-head top-k."""

    def __init__(self, model, top_k: int, weighting: str):
        import torch

        self.torch = torch
        self.base = model.base_model
        self.head = model.get_output_embeddings().weight.detach().float()
        self.k, self.weighting = top_k, weighting

    def __call__(self, seqs: list[np.ndarray]):
        torch = self.torch
        L = max(len(s) for s in seqs)
        ids = np.zeros((len(seqs), L), np.int64)
        mask = np.zeros((len(seqs), L), np.int64)
        for i, s in enumerate(seqs):
            ids[i, L - len(s):] = s
            mask[i, L - len(s):] = 1
        ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        with torch.inference_mode():
            hidden = self.base(input_ids=ids, attention_mask=mask, position_ids=positions,
                               use_cache=False).last_hidden_state
            pooled = hidden[:, -1].float()
            vals, tok = torch.topk(pooled @ self.head.T, self.k, dim=-1)
            if self.weighting == "relu":
                vals = vals.clamp(min=0)
            elif self.weighting == "log1p_relu":
                vals = torch.log1p(vals.clamp(min=0))
        return pooled.numpy(), tok.numpy().astype(np.int32), vals.numpy()


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    order = np.argsort(lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def run_batches(embed, seqs, batches, outputs=None) -> float:
    t0 = time.perf_counter()
    for b in batches:
        pooled, tok, w = embed([seqs[i] for i in b])
        if outputs is not None:
            outputs[0][b], outputs[1][b], outputs[2][b] = pooled, tok, w
    return time.perf_counter() - t0


def run_baseline(seqs: list[np.ndarray], opts: dict) -> tuple[dict, tuple]:
    import torch

    torch.set_num_threads(os.cpu_count())
    res = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    t0 = time.perf_counter()
    model = hf_model(opts["model"], opts["dtype"])
    res["load_seconds"] = time.perf_counter() - t0
    res["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
    embed = TorchEmbedder(model, opts["top_k"], opts["weighting"])
    lengths = np.array([len(s) for s in seqs])
    real = int(lengths.sum())

    def padded_of(batches):
        return [(len(b), int(lengths[b].max())) for b in batches]

    order = np.argsort(lengths, kind="stable")
    t0 = time.perf_counter()
    embed([seqs[order[0]]])                              # the process's first (cold) forward
    first_call = time.perf_counter() - t0

    def warm_up(bs):
        # an untimed batch of the shortest documents: first use of this batch size, little compute
        t0 = time.perf_counter()
        embed([seqs[i] for i in order[:bs]])
        return time.perf_counter() - t0

    # Sweep on a contiguous block of the length-sorted input around the median length, so that
    # its batches pad like the full run's (the first documents of a small subset would not).
    m = min(opts["sweep_docs"], len(seqs))
    lo = max(0, min(len(seqs) - m, len(seqs) // 2 - m // 2))
    sub = order[lo:lo + m]
    sub_real = int(lengths[sub].sum())
    sweep = []
    for bs in opts["batch_sizes"] if len(opts["batch_sizes"]) > 1 else []:   # one size: nothing to sweep
        batches = [sub[i:i + bs] for i in range(0, m, bs)]
        warm = warm_up(bs)
        secs = run_batches(embed, seqs, batches)
        sub_padded = sum(r * s for r, s in padded_of(batches))
        sweep.append({"batch_size": bs, "seconds": secs, "warmup_seconds": warm,
                      "docs_per_s": m / secs, "tokens_per_s": sub_real / secs,
                      "padding_fraction": 1 - sub_real / sub_padded})
        log(f"  baseline sweep: batch {bs}: {sub_real / secs:,.0f} tokens/s")
    best = max(sweep, key=lambda r: r["tokens_per_s"])["batch_size"] if sweep else opts["batch_sizes"][0]
    batches = sorted_batches(lengths, best)
    warm = warm_up(best)
    n, k = len(seqs), opts["top_k"]
    outputs = (np.zeros((n, embed.head.shape[1]), np.float32), np.zeros((n, k), np.int32),
               np.zeros((n, k), np.float32))
    secs = run_batches(embed, seqs, batches, outputs)
    shapes = padded_of(batches)
    padded = sum(r * s for r, s in shapes)
    res.update({
        "seconds": secs, "docs": n, "real_tokens": real, "padded_tokens": padded,
        "padding_fraction": 1 - real / padded, "batches": len(batches), "batch_size": best,
        "sweep_docs": m, "sweep_lengths": [int(lengths[sub].min()), int(lengths[sub].max())],
        "sweep": sweep, "first_call_seconds": first_call,
        "warmup_seconds": warm, "docs_per_s": n / secs, "tokens_per_s": real / secs,
        "batch_shapes": shapes,
    })
    return res, outputs


def baseline_worker(inp: str, outp: str) -> int:
    """Child-process entry: token ids and options from ``inp`` (.npz), results to ``outp``."""
    data = np.load(inp)
    opts = json.loads(str(data["opts"]))
    offsets = data["offsets"]
    seqs = [data["ids"][offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
    with RssSampler() as rss:
        res, (pooled, ids, weights) = run_baseline(seqs, opts)
    res.update(rss.as_dict(), rss_peak_mb=max_rss_mb())
    if opts["torch_peak"]:   # after the run: its arrays stay out of the peak RSS
        res["torch_peak"] = matmul_peak("torch", opts["peak_shapes"], opts["peak_reps"])
    np.savez(outp, pooled=pooled, ids=ids, weights=weights, result=json.dumps(res))
    return 0


def baseline_in_child(seqs, opts) -> tuple[dict, tuple]:
    with tempfile.TemporaryDirectory(prefix="keytok-bench-") as tmp:
        offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
        np.savez(Path(tmp) / "in.npz", ids=np.concatenate(seqs).astype(np.int32), offsets=offsets,
                 opts=json.dumps(opts))
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--baseline-worker",
                        str(Path(tmp) / "in.npz"), str(Path(tmp) / "out.npz")], check=True)
        out = np.load(Path(tmp) / "out.npz")
        return json.loads(str(out["result"])), (out["pooled"], out["ids"], out["weights"])


# ----------------------------------------------------------------------------- comparison, report

def agreement(a_dense, a_ids, b_dense, b_ids, valid) -> dict:
    a, b = a_dense[valid].astype(np.float64), b_dense[valid].astype(np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    k = a_ids.shape[1]
    overlap = np.array([len(set(x) & set(y)) / k for x, y in zip(a_ids[valid], b_ids[valid])])
    return {"docs": int(valid.sum()), "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
            "topk_overlap_mean": float(overlap.mean()), "topk_overlap_min": float(overlap.min()),
            "top1_agreement": float((a_ids[valid, 0] == b_ids[valid, 0]).mean()),
            "same_order_fraction": float((a_ids[valid] == b_ids[valid]).all(1).mean()),
            "cosine_ok": bool(cos.min() > 0.999)}


def add_rates(side: dict, useful: float, peak: float, torch_peak: float | None) -> None:
    side["flops_per_s"] = useful / side["seconds"]
    side["padded_flops_per_s"] = side["padded_flops"] / side["seconds"]
    side["mfu"] = side["flops_per_s"] / peak
    side["mfu_padded"] = side["padded_flops_per_s"] / peak
    if torch_peak:
        side["mfu_vs_torch_peak"] = side["flops_per_s"] / torch_peak


def markdown(r: dict) -> str:
    def row(name, s):
        mem = s.get("rss_peak_mb") or s.get("rss_phase_peak_mb")
        mem = f"{mem:,.0f} MB" if mem else "-"
        inc = s.get("rss_phase_increase_mb")
        mem += f" (+{inc:,.0f})" if inc is not None else ""
        warm = (f"{s['compile_seconds']:.1f} compile" if name == "keytok"
                else f"{s['warmup_seconds']:.2f} warm-up (bs {s['batch_size']})")
        return (f"| {name} | {s['docs_per_s']:.2f} | {s['tokens_per_s']:,.0f} | {s['padding_fraction']:.1%} | "
                f"{warm} | {s['flops_per_s'] / 1e9:.1f} ({s['padded_flops_per_s'] / 1e9:.1f}) | "
                f"{s['mfu']:.1%} | {mem} |")

    c, ag, b = r["config"], r["agreement"], r["baseline"]
    sweep = ", ".join(f"{x['batch_size']}: {x['tokens_per_s']:,.0f}" for x in b["sweep"])
    done = r["keytok"]["docs"]
    docs = f"{c['docs']} docs" if done == c["docs"] else f"{done} of {c['docs']} docs (an unfinished --parts run)"
    lines = [
        f"{docs} of {c['dataset']}, max length {c['max_length']}, {c['dtype']}, "
        f"{r['machine']['cpu_count']} CPU cores; peak matmul: XLA {r['peak_flops'] / 1e9:.0f} GFLOP/s"
        + (f", torch {r['peak']['torch']['best'] / 1e9:.0f} GFLOP/s" if r["peak"].get("torch") else ""),
        "",
        "| pipeline | docs/s | real tokens/s | padding | warm-up s | GFLOP/s useful (padded) | MFU | peak RSS (+ in phase) |",
        "|---|---|---|---|---|---|---|---|",
        row("keytok", r["keytok"]), row("baseline", r["baseline"]),
        "",
        (f"speedup keytok/baseline: **{r['speedup']:.2f}x**; dense cosine min {ag['cosine_min']:.6f} "
         f"(mean {ag['cosine_mean']:.6f}); top-{c['top_k']} overlap mean {ag['topk_overlap_mean']:.3f} "
         f"(min {ag['topk_overlap_min']:.3f}), top-1 agreement {ag['top1_agreement']:.1%}"),
        (f"baseline sweep ({b['sweep_docs']} docs of {b['sweep_lengths'][0]}-{b['sweep_lengths'][1]} "
         f"tokens), real tokens/s by batch size: {sweep}" if b["sweep"] else
         f"baseline batch size {b['batch_size']} (given, no sweep)")
        + "; MFU = useful FLOP/s / XLA matmul peak",
    ]
    return "\n".join(lines)


SUM_KEYS = ("seconds", "docs", "real_tokens", "padded_tokens", "batches", "compiles", "compile_seconds",
            "warmup_seconds", "timed_pass_compiles", "timed_pass_compile_seconds", "padded_flops",
            "useful_flops", "peak_seconds", "torch_peak_seconds")


def combine_sides(sides: list[dict]) -> dict:
    """One side over several parts: counts and seconds add up, rates are recomputed from the sums,
    and MFU divides the useful FLOPs by what each part's own measured peak allowed in its seconds
    (the machine's speed may differ between parts)."""
    out = dict(sides[0])
    for key in SUM_KEYS:
        if key in out:
            out[key] = sum(s[key] for s in sides)
    for key in ("rss_peak_mb", "rss_phase_peak_mb", "rss_phase_increase_mb"):
        if key in out:
            out[key] = max(s[key] for s in sides)
    if "shapes" in out:
        out["shapes"] = sorted({tuple(x) for s in sides for x in s["shapes"]})
    if "batch_shapes" in out:
        out["batch_shapes"] = [x for s in sides for x in s["batch_shapes"]]
    secs = out["seconds"]
    out.update(docs_per_s=out["docs"] / secs, tokens_per_s=out["real_tokens"] / secs,
               padding_fraction=1 - out["real_tokens"] / out["padded_tokens"],
               flops_per_s=out["useful_flops"] / secs, padded_flops_per_s=out["padded_flops"] / secs,
               mfu=out["useful_flops"] / out["peak_seconds"],
               mfu_padded=out["padded_flops"] / out["peak_seconds"])
    if out.get("torch_peak_seconds"):
        out["mfu_vs_torch_peak"] = out["useful_flops"] / out["torch_peak_seconds"]
    return out


def combine_agreement(parts: list[dict]) -> dict:
    ags = [p["agreement"] for p in parts]
    n = sum(a["docs"] for a in ags)

    def mean(key):
        return sum(a[key] * a["docs"] for a in ags) / max(n, 1)

    return {"docs": n, "cosine_min": min(a["cosine_min"] for a in ags), "cosine_mean": mean("cosine_mean"),
            "topk_overlap_mean": mean("topk_overlap_mean"),
            "topk_overlap_min": min(a["topk_overlap_min"] for a in ags),
            "top1_agreement": mean("top1_agreement"), "same_order_fraction": mean("same_order_fraction"),
            "cosine_ok": all(a["cosine_ok"] for a in ags)}


def combine_parts(parts: list[dict]) -> dict:
    """The whole run from its parts (one part: that part's own figures)."""
    keytok = combine_sides([p["keytok"] for p in parts])
    baseline = combine_sides([p["baseline"] for p in parts])
    useful = {k: sum(p["flops"][k] for p in parts) for k in ("total", "matmul", "attention", "lm_head")}
    useful.update(per_real_token=useful["total"] / keytok["real_tokens"], per_doc_mean=useful["total"] / keytok["docs"])
    # The peak the run's MFU stands against: each part's peak weighted by the seconds timed in it.
    weights = [p["keytok"]["seconds"] + p["baseline"]["seconds"] for p in parts]
    peak = sum(w * p["peak_flops"] for w, p in zip(weights, parts)) / sum(weights)
    torch_peaks = [p["peak"]["torch"] for p in parts if p["peak"].get("torch")]
    return {"keytok": keytok, "baseline": baseline, "speedup": keytok["tokens_per_s"] / baseline["tokens_per_s"],
            "peak_flops": peak,
            "peak": {"xla": {"best": max(p["peak"]["xla"]["best"] for p in parts),
                             "per_part": [p["peak"]["xla"]["best"] for p in parts]},
                     "torch": ({"best": max(t["best"] for t in torch_peaks),
                                "per_part": [t["best"] for t in torch_peaks]} if torch_peaks else None)},
            "flops": useful, "agreement": combine_agreement(parts)}


def measure_part(model, settings, docs, model_name: str, args, batch_sizes: list[int]) -> dict:
    """keytok, then the XLA matmul peak, then the baseline (with its torch peak) on ``docs``."""
    from keytok_jax.store import FLAG_EMPTY

    load_start = os.getloadavg()
    with RssSampler() as rss_k:
        keytok, k_out = run_keytok(model, settings, docs, args)
    keytok.update(rss_k.as_dict(), load_seconds=model.load_info["seconds"])
    if not args.in_process:
        keytok["rss_peak_mb"] = max_rss_mb()
    log(f"  keytok: {keytok['tokens_per_s']:,.0f} tokens/s")
    cfg = model.config
    seqs = [np.asarray(d.ids, np.int32) for d in docs]
    lengths = np.array([len(s) for s in seqs])
    empty = np.array([bool(d.flags & FLAG_EMPTY) for d in docs])   # keytok gives them no tokens
    gc.collect()
    # After the keytok phase so that its arrays do not count in keytok's peak RSS.
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.peak_shapes.split(",")]
    xla_peak = matmul_peak("xla", shapes, args.peak_reps)
    log(f"  XLA matmul peak: {xla_peak['best'] / 1e9:.1f} GFLOP/s")

    opts = {"model": model_name, "dtype": args.dtype, "top_k": settings.top_k, "weighting": settings.weighting,
            "batch_sizes": batch_sizes, "sweep_docs": args.sweep_docs,
            "torch_peak": not args.no_torch_peak, "peak_shapes": shapes, "peak_reps": args.peak_reps}
    if args.in_process:
        with RssSampler() as rss_b:
            baseline, b_out = run_baseline(seqs, opts)
        baseline.update(rss_b.as_dict())
        torch_peak = matmul_peak("torch", shapes, args.peak_reps) if opts["torch_peak"] else None
    else:
        baseline, b_out = baseline_in_child(seqs, opts)
        torch_peak = baseline.pop("torch_peak", None)
    log(f"  baseline: {baseline['tokens_per_s']:,.0f} tokens/s (batch {baseline['batch_size']})")

    useful = useful_flops(cfg, lengths)
    baseline["padded_flops"] = baseline_padded_flops(cfg, baseline["batch_shapes"])
    peak = xla_peak["best"]
    for side in (keytok, baseline):
        add_rates(side, useful["total"], peak, torch_peak["best"] if torch_peak else None)
        side["useful_flops"] = useful["total"]
        side["peak_seconds"] = side["seconds"] * peak
        if torch_peak:
            side["torch_peak_seconds"] = side["seconds"] * torch_peak["best"]
    return {"keytok": keytok, "baseline": baseline, "speedup": keytok["tokens_per_s"] / baseline["tokens_per_s"],
            "peak_flops": peak, "peak": {"xla": xla_peak, "torch": torch_peak}, "flops": useful,
            "agreement": agreement(k_out.dense, k_out.token_ids, b_out[0], b_out[1], ~empty),
            "loadavg": [load_start, os.getloadavg()]}


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    os.replace(tmp, path)


def part_rows(parts: list[dict]) -> str:
    lines = ["| part | docs | keytok tokens/s | baseline tokens/s | speedup | XLA peak GFLOP/s | keytok MFU | baseline MFU |",
             "|---|---|---|---|---|---|---|---|"]
    for i, p in enumerate(parts):
        k, b = p["keytok"], p["baseline"]
        lines.append(f"| {i + 1} | {k['docs']} | {k['tokens_per_s']:,.0f} | {b['tokens_per_s']:,.0f} | "
                     f"{p['speedup']:.2f}x | {p['peak_flops'] / 1e9:.0f} | {k['mfu']:.1%} | {b['mfu']:.1%} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="alias, HF folder or .gguf (default: the preset's model)")
    p.add_argument("--dataset", help="BEIR folder (corpus.jsonl) or corpus file")
    p.add_argument("--limit", type=int, help="the first N documents (default: all)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="preset YAML (default: configs/smollm2.yaml)")
    p.add_argument("--max-length", type=int, help="override the preset's max length")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--batch-sizes", default="4,8,16,32",
                   help="baseline sweep (one size: no sweep); with --parts, the first part's best is kept")
    p.add_argument("--sweep-docs", type=int, default=32, help="documents of the baseline sweep")
    p.add_argument("--batch-tokens", type=int, help="keytok token budget per batch (default: the device's, "
                   "as the embed job's)")
    p.add_argument("--bucket-step", type=int, help="keytok pads texts to multiples of this, up to 512 "
                   "(default: the device's, as the embed job's)")
    p.add_argument("--vocab-chunk", type=int, default=4096, help="keytok top-k vocabulary chunk")
    p.add_argument("--keytok-warmup", choices=["compile", "pass"], default="compile")
    p.add_argument("--in-process", action="store_true", help="run the baseline in this process too")
    p.add_argument("--parts", type=int, default=1,
                   help="measure the documents in N consecutive parts, each side by side (keytok, peak, "
                        "baseline), saved to --output after each part; a rerun with the same arguments "
                        "skips the parts already there. For runs longer than one sitting, and so that a "
                        "change of machine speed hits both sides of a part alike")
    p.add_argument("--peak-reps", type=int, default=3)
    p.add_argument("--peak-shapes", default=",".join("x".join(map(str, s)) for s in PEAK_SHAPES),
                   help="matmul shapes MxKxN for the peak, comma-separated")
    p.add_argument("--no-torch-peak", action="store_true", help="skip torch's matmul peak")
    p.add_argument("--output", help="JSON results (required with --parts > 1: it holds the finished parts)")
    p.add_argument("--baseline-worker", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.baseline_worker:
        return baseline_worker(*args.baseline_worker)
    if not args.dataset:
        p.error("--dataset is required")
    if args.parts < 1:
        p.error("--parts must be at least 1")
    if args.parts > 1 and not args.output:
        p.error("--parts > 1 needs --output (the finished parts are kept there)")

    import jax

    import keytok_jax

    settings, preset_model = load_settings(args.config, args.max_length)
    model_name = args.model or preset_model or keytok_jax.DEFAULT_MODEL
    texts = read_texts(args.dataset, args.limit)
    if not texts:
        raise SystemExit(f"{args.dataset}: no documents")
    if len(texts) < args.parts:
        p.error(f"--parts {args.parts} is more than the {len(texts)} documents")
    bounds = [(int(a[0]), int(a[-1]) + 1) for a in np.array_split(np.arange(len(texts)), args.parts)]
    config = {"model": model_name, "dataset": str(args.dataset), "limit": args.limit, "docs": len(texts),
              "settings": settings.as_dict(), "max_length": settings.max_length, "dtype": args.dtype,
              "top_k": settings.top_k, "baseline_process": "in-process" if args.in_process else "child",
              "keytok_warmup": args.keytok_warmup, "batch_tokens": args.batch_tokens,
              "bucket_step": args.bucket_step,
              "vocab_chunk": args.vocab_chunk, "batch_sizes": args.batch_sizes, "sweep_docs": args.sweep_docs,
              "peak_shapes": args.peak_shapes, "peak_reps": args.peak_reps, "parts": args.parts,
              "part_bounds": bounds}
    out_path = Path(args.output) if args.output else None
    parts: list[dict] = []
    if out_path is not None and out_path.exists() and args.parts > 1:
        old = json.loads(out_path.read_text())
        if old.get("config") != json.loads(json.dumps(config)):
            raise SystemExit(f"{out_path} holds a run with other settings (its 'config' differs); "
                             "give another --output or remove it")
        parts = old.get("parts", [])
        if parts:
            log(f"{out_path}: {len(parts)} of {args.parts} parts done, resuming")

    import torch
    import transformers

    machine = {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
               "jax": jax.__version__, "torch": torch.__version__,
               "transformers": transformers.__version__, "python": platform.python_version()}

    def result() -> dict:
        return {"config": config, "machine": machine, "complete": len(parts) == args.parts,
                **combine_parts(parts), "parts": parts}

    if len(parts) < args.parts:
        log(f"keytok: {model_name}, {len(texts)} docs in {args.parts} part(s) ...")
        model = keytok_jax.load_model(model_name, dtype=args.dtype)
        from keytok_jax.pipeline import DocTokenizer

        tokenize = DocTokenizer(model.tokenizer, settings.template(), settings.max_length)
        sizes = [int(b) for b in args.batch_sizes.split(",")]
        for i in range(len(parts), args.parts):
            a, b = bounds[i]
            if parts:   # the first part's sweep chose the baseline's batch size
                sizes = [parts[0]["baseline"]["batch_size"]]
            log(f"part {i + 1}/{args.parts}: documents {a}-{b - 1}")
            parts.append(measure_part(model, settings, tokenize(texts[a:b]), model_name, args, sizes))
            if out_path is not None:
                write_json(out_path, result())
    r = result()
    if args.parts > 1:
        print(part_rows(parts) + "\n")
    print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
