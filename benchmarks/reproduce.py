"""Regenerate every number of docs/REPRODUCTION.md: the paper's three findings on two
backbone → embedder pairs built here, with controls.

Pairs (``--pairs``):

- ``trained``: SmolLM2-135M (the backbone) vs the embedder trained from it by
  ``python -m keytok_jax.finetune`` (``--embedder``), both under the embedder's preset (SGPT
  position-weighted mean, no prompt) — the paper's GPT-Neo → SGPT-nli comparison, small;
- ``prompt``: SmolLM2 with last-token pooling and no prompt vs the same model with PromptEOL —
  the paper's OPT → OPT-EOL comparison, which needs no training.

Steps (each skipped when its output exists, so an interrupted run resumes; the stores resume too):

1. texts: STS12 SMTnews pairs with gold > 4 (both sentences, the official " ."/" ?" cleanup), the
   paper's MS MARCO sample (500 queries, then their 500 passages), the first ``--wiki-lines``
   lines of the wiki1m sample with line endings stripped (``wiki1000``) and, as the official
   loader reads them, with each line's newline kept (``wiki1000+nl``);
2. each model of each pair embeds each text set at ``--align-max-length`` tokens (default 512,
   so no MS MARCO passage is cut) into a store with dense vectors;
3. ``spectral align``: hit@10, local and global alignment of each model;
4. ``spectral variation``: per-component variation (share of the first component, plot) and the
   shift file λ = diff_1; ``spectral align --shift``: the backbone after the shift;
5. ``spectral controls``: the shift beside its controls (λ along v2, random and centred
   directions; the whole mean difference, with and without its v1 part; λ × 0.25 … 2; the
   generic removal; the reverse shift on the embedder), official and content-token metrics;
6. STS-B test Spearman of the trained pair (``python -m keytok_jax.sts``, or ``--sts-from``);
7. SciFact (finding c), for both models of each pair in ``--scifact-pairs``: the corpus (or a
   sub-corpus, ``--scifact-distractors N``) embedded with the documents' top-256 aligned tokens
   (no correction: the paper's form) and dense vectors; stores with top-K for smaller K derived
   from the dense (pooled) vectors through the job's projection; ``python -m keytok_jax.evaluate``
   with BM25, dense, ``tokens`` (tokenizer-only queries), ``expand`` and ``union`` (the paper's
   query form: the query's tokens ∪ its top-M aligned tokens), M and K swept.

    python benchmarks/reproduce.py --embedder out/smollm2-nli/model --out out/reproduce \\
        --sts-from out/smollm2-nli/summary.json --scifact-distractors -1
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from beir_subset import judged_subcorpus

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"
SMTNEWS = DATA / "sts" / "STS12-en-test" / "STS.input.surprise.SMTnews.txt"
MSMARCO = DATA / "msmarco_sampled500" / "sampled500.txt"
WIKI = DATA / "wiki1m_sample" / "wiki1m_for_simcse.first1280000bytes.txt"
STSB = DATA / "sts" / "STSBenchmark" / "sts-test.csv"
SCIFACT = DATA / "scifact"
# What the stores of the analyses hold besides dense vectors: the paper's raw aligned tokens.
PAPER_SPARSE = ["--doc-tokens", "aligned", "--correction", "none"]
ROLES = ("backbone", "embedder")


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
    wiki = f"wiki{wiki_lines}"
    sets = {"smtnews>4": data / "smtnews_gold_gt4.txt", "msmarco500": data / "msmarco500.txt",
            wiki: data / f"{wiki}.txt", f"{wiki}+nl": data / f"{wiki}-newline.jsonl"}
    sets["smtnews>4"].write_text("\n".join(t for _, t in read_texts(SMTNEWS, min_score=4.0)) + "\n")
    rows = [line.split("\t") for line in MSMARCO.read_text(encoding="utf-8").split("\n") if line.strip()]
    sets["msmarco500"].write_text("\n".join([q for q, _ in rows] + [d for _, d in rows]) + "\n")
    with open(WIKI, encoding="utf-8") as f:
        lines = f.read().split("\n")[: min(wiki_lines, 11914)]      # the file's last line is cut off
    sets[wiki].write_text("\n".join(lines) + "\n", encoding="utf-8")
    # the official loader keeps each line's "\n": it is the text's last token and in its token set
    sets[f"{wiki}+nl"].write_text("".join(json.dumps({"_id": str(i + 1), "text": line + "\n"}) + "\n"
                                          for i, line in enumerate(lines)), encoding="utf-8")
    sets["scifact"] = SCIFACT if distractors < 0 else judged_subcorpus(
        SCIFACT, data / f"scifact-test+{distractors}", distractors)
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


def pair_models(args) -> dict[str, dict[str, list[str]]]:
    pairs = {"prompt": {"backbone": ["--model", args.backbone, "--pooling", "last", "--prompt", "none"],
                        "embedder": ["--model", args.backbone, "--pooling", "last", "--prompt", "prompteol"]}}
    if args.embedder:
        preset = str(Path(args.embedder).resolve() / "keytok.yaml")
        pairs["trained"] = {"backbone": ["--config", preset, "--model", args.backbone],
                            "embedder": ["--config", preset]}
    return pairs


def analyse_set(name: str, texts: Path, models: dict, work: Path, max_length: int, timings: dict) -> dict:
    """Steps 2–5 for one pair and one text set."""
    res = {"alignment": {}}
    for role, margs in models.items():
        store = work / f"{role}-store"
        seconds = embed(margs, texts, store, work / f"{role}-embed.log",
                        ["--top-k", "10", "--max-length", str(max_length), *PAPER_SPARSE])
        if seconds is not None:
            timings[f"{work.relative_to(work.parents[2])}/{role}/embed"] = seconds
        res["alignment"][role] = run_json(
            ["keytok_jax.spectral", "align", "--store", str(store), "--output", str(work / f"{role}-align"),
             "--k", "10", "--examples", "3", "--no-plots"],
            work / f"{role}-align" / "align.json", work / f"{role}-align.log")
        job = Path(f"{store}.summary.json")
        res.setdefault("stats", {})[role] = json.loads(job.read_text()) if job.exists() else {}
    stores = [a for role in ROLES for a in (f"--{role}-store", str(work / f"{role}-store"))]
    var_dir = work / "variation"
    res["variation"] = run_json(
        ["keytok_jax.spectral", "variation", *stores, "--output", str(var_dir), "--shift-out",
         str(var_dir / "shift.json")], var_dir / "variation.json", work / "variation.log")
    res["alignment"]["backbone+shift"] = run_json(
        ["keytok_jax.spectral", "align", "--store", str(work / "backbone-store"), "--shift",
         str(var_dir / "shift.json"), "--output", str(work / "backbone-shift-align"), "--k", "10",
         "--examples", "3", "--no-plots"],
        work / "backbone-shift-align" / "align.json", work / "backbone-shift-align.log")
    res["controls"] = run_json(
        ["keytok_jax.spectral", "controls", *stores, "--output", str(work / "controls"), "--k", "10"],
        work / "controls" / "controls.json", work / "controls.log")
    return res


def scifact(models: dict, dataset: Path, work: Path, args, timings: dict) -> dict:
    """Step 7 for the two models of one pair."""
    sys.path.insert(0, str(ROOT))
    from sparse_quality import derive, evaluate   # noqa: E402 - a sibling script

    from keytok_jax import store as store_lib
    from keytok_jax.loading import load_model

    top = max(args.top_ks)
    out = {}
    for role, margs in models.items():
        store = work / f"{role}-k{top}"
        seconds = embed(margs, dataset, store, work / f"{role}-embed.log",
                        ["--max-length", str(args.scifact_max_length), "--top-k", str(top), *PAPER_SPARSE])
        if seconds is not None:
            timings[f"{work.name}/{role}/embed"] = seconds
        settings = store_lib.open(store).settings
        head = None
        r = {"main": evaluate(store, dataset, ("bm25", "dense", "tokens", "expand", "union"), f"{role}-k{top}"),
             "union_m": {}, "top_k": {}}
        for m in args.union_ms:
            r["union_m"][m] = evaluate(store, dataset, ("union",), f"{role}-k{top}-union-m{m}", ["--union-m", str(m)])
        for k in sorted(args.top_ks):
            d = store if k == top else work / "derived" / f"{role}-k{k}"
            if k != top:
                if head is None:
                    head = np.asarray(load_model(settings["model"]).lm_head, np.float32)
                derive(store, d, head, None, "none", k, settings["weighting"])
            r["top_k"][k] = evaluate(d, dataset, ("tokens", "union"), d.name)
        out[role] = r
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embedder", help="exported model folder of python -m keytok_jax.finetune (holds "
                                      "keytok.yaml); without it only the prompt pair runs")
    p.add_argument("--backbone", default="smollm2-135m", help="backbone model (default: %(default)s)")
    p.add_argument("--out", default="out/reproduce", help="work and output directory (default: %(default)s)")
    p.add_argument("--pairs", nargs="+", choices=("trained", "prompt"), default=["trained", "prompt"],
                   help="pairs analysed (default: both; trained needs --embedder)")
    p.add_argument("--wiki-lines", type=int, default=1000, help="wiki1m lines used (default: %(default)s)")
    p.add_argument("--align-max-length", type=int, default=512,
                   help="tokens per text of the alignment sets (default: %(default)s)")
    p.add_argument("--text-sets", nargs="+", default=["smtnews", "msmarco", "wiki"],
                   help="alignment / variation text sets to run (default: all; wiki includes wiki+nl)")
    p.add_argument("--sts-from", metavar="SUMMARY_JSON",
                   help="take STS-B from the summary.json of the finetune run (its --eval-sts before/after "
                        "on the same test file) instead of measuring both models again")
    p.add_argument("--scifact-pairs", nargs="*", choices=("trained", "prompt"), default=["trained"],
                   help="pairs whose two models run SciFact (default: %(default)s; none: skip)")
    p.add_argument("--scifact-distractors", type=int, default=-1,
                   help="SciFact documents added to the judged ones; -1: the whole corpus (default)")
    p.add_argument("--scifact-max-length", type=int, default=96,
                   help="tokens per SciFact document (default: %(default)s: title and the abstract's "
                        "start; two models over 5,183 documents fit a session on 2 cores)")
    p.add_argument("--top-ks", type=int, nargs="+", default=[16, 32, 64, 128, 256],
                   help="document top-K swept (the largest is embedded; default: %(default)s)")
    p.add_argument("--union-ms", type=int, nargs="+", default=[0, 4, 16, 64],
                   help="union mode's M swept (default: %(default)s)")
    args = p.parse_args(argv)
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not DATA.exists():
        raise SystemExit(f"{DATA} not found: this script needs ../shared/data")
    if args.embedder and not (Path(args.embedder) / "keytok.yaml").exists():
        raise SystemExit(f"{args.embedder}/keytok.yaml not found: --embedder must be a folder exported by "
                         "keytok_jax.finetune")
    sets = prepare(out, args.wiki_lines, args.scifact_distractors)
    pairs = {k: v for k, v in pair_models(args).items() if k in args.pairs}
    path = out / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    summary.update({"backbone": args.backbone, "embedder": args.embedder and str(Path(args.embedder).resolve()),
                    "models": pair_models(args)})
    timings = summary.setdefault("timings_seconds", {})
    length = f"L{args.align_max_length}"

    for pair, models in pairs.items():
        for name, texts in sets.items():
            if name == "scifact" or not any(name.startswith(t) for t in args.text_sets):
                continue
            work = out / pair / length / name.replace(">", "gt")
            res = analyse_set(name, texts, models, work, args.align_max_length, timings)
            summary.setdefault("analysis", {}).setdefault(pair, {}).setdefault(length, {})[name] = res
            path.write_text(json.dumps(summary, indent=1, ensure_ascii=False))

    if "trained" in pairs:
        if args.sts_from:
            trained = json.loads(Path(args.sts_from).read_text())
            summary["sts"] = {"backbone": trained["sts_before"], "embedder": trained["sts_after"]}
        else:
            summary["sts"] = {role: run_json(["keytok_jax.sts", *margs, str(STSB), "--output", str(out / f"sts-{role}.json")],
                                             out / f"sts-{role}.json", out / f"sts-{role}.log")["results"][0]
                              for role, margs in pairs["trained"].items()}

    corpus = "full" if args.scifact_distractors < 0 else f"test+{args.scifact_distractors}"
    for pair in [q for q in args.scifact_pairs if q in pairs]:
        label = f"{pair}, {corpus}, max length {args.scifact_max_length}"
        work = out / pair / f"scifact-{corpus}-{args.scifact_max_length}"
        summary.setdefault("scifact", {})[label] = scifact(pairs[pair], sets["scifact"], work, args, timings)
        path.write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    path.write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    (out / "summary.md").write_text(markdown(summary), encoding="utf-8")
    print(markdown(summary))
    return 0


# ---------------------------------------------------------------------------- tables

def _m(r: dict, k: int = 10) -> str:
    return f"{r[f'hit@{k}']:.3f} | {r['local_alignment']:.3f} | {r['global_alignment']:.3f}"


def markdown(s: dict) -> str:
    lines = []
    for pair, by_len in s.get("analysis", {}).items():
        for length, by_set in by_len.items():
            lines += [f"### {pair} pair, {length}", "",
                      "| texts | model | texts | hit@10 | local | global |", "|---|---|---|---|---|---|"]
            for name, res in by_set.items():
                for role, r in res["alignment"].items():
                    m = r["after"] if role == "backbone+shift" else r["before"]
                    lines.append(f"| {name} | {role} | {m['valid']} | {_m(m)} |")
            lines += ["", "| texts | λ = diff_1 | first-component share | top-5 shares | truncated (backbone) |",
                      "|---|---|---|---|---|"]
            for name, res in by_set.items():
                v = res["variation"]
                top = ", ".join(f"{c['share']:.3f}" for c in v["components"][:5])
                cut = res.get("stats", {}).get("backbone", {}).get("truncated", "")
                lines.append(f"| {name} | {v['lambda']:.2f} | {v['first_share']:.3f} | {top} | {cut} |")
            lines += ["", "Controls (official metrics; content: stop words and punctuation out):", "",
                      "| texts | variant | step ‖·‖ | hit@10 | local | global | content hit@10 | content local "
                      "| content global |", "|---|---|---|---|---|---|---|---|---|"]
            for name, res in by_set.items():
                for variant, r in res["controls"]["variants"].items():
                    lines.append(f"| {name} | {variant} | {r['step_norm']:.2f} | {_m(r['official'])} | "
                                 f"{_m(r['content'])} |")
            lines += ["", "| texts | text | backbone top-10 | embedder top-10 | backbone + shift top-10 |",
                      "|---|---|---|---|---|"]
            for name, res in by_set.items():
                al = res["alignment"]
                for i, ex in enumerate(al["backbone"]["examples"][:2]):
                    cells = [ex["top_before"], al["embedder"]["examples"][i]["top_before"],
                             al["backbone+shift"]["examples"][i]["top_after"]]
                    lines.append(f"| {name} | {_cell(ex['text'][:90])} | " + " | ".join(_tokens(c) for c in cells) + " |")
            lines.append("")
    if s.get("sts"):
        lines += ["| model | STS-B test Spearman | Pearson |", "|---|---|---|"]
        for role, r in s["sts"].items():
            lines.append(f"| {role} | {r['spearman']:.2f} | {r['pearson']:.2f} |")
        lines.append("")
    for label, by_role in s.get("scifact", {}).items():
        lines += [f"### SciFact: {label}", "", "| model | mode | nDCG@10 | Recall@100 | / dense |", "|---|---|---|---|---|"]
        for role, r in by_role.items():
            for mode, row in r["main"]["modes"].items():
                lines.append(f"| {role} | {mode} | {row['nDCG@10']:.4f} | {row['R@100']:.4f} | {row['ratio_to_dense']:.3f} |")
        lines += ["", "| model | union M | nDCG@10 | / dense |", "|---|---|---|---|"]
        for role, r in by_role.items():
            dense = r["main"]["modes"]["dense"]["nDCG@10"]
            for m, rep in r["union_m"].items():
                u = rep["modes"]["union"]["nDCG@10"]
                lines.append(f"| {role} | {m} | {u:.4f} | {u / dense:.3f} |")
        lines += ["", "| model | document top-K | tokens nDCG@10 | / dense | union (M 16) | / dense |",
                  "|---|---|---|---|---|---|"]
        for role, r in by_role.items():
            dense = r["main"]["modes"]["dense"]["nDCG@10"]
            for k, rep in r["top_k"].items():
                t, u = rep["modes"]["tokens"]["nDCG@10"], rep["modes"]["union"]["nDCG@10"]
                lines.append(f"| {role} | {k} | {t:.4f} | {t / dense:.3f} | {u:.4f} | {u / dense:.3f} |")
        lines.append("")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "\\n")


def _tokens(tokens: list[str]) -> str:
    """Tokens as code spans, a leading space shown as ␣ and a newline as \\n."""
    return " ".join("`" + t.replace(" ", "␣").replace("\n", "\\n").replace("|", "\\|").replace("`", "'") + "`"
                    for t in tokens)


if __name__ == "__main__":
    raise SystemExit(main())
