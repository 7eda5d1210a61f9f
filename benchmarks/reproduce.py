"""Regenerate every number of docs/REPRODUCTION.md: the SmolLM2 backbone vs the SmolLM2 embedder
trained by ``python -m keytok_jax.finetune`` (the paper's backbone/embedder comparison, small).

Steps (each skipped when its output exists, so an interrupted run resumes):

1. texts: STS12 SMTnews pairs with gold > 4 (both sentences, the official " ."/" ?" cleanup), the
   paper's MS MARCO sample (500 queries, then their 500 passages) and the first ``--wiki-lines``
   lines of the wiki1m sample;
2. both models embed each text set with the embedder's own preset (``MODEL/keytok.yaml``: SGPT
   position-weighted mean, no prompt) into a store with dense vectors (``python -m keytok_jax.embed``);
3. ``spectral align``: hit@10, local and global alignment of each model;
4. ``spectral variation``: per-component variation between them over the backbone's principal
   directions (share of the first component, plot), and the shift file λ = diff_1;
5. ``spectral align --shift``: the backbone's alignment after shifting its first component;
6. STS-B test Spearman of both models (``python -m keytok_jax.sts``);
7. SciFact: the corpus (``--scifact-distractors -1``) or a sub-corpus (every document judged in
   the test qrels plus the first ``--scifact-distractors`` others, in corpus order) embedded by both models
   (``--scifact-max-length`` tokens), then ``python -m keytok_jax.evaluate`` (bm25, tokens,
   expand, dense): nDCG@10 sparse vs dense.

    python benchmarks/reproduce.py --embedder out/smollm2-nli/model --out out/reproduce
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from beir_subset import judged_subcorpus

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"
SMTNEWS = DATA / "sts" / "STS12-en-test" / "STS.input.surprise.SMTnews.txt"
MSMARCO = DATA / "msmarco_sampled500" / "sampled500.txt"
WIKI = DATA / "wiki1m_sample" / "wiki1m_for_simcse.first1280000bytes.txt"
STSB = DATA / "sts" / "STSBenchmark" / "sts-test.csv"
SCIFACT = DATA / "scifact"


def sh(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-m", *cmd], check=True, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    return time.perf_counter() - t0


def prepare(out: Path, wiki_lines: int, distractors: int) -> dict[str, Path]:
    sys.path.insert(0, str(ROOT))
    from keytok_jax.spectral import read_texts

    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    sets = {"smtnews>4": data / "smtnews_gold_gt4.txt", "msmarco500": data / "msmarco500.txt",
            f"wiki{wiki_lines}": data / f"wiki{wiki_lines}.txt"}
    sets["smtnews>4"].write_text("\n".join(t for _, t in read_texts(SMTNEWS, min_score=4.0)) + "\n")
    rows = [line.split("\t") for line in MSMARCO.read_text(encoding="utf-8").split("\n") if line.strip()]
    sets["msmarco500"].write_text("\n".join([q for q, _ in rows] + [d for _, d in rows]) + "\n")
    with open(WIKI, encoding="utf-8") as f:
        lines = f.read().split("\n")[: min(wiki_lines, 11914)]      # the file's last line is cut off
    sets[f"wiki{wiki_lines}"].write_text("\n".join(lines) + "\n", encoding="utf-8")

    if distractors < 0:
        sets["scifact"] = SCIFACT
        return sets
    sub = judged_subcorpus(SCIFACT, data / f"scifact-test+{distractors}", distractors)
    sets["scifact"] = sub
    return sets


def embed(model_args: list[str], texts: Path, store: Path, log: Path, extra=()) -> float | None:
    """Seconds the job took; ``None`` when the store was already complete."""
    manifest = store / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("complete"):
        return None   # an incomplete store is resumed by rerunning the job
    return sh(["keytok_jax.embed", "--input", str(texts), "--output", str(store), *model_args, "--dense",
        "--no-progress", "--summary-json", str(store) + ".summary.json", *extra], log)


def run_json(cmd: list[str], result: Path, log: Path) -> dict:
    if not result.exists():
        sh(cmd, log)
    return json.loads(result.read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embedder", required=True, help="exported model folder of python -m keytok_jax.finetune "
                                                     "(holds keytok.yaml)")
    p.add_argument("--backbone", default="smollm2-135m", help="backbone model (default: %(default)s)")
    p.add_argument("--out", default="out/reproduce", help="work and output directory (default: %(default)s)")
    p.add_argument("--wiki-lines", type=int, default=1000, help="wiki1m lines used (default: %(default)s)")
    p.add_argument("--scifact-distractors", type=int, default=500,
                   help="SciFact documents added to the judged ones; -1: the whole corpus "
                        "(default: %(default)s)")
    p.add_argument("--scifact-max-length", type=int, default=192, help="tokens per SciFact document "
                                                                        "(default: %(default)s)")
    p.add_argument("--text-sets", nargs="+", default=["smtnews", "msmarco", "wiki"],
                   help="alignment / variation text sets to run (default: all three); rerun with more "
                        "to add them, finished steps are kept")
    p.add_argument("--sts-from", metavar="SUMMARY_JSON",
                   help="take STS-B from the summary.json of the finetune run (its --eval-sts before/after "
                        "on the same test file) instead of measuring both models again")
    args = p.parse_args(argv)
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not DATA.exists():
        raise SystemExit(f"{DATA} not found: this script needs ../shared/data")
    preset = Path(args.embedder).resolve() / "keytok.yaml"
    if not preset.exists():
        raise SystemExit(f"{preset} not found: --embedder must be a folder exported by keytok_jax.finetune")
    sets = prepare(out, args.wiki_lines, args.scifact_distractors)
    models = {"backbone": ["--config", str(preset), "--model", args.backbone],
              "embedder": ["--config", str(preset)]}
    summary = {"backbone": args.backbone, "embedder": str(Path(args.embedder).resolve()),
               "preset": preset.read_text(), "alignment": {}, "variation": {}, "sts": {}, "scifact": {}}
    previous = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    if previous.get("embedder") == summary["embedder"] and previous.get("backbone") == args.backbone:
        # Keep what earlier runs measured (other text sets, other SciFact corpora); reruns replace.
        for key in ("alignment", "variation", "scifact"):
            summary[key].update({k: v for k, v in previous.get(key, {}).items()
                                 if key != "scifact" or "backbone" in v})
    timings = dict(previous.get("timings_seconds", {}))

    for name, texts in sets.items():
        if name == "scifact" or not any(name.startswith(t) for t in args.text_sets):
            continue
        tag = name.replace(">", "gt")
        for role, margs in models.items():
            store = out / tag / f"{role}-store"
            seconds = embed(margs, texts, store, out / tag / f"{role}-embed.log", ["--top-k", "10"])
            if seconds is not None:
                timings[f"{tag}/{role}/embed"] = seconds
            summary["alignment"].setdefault(name, {})[role] = run_json(
                ["keytok_jax.spectral", "align", "--store", str(store), "--output", str(out / tag / f"{role}-align"),
                 "--k", "10", "--examples", "3"],
                out / tag / f"{role}-align" / "align.json", out / tag / f"{role}-align.log")
        var_dir = out / tag / "variation"
        summary["variation"][name] = run_json(
            ["keytok_jax.spectral", "variation", "--backbone-store", str(out / tag / "backbone-store"),
             "--embedder-store", str(out / tag / "embedder-store"), "--output", str(var_dir),
             "--shift-out", str(var_dir / "shift.json")],
            var_dir / "variation.json", out / tag / "variation.log")
        summary["alignment"][name]["backbone+shift"] = run_json(
            ["keytok_jax.spectral", "align", "--store", str(out / tag / "backbone-store"), "--shift",
             str(var_dir / "shift.json"), "--output", str(out / tag / "backbone-shift-align"), "--k", "10",
             "--examples", "3"],
            out / tag / "backbone-shift-align" / "align.json", out / tag / "backbone-shift-align.log")
        (out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))

    if args.sts_from:
        trained = json.loads(Path(args.sts_from).read_text())
        summary["sts"] = {"backbone": trained["sts_before"], "embedder": trained["sts_after"]}
    for role, margs in ([] if args.sts_from else models.items()):
        summary["sts"][role] = run_json(["keytok_jax.sts", *margs, str(STSB), "--output", str(out / f"sts-{role}.json")],
                                        out / f"sts-{role}.json", out / f"sts-{role}.log")["results"][0]

    corpus = "full" if args.scifact_distractors < 0 else f"test+{args.scifact_distractors}"
    label = f"{corpus}, max length {args.scifact_max_length}"
    work = out / f"scifact-{corpus}-{args.scifact_max_length}"
    summary["scifact"][label] = {}
    for role, margs in models.items():
        store = work / f"{role}-store"
        work.mkdir(exist_ok=True)
        seconds = embed(margs, sets["scifact"], store, work / f"{role}-embed.log",
                        # finding (c) is about the paper's aligned tokens, not the job's literal ones
                        ["--max-length", str(args.scifact_max_length), "--top-k", "64",
                         "--doc-tokens", "aligned"])
        if seconds is not None:
            timings[f"scifact {label}/{role}/embed"] = seconds
        modes = ["bm25", "tokens", "expand", "dense"]
        summary["scifact"][label][role] = run_json(
            ["keytok_jax.evaluate", "--store", str(store), "--dataset", str(sets["scifact"]),
             *[a for m in modes for a in ("--mode", m)], "--output", str(work / f"{role}-eval.json")],
            work / f"{role}-eval.json", work / f"{role}-eval.log")
    summary["timings_seconds"] = timings
    (out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    print(markdown(summary))
    (out / "summary.md").write_text(markdown(summary), encoding="utf-8")
    return 0


def markdown(s: dict) -> str:
    lines = ["| texts | model | texts | hit@10 | local | global |", "|---|---|---|---|---|---|"]
    for name, by_role in s["alignment"].items():
        for role, r in by_role.items():
            m = r["after"] if role == "backbone+shift" else r["before"]
            lines.append(f"| {name} | {role} | {m['valid']} | {m['hit@10']:.3f} | {m['local_alignment']:.3f} | "
                         f"{m['global_alignment']:.3f} |")
    lines += ["", "| texts | first-component share of the variation | top-5 shares | λ = diff_1 |", "|---|---|---|---|"]
    for name, v in s["variation"].items():
        top = ", ".join(f"{c['share']:.3f}" for c in v["components"][:5])
        lines.append(f"| {name} | {v['first_share']:.3f} | {top} | {v['lambda']:.2f} |")
    lines += ["", "| model | STS-B test Spearman | Pearson |", "|---|---|---|"]
    for role, r in s["sts"].items():
        lines.append(f"| {role} | {r['spearman']:.2f} | {r['pearson']:.2f} |")
    lines += ["", "| SciFact corpus | model | mode | nDCG@10 | Recall@100 | / dense |", "|---|---|---|---|---|---|"]
    for label, by_role in s["scifact"].items():
        for role, rep in by_role.items():
            for mode, row in rep["modes"].items():
                lines.append(f"| {label} | {role} | {mode} | {row['nDCG@10']:.4f} | {row['R@100']:.4f} | "
                             f"{row['ratio_to_dense']:.3f} |")
    lines += ["", "| texts | text | backbone top-10 | embedder top-10 | backbone + shift top-10 |",
              "|---|---|---|---|---|"]
    for name, by_role in s["alignment"].items():
        if not {"backbone", "embedder", "backbone+shift"} <= set(by_role):
            continue
        for i, ex in enumerate(by_role["backbone"]["examples"][:2]):
            cells = [by_role["backbone"]["examples"][i]["top_before"], by_role["embedder"]["examples"][i]["top_before"],
                     by_role["backbone+shift"]["examples"][i]["top_after"]]
            lines.append(f"| {name} | {_cell(ex['text'][:90])} | " + " | ".join(_tokens(c) for c in cells) + " |")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _tokens(tokens: list[str]) -> str:
    """Tokens as code spans, a leading space shown as ␣ and a newline as \\n."""
    return " ".join("`" + t.replace(" ", "␣").replace("\n", "\\n").replace("|", "\\|").replace("`", "'") + "`"
                    for t in tokens)


if __name__ == "__main__":
    raise SystemExit(main())
