"""Compile time of the step's batch shapes, and what JAX's persistent cache saves.

For a model of real shapes with random weights (``benchmarks/accelerator.py``'s configs) and
documents of its SciFact-like lengths, every shape the plan needs is compiled with
``Embedder.precompile``, each run in a fresh process (nothing compiled carries over in memory):
first with the persistent cache off, then twice sharing a new cache directory
(``keytok_jax.compile_cache``): cold (compiles and writes) and warm (loads).

    python benchmarks/compile_time.py --model smollm2-135m --docs 400
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(args) -> dict:
    """One measurement in this process: load, plan, precompile."""
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
    from accelerator import bench_settings, doc_lengths, random_model

    from keytok_jax.compile_cache import enable_compile_cache
    from keytok_jax.loading import resolve_dtype
    from keytok_jax.pipeline import Embedder

    state = "off" if not args.cache else ("warm" if any(Path(args.cache).iterdir()) else "cold")
    enable_compile_cache(args.cache or "none")
    model = random_model(args.model, resolve_dtype("auto"))
    emb = Embedder(model, bench_settings(args.max_length), batch_tokens=args.batch_tokens,
                   bucket_step=args.bucket_step)
    return {"cache": state, "batch_tokens": emb.batch_tokens, "bucket_step": emb.bucket_step,
            **emb.precompile(doc_lengths(args.docs, args.max_length))}


def run(argv: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="a shape of benchmarks/accelerator.py (default: %(default)s)")
    p.add_argument("--docs", type=int, default=400, help="documents whose plan sets the shapes (default: %(default)s)")
    p.add_argument("--max-length", type=int, default=512, help="tokens per document (default: %(default)s)")
    p.add_argument("--batch-tokens", type=int, help="padded tokens per batch (default: the device's, as the embed job's)")
    p.add_argument("--bucket-step", type=int, help="texts padded to multiples of this (default: the device's)")
    p.add_argument("--output", help="write the rows as JSON here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    base = ["--model", args.model, "--docs", str(args.docs), "--max-length", str(args.max_length)]
    base += [arg for flag, value in (("--batch-tokens", args.batch_tokens), ("--bucket-step", args.bucket_step))
             if value is not None for arg in (flag, str(value))]
    rows = [run(base)]
    with tempfile.TemporaryDirectory() as cache:
        rows += [run(base + ["--cache", cache]) for _ in range(2)]
    print("| persistent cache | shapes | precompile s |\n|---|---|---|")
    for r in rows:
        print(f"| {r['cache']} | {r['precompiled']} | {r['precompile_seconds']:.1f} |")
    if args.output:
        Path(args.output).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
