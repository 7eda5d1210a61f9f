"""Closing-note numbers of the spectral analysis (issue 5), rerunnable.

For each dataset and embedding configuration of SmolLM2-135M-Instruct:

1. the texts are embedded once by the real job into a store with dense vectors
   (``python -m keytok_jax.embed --dense``);
2. ``python -m keytok_jax.spectral components --store``: streaming components (time, peak RSS);
3. ``python -m keytok_jax.spectral shift --store --components``: hit@10, local and global alignment
   without and with the uncentered first-component shift ``e + λ v1``, λ = -μ·v1 ("remove") and
   λ/2, and the top-10 tokens of the first texts before and after.

Datasets: the first ``--wiki-lines`` lines of the SimCSE wiki1m sample (the issue asks for 10,000;
the default 2,000 fits the CPU budget of a 2-core machine) and the STS12 SMTnews pairs with gold
score > 4 (both sentences; the official get_sts_data cleanup). Then the streaming accumulator alone
on ``--stream-rows`` random 576-dim rows (float32 and float64), each in its own process for its
peak RSS.

    python benchmarks/alignment.py --out out/alignment            # writes summary.json / summary.md
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
WIKI = SHARED / "data" / "wiki1m_sample" / "wiki1m_for_simcse.first1280000bytes.txt"
SMTNEWS = SHARED / "data" / "sts" / "STS12-en-test" / "STS.input.surprise.SMTnews.txt"

STREAM_SNIPPET = r"""
import json, resource, sys, time
import numpy as np
from keytok_jax.spectral import StreamingMoments
rows, dim, precision, batch = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
rng = np.random.default_rng(0)
base = rng.standard_normal(dim).astype(np.float32) * 3
acc = StreamingMoments(dim, precision)
acc.update(rng.standard_normal((batch, dim)).astype(np.float32))       # compile outside the clock
acc = StreamingMoments(dim, precision)
t0 = time.perf_counter(); gen = 0.0
for lo in range(0, rows, batch):
    g0 = time.perf_counter()
    x = base + rng.standard_normal((min(batch, rows - lo), dim)).astype(np.float32)
    gen += time.perf_counter() - g0
    acc.update(x)
t_acc = time.perf_counter() - t0 - gen
t1 = time.perf_counter(); comp = acc.components(False); t_eigh = time.perf_counter() - t1
t2 = time.perf_counter(); acc.components(False, method="power"); t_pow = time.perf_counter() - t2
print(json.dumps({"rows": rows, "dim": dim, "precision": precision, "batch_rows": batch,
                  "seconds_accumulate": t_acc, "seconds_eigh": t_eigh, "seconds_power": t_pow,
                  "rows_per_s": rows / t_acc,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def sh(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    return time.perf_counter() - t0


def prepare(out: Path, wiki_lines: int) -> dict[str, Path]:
    sys.path.insert(0, str(ROOT))
    from keytok_jax.spectral import read_texts

    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    wiki = data / f"wiki{wiki_lines}.txt"
    with open(WIKI, encoding="utf-8") as f:
        lines = f.read().split("\n")[: min(wiki_lines, 11914)]    # the file's last line is cut off
    wiki.write_text("\n".join(lines) + "\n", encoding="utf-8")
    smt = data / "smtnews_gold_gt4.txt"
    texts = [t for _, t in read_texts(SMTNEWS, min_score=4.0)]
    smt.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return {f"wiki{wiki_lines}": wiki, "smtnews>4": smt}


def run_config(name: str, texts: Path, pooling: str, prompt: str, out: Path, model: str) -> dict:
    tag = f"{name.replace('>', 'gt')}-{pooling}-{prompt}"
    work = out / tag
    work.mkdir(parents=True, exist_ok=True)
    store = work / "store"
    py = sys.executable
    embed_s = sh([py, "-m", "keytok_jax.embed", "--input", str(texts), "--output", str(store), "--model", model,
                  "--pooling", pooling, "--prompt", prompt, "--top-k", "10", "--dense", "--no-progress",
                  "--summary-json", str(work / "embed.json")], work / "embed.log")
    comp_s = sh([py, "-m", "keytok_jax.spectral", "components", "--store", str(store), "--output",
                 str(work / "components")], work / "components.log")
    comp = json.loads((work / "components" / "components.json").read_text())
    shifts = {}
    for scale in ("1.0", "0.5"):
        d = work / f"shift-{scale}"
        sh([py, "-m", "keytok_jax.spectral", "shift", "--store", str(store), "--output", str(d),
            "--components", str(work / "components" / "components-uncentered.npz"), "--lambda", "remove",
            "--lambda-scale", scale, "--k", "10", "--examples", "3"], d.with_suffix(".log"))
        shifts[scale] = json.loads((d / "shift-report.json").read_text())
    embed = json.loads((work / "embed.json").read_text())
    return {"dataset": name, "pooling": pooling, "prompt": prompt, "rows": comp["rows"],
            "embed": {k: embed[k] for k in ("wall_seconds", "docs_per_s", "real_tokens", "padded_tokens")},
            "embed_process_seconds": embed_s,
            "components": {k: comp[k] for k in ("seconds_total", "seconds_accumulate", "accumulator_bytes",
                                                "peak_rss_mb_streaming", "peak_rss_mb")}
            | {"process_seconds": comp_s, "explained_1": comp["uncentered"]["explained"][0],
               "v1_tokens": comp["uncentered"]["direction_tokens"][0]["plus"]},
            "lambda": {s: r["lambda"] for s, r in shifts.items()},
            "before": shifts["1.0"]["before"], "after": {s: r["after"] for s, r in shifts.items()},
            "examples": [{"text": e["text"], "before": e["top_before"], "after": e["top_after"],
                          "after_half": h["top_after"]}
                         for e, h in zip(shifts["1.0"]["examples"], shifts["0.5"]["examples"])]}


def stream_bench(rows: int, precision: str, dim: int = 576, batch: int = 512) -> dict:
    res = subprocess.run([sys.executable, "-c", STREAM_SNIPPET, str(rows), str(dim), precision, str(batch)],
                         check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(res.stdout.strip().splitlines()[-1])


def markdown(summary: dict) -> str:
    out = ["| dataset | pooling / prompt | texts | shift | λ | hit@10 | local | global |",
           "|---|---|---|---|---|---|---|---|"]
    for r in summary["configs"]:
        cfg = f"{r['pooling']} / {r['prompt']}"
        b = r["before"]
        out.append(f"| {r['dataset']} | {cfg} | {r['before']['valid']} | none | 0 | {b['hit@10']:.3f} | "
                   f"{b['local_alignment']:.3f} | {b['global_alignment']:.3f} |")
        for s, a in r["after"].items():
            label = "λ = -μ·v1" if s == "1.0" else "λ = -μ·v1 / 2"
            out.append(f"| | | | {label} | {r['lambda'][s]:.2f} | {a['hit@10']:.3f} | "
                       f"{a['local_alignment']:.3f} | {a['global_alignment']:.3f} |")
    out += ["", ("| dataset | pooling / prompt | rows | embed job s | components: stream s (accumulate s) | "
                "peak RSS streaming MB | v1 share | v1 tokens |"), "|---|---|---|---|---|---|---|---|"]
    for r in summary["configs"]:
        c = r["components"]
        out.append(f"| {r['dataset']} | {r['pooling']} / {r['prompt']} | {r['rows']} | {r['embed']['wall_seconds']:.0f} | "
                   f"{c['seconds_total']:.2f} ({c['seconds_accumulate']:.2f}) | {c['peak_rss_mb_streaming']:.0f} | "
                   f"{c['explained_1']:.3f} | {' '.join(repr(t) for t in c['v1_tokens'][:6])} |")
    out += ["", "| rows × 576 | precision | accumulate s | rows/s | eigh s | power s | peak RSS MB |",
            "|---|---|---|---|---|---|---|"]
    for s in summary["streaming"]:
        out.append(f"| {s['rows']:,} | {s['precision']} | {s['seconds_accumulate']:.2f} | {s['rows_per_s']:,.0f} | "
                   f"{s['seconds_eigh']:.2f} | {s['seconds_power']:.3f} | {s['peak_rss_mb']:.0f} |")
    out.append("")
    for r in summary["configs"]:
        out.append(f"**{r['dataset']}, {r['pooling']} / {r['prompt']}**")
        for e in r["examples"]:
            out.append(f"- {e['text'][:100]!r}")
            out.append(f"  - before: {', '.join(repr(t) for t in e['before'])}")
            out.append(f"  - λ = -μ·v1: {', '.join(repr(t) for t in e['after'])}")
            out.append(f"  - λ/2: {', '.join(repr(t) for t in e['after_half'])}")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/alignment", help="work and output directory (default: %(default)s)")
    p.add_argument("--wiki-lines", type=int, default=2000, help="first wiki lines used (default: %(default)s)")
    p.add_argument("--configs", nargs="+", default=["weighted_mean:none", "last:prompteol"],
                   help="POOLING:PROMPT pairs (default: SGPT-style weighted mean without prompt, as the "
                        "paper's GPT-Neo analysis; and the project's PromptEOL last-token preset)")
    p.add_argument("--datasets", nargs="+", default=None, help="subset of: wiki, smtnews (default: both)")
    p.add_argument("--stream-rows", type=int, nargs="*", default=[10_000, 1_000_000],
                   help="rows for the accumulator-only benchmark (default: %(default)s)")
    p.add_argument("--model", default="smollm2-135m", help="model (default: %(default)s)")
    args = p.parse_args(argv)
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = prepare(out, args.wiki_lines)
    if args.datasets:
        data = {k: v for k, v in data.items() if any(k.startswith(d) for d in args.datasets)}
    summary = {"model": args.model, "wiki_lines": args.wiki_lines, "configs": [], "streaming": []}
    for name, path in data.items():
        for cfg in args.configs:
            pooling, prompt = cfg.split(":")
            t0 = time.perf_counter()
            summary["configs"].append(run_config(name, path, pooling, prompt, out, args.model))
            print(f"{name} {cfg}: {time.perf_counter() - t0:.0f} s", flush=True)
            (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    for rows in args.stream_rows:
        for precision in ("float32", "float64"):
            summary["streaming"].append(stream_bench(rows, precision))
            print(summary["streaming"][-1], flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    (out / "summary.md").write_text(markdown(summary), encoding="utf-8")
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
