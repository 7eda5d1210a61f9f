"""XLA:CPU flag sets measured on keytok's own device step (issue 21: is there a faster path in the
installed jaxlib?).

    python benchmarks/xla_cpu_flags.py --output out/xla-cpu-flags.json

Each flag set runs in a fresh process (XLA reads ``XLA_FLAGS`` once, at start-up): the best of
``--reps`` float32 matmuls ``[m, k] @ [k, n]`` (the MLP's shape at this batch), and the best of
``--reps`` calls of the embedder's compiled step (SmolLM2, the job's preset with the aligned top-64
as in benchmarks/throughput.py, ``[rows, seq]`` of real SciFact tokens, or random ids without the
dataset), after one untimed call. Every set is compared with the default: the ratio of step
times, and the largest difference of the dense vectors (a set that changes the outputs beyond
float32 rounding, 1e-4 relative, is marked and not a candidate). A flag this jaxlib does not know
is reported as rejected. The sets run in turn, the default first and last, so a machine that
slows down during the run shows as the default's two timings drifting apart.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

FLAG_SETS = {
    "default": "",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn custom call": "--xla_cpu_experimental_onednn_custom_call=true",
    "no thunk runtime": "--xla_cpu_use_thunk_runtime=false",
    "fast math": "--xla_cpu_enable_fast_math=true",
    "eigen single-thread": "--xla_cpu_multi_thread_eigen=false",
    "no fusion emitters": "--xla_cpu_use_fusion_emitters=false",
}


def worker(rows: int, seq: int, reps: int, out: str) -> None:
    """One flag set (this process's XLA_FLAGS): matmul and step timings, the dense vectors."""
    sys.path.insert(0, str(ROOT))
    import jax
    import jax.numpy as jnp

    from keytok_jax.loading import load_model
    from keytok_jax.pipeline import Embedder
    from keytok_jax.settings import EmbedSettings

    model = load_model("smollm2-135m")
    cfg = model.config
    a = jnp.asarray(np.random.default_rng(0).standard_normal((rows * seq, cfg.hidden_size), np.float32))
    b = jnp.asarray(np.random.default_rng(1).standard_normal((cfg.hidden_size, cfg.intermediate_size), np.float32))
    mm = jax.jit(lambda x, y: x @ y)
    mm(a, b).block_until_ready()
    best_mm = min(_timed(lambda: mm(a, b).block_until_ready()) for _ in range(reps))
    emb = Embedder(model, EmbedSettings(pooling="last", prompt="prompteol", top_k=64))
    ids = _token_rows(emb, rows, seq)
    mask = np.ones_like(ids)
    exe = emb.executable(rows, seq)
    args = (model.params, (ids, mask, mask), emb.step.correction)
    jax.block_until_ready(exe(*args))
    best_step = min(_timed(lambda: jax.block_until_ready(exe(*args))) for _ in range(reps))
    dense = np.asarray(exe(*args)[0])
    np.savez(out, dense=dense, matmul_s=best_mm, step_s=best_step,
             matmul_flops=2.0 * rows * seq * cfg.hidden_size * cfg.intermediate_size)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _token_rows(emb, rows: int, seq: int) -> np.ndarray:
    corpus = ROOT.parent / "shared" / "data" / "scifact" / "corpus.jsonl"
    if corpus.exists():
        texts = [json.loads(line)["text"] for _, line in zip(range(rows * 4), corpus.open())]
        toks = [d.ids for d in emb.tokenize(texts) if len(d.ids) >= seq][:rows]
        if len(toks) == rows:
            return np.stack([t[:seq] for t in toks]).astype(np.int32)
    return np.random.default_rng(0).integers(0, emb.model.config.vocab_size, (rows, seq), dtype=np.int32)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=16, help="batch rows (default: %(default)s)")
    p.add_argument("--seq", type=int, default=256, help="tokens per row (default: %(default)s)")
    p.add_argument("--reps", type=int, default=5, help="timed calls, best kept (default: %(default)s)")
    p.add_argument("--sets", nargs="+", default=list(FLAG_SETS), choices=list(FLAG_SETS),
                   help="flag sets measured (default: all)")
    p.add_argument("--output", default=None, help="JSON report")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.rows, args.seq, args.reps, args.worker)
        return 0
    names = ["default"] + [n for n in args.sets if n != "default"] + ["default"]
    results, tmp = [], Path(tempfile.mkdtemp(prefix="keytok-xla-flags-"))
    for i, name in enumerate(names):
        out = tmp / f"{i}.npz"
        env = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " " + FLAG_SETS[name]).strip(),
               "JAX_PLATFORMS": "cpu"}
        proc = subprocess.run([sys.executable, __file__, "--worker", str(out), "--rows", str(args.rows),
                               "--seq", str(args.seq), "--reps", str(args.reps)],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            results.append({"set": name, "flags": FLAG_SETS[name], "rejected": last[:200]})
            print(f"{name:22s} rejected: {last[:120]}", flush=True)
            continue
        r = np.load(out)
        results.append({"set": name, "flags": FLAG_SETS[name], "step_s": float(r["step_s"]),
                        "matmul_gflops": float(r["matmul_flops"] / r["matmul_s"] / 1e9), "dense": r["dense"]})
    base = [r for r in results if r["set"] == "default" and "step_s" in r]
    ref_dense, ref_step = base[0]["dense"], min(r["step_s"] for r in base)
    for r in results:
        if "step_s" in r:
            d = r.pop("dense")
            r["dense_max_rel_diff"] = float(np.abs(d - ref_dense).max() / np.abs(ref_dense).max())
            r["speed_vs_default"] = round(ref_step / r["step_s"], 3)
            r["same_outputs"] = r["dense_max_rel_diff"] <= 1e-4
            print(f"{r['set']:22s} step {r['step_s'] * 1e3:8.1f} ms  x{r['speed_vs_default']:.2f}  "
                  f"matmul {r['matmul_gflops']:6.1f} GFLOP/s  dense rel diff {r['dense_max_rel_diff']:.1e}"
                  + ("" if r["same_outputs"] else "  (outputs differ)"), flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps({"rows": args.rows, "seq": args.seq, "reps": args.reps,
                                                 "cores": os.cpu_count(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
