"""docs/s of the embedding job with one process and with two processes on this machine.

    python benchmarks/processes.py [--model smollm2-135m] [--input ../shared/data/scifact]
        [--limit 128] [--max-length 128] [--shard-size 16] --output processes.json

Runs ``python -m keytok_jax.embed`` over the same documents in four set-ups, each into a fresh
store, and checks that every store holds the same rows as the one-process store:

* ``1 process``: the plain job;
* ``2 processes``: ``--distributed``, each process embeds every other shard on its own device;
* ``2 processes, global mesh data=2``: ``--global-mesh --mesh data=2``, one mesh over both
  processes' devices, lock-step rounds (each process feeds half of every batch);
* ``2 processes, global mesh model=2``: ``--global-mesh --mesh model=2``, the model split over
  the two processes (tensor parallel across processes: both feed the same rows).

Each process sees one CPU device and nothing pins the processes to cores: on a CPU host they
share the cores that one process already keeps busy, so this measures the cost of the
multi-process machinery (start-up without the parameter cache, collectives through gloo), not a
speed-up. Load time is part of the wall time; the table also gives docs/s after loading.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

SETUPS = {
    "1 process": (1, []),
    "2 processes": (2, []),
    "2 processes, global mesh data=2": (2, ["--global-mesh", "--mesh", "data=2"]),
    "2 processes, global mesh model=2": (2, ["--global-mesh", "--mesh", "model=2"]),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_setup(n: int, extra: list[str], base: list[str], store: Path, env: dict) -> dict:
    cmd = [sys.executable, "-m", "keytok_jax.embed", *base, "--output", str(store), "--no-progress"]
    t0 = time.perf_counter()
    if n == 1:
        procs = [subprocess.Popen([*cmd, "--summary-json", f"{store}.0.json"], env=env, cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    else:
        port = _free_port()
        procs = [subprocess.Popen([*cmd, "--summary-json", f"{store}.{i}.json", "--distributed",
                                   "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n),
                                   "--process-id", str(i), *extra],
                                  env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for i in range(n)]
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"embed failed ({store.name}):\n{out[-3000:]}")
    wall = time.perf_counter() - t0
    parts = [json.loads(Path(f"{store}.{i}.json").read_text()) for i in range(n)]
    loop = max(p["wall_seconds"] - p["load_seconds"] for p in parts)
    return {"processes": n, "rows": parts[0]["rows"], "wall_seconds": round(wall, 2),
            "load_seconds": round(max(p["load_seconds"] for p in parts), 2),
            "compile_seconds": round(max(p["compile_seconds"] for p in parts), 2),
            "docs_per_s": round(parts[0]["rows"] / wall, 3),
            "docs_per_s_after_load": round(parts[0]["rows"] / loop, 3)}


def same_rows(a: Path, b: Path) -> dict:
    """How far store ``b`` is from ``a``: a different batch layout (rows per device, a split
    model) changes float summation order, so near-tied logits deep in the top-k can swap."""
    from keytok_jax import store as store_lib

    sa, sb = store_lib.open(a), store_lib.open(b)
    assert sa.ids == sb.ids, "row ids differ"
    ids_a, ids_b = (np.asarray(s.token_ids.read().result()) for s in (sa, sb))
    dense_a, dense_b = (np.asarray(s.dense.read().result()) for s in (sa, sb))
    rel = np.linalg.norm(dense_a - dense_b, axis=1) / np.maximum(np.linalg.norm(dense_a, axis=1), 1e-12)
    overlap = np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(ids_a, ids_b)])
    return {"rows_with_identical_top_k": float(np.mean((ids_a == ids_b).all(axis=1))),
            "top_k_set_overlap": float(overlap),
            "top_1_equal": float(np.mean(ids_a[:, 0] == ids_b[:, 0])),
            "max_dense_rel_err": float(rel.max())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="model (default: %(default)s)")
    p.add_argument("--input", default=str(ROOT.parent / "shared" / "data" / "scifact"),
                   help="corpus (default: ../shared/data/scifact)")
    p.add_argument("--limit", type=int, default=128, help="documents (default: %(default)s)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per document (default: %(default)s)")
    p.add_argument("--shard-size", type=int, default=16, help="rows per store shard (default: %(default)s)")
    p.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS), metavar="SETUP",
                   help=f"set-ups to run (default: all): {list(SETUPS)}")
    p.add_argument("--output", help="write the results as JSON")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="keytok-processes-"))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "KEYTOK_JAX_CACHE": str(work / "cache")}
    base = ["--input", args.input, "--model", args.model, "--limit", str(args.limit), "--max-length",
            str(args.max_length), "--shard-size", str(args.shard_size), "--dense"]
    # Fill the parameter cache first so the one-process run does not pay the conversion alone.
    subprocess.run([sys.executable, "-c", f"import keytok_jax; keytok_jax.load_model({args.model!r})"],
                   env=env, check=True, cwd=ROOT)
    results, first = {}, None
    try:
        for name in args.setups:
            n, extra = SETUPS[name]
            store = work / name.replace(" ", "_").replace(",", "").replace("=", "")
            results[name] = run_setup(n, extra, base, store, env)
            if first is None:
                first = store
            else:
                results[name].update(same_rows(first, store))
            print(name, results[name], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ref = next(iter(results.values()))["docs_per_s"]
    lines = ["| set-up | processes | wall s | load s | docs/s | docs/s after load | vs first |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['processes']} | {r['wall_seconds']} | {r['load_seconds']} | "
                     f"{r['docs_per_s']} | {r['docs_per_s_after_load']} | {r['docs_per_s'] / ref:.2f}x |")
    if args.output:
        Path(args.output).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
