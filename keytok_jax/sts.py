"""``python -m keytok_jax.sts``: semantic textual similarity (Spearman of cosine vs gold scores).

Files: STS-B csv (``sts-{train,dev,test}.csv``: score in the 5th column, sentences in the 6th and
7th) or SentEval ``STS.input.*.txt`` with its ``STS.gs.*.txt`` (pairs without a gold score are
skipped, as SentEval does). Reported as in SentEval / MTEB: Spearman and Pearson correlation x100
of the cosine similarity of the two dense vectors with the gold score.

    python -m keytok_jax.sts --config configs/smollm2.yaml ../shared/data/sts/STSBenchmark/sts-test.csv
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def read_sts_pairs(path, cleanup: bool = False) -> list[tuple[str, str, float]]:
    """(sentence a, sentence b, gold score) of an STS-B csv or a SentEval STS.input file.
    ``cleanup``: the official " ."/" ?" removal of the paper's SentEval STS reader."""
    from .spectral import _sts_pairs, _stsb_pairs

    path = Path(path)
    if path.name.startswith("STS.input."):
        gold = path.with_name(path.name.replace("STS.input.", "STS.gs.", 1))
        if not gold.exists():
            raise FileNotFoundError(f"{gold}: the gold scores of {path} are missing")
        pairs = _sts_pairs(path, gold, None, cleanup)
    elif path.suffix == ".csv":
        pairs = _stsb_pairs(path, None)
    else:
        raise ValueError(f"{path}: not an STS-B csv nor a SentEval STS.input.* file")
    return [(a, b, s) for _, a, b, s in pairs]


def evaluate_sts(embedder, path, cleanup: bool = False) -> dict:
    """Spearman / Pearson x100 of cosine similarity with the gold scores of ``path``."""
    from scipy.stats import pearsonr, spearmanr

    pairs = read_sts_pairs(path, cleanup)
    if len(pairs) < 2:
        raise ValueError(f"{path}: fewer than two scored pairs")
    texts = [p[0] for p in pairs] + [p[1] for p in pairs]
    dense = np.asarray(embedder.encode(texts), np.float64)
    dense /= np.maximum(np.linalg.norm(dense, axis=1, keepdims=True), 1e-12)
    a, b = dense[: len(pairs)], dense[len(pairs):]
    cosine = np.sum(a * b, axis=1)
    gold = np.asarray([p[2] for p in pairs])
    return {"file": str(path), "pairs": len(pairs),
            "spearman": 100 * float(spearmanr(cosine, gold).statistic),
            "pearson": 100 * float(pearsonr(cosine, gold).statistic)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m keytok_jax.sts", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="STS-B csv files or SentEval STS.input.*.txt files")
    p.add_argument("--config", help="YAML embedding preset (configs/*.yaml, or a fine-tuned model's "
                                    "keytok.yaml); the flags below override it")
    p.add_argument("--model", help="alias, Hugging Face folder, .gguf file or hub id (default: smollm2-135m)")
    p.add_argument("--pooling", choices=["last", "mean", "weighted_mean"], help="pooling (default: last)")
    p.add_argument("--prompt", help="prompt template with {text}, or none / prompteol (default: prompteol)")
    p.add_argument("--attention", choices=["causal", "bidirectional"], help="attention (default: causal)")
    p.add_argument("--max-length", type=int, help="max tokens per sentence (default: 512)")
    p.add_argument("--cleanup", action="store_true",
                   help="remove ' .' and ' ?' from SentEval sentences (the paper's STS reader)")
    p.add_argument("--output", help="also write the results as JSON here")
    args = p.parse_args(argv)

    import yaml

    from .embedder import EmbedSettings, Embedder
    from .embed import JOB_DEFAULTS

    opts = {"model": JOB_DEFAULTS["model"], "pooling": JOB_DEFAULTS["pooling"], "prompt": JOB_DEFAULTS["prompt"]}
    if args.config:
        opts.update(yaml.safe_load(Path(args.config).read_text()) or {})
    opts.update({k: v for k, v in vars(args).items()
                 if v is not None and k in ("model", "pooling", "prompt", "attention", "max_length")})
    fields = set(EmbedSettings.__dataclass_fields__)
    settings = {k: v for k, v in opts.items() if k in fields}
    embedder = Embedder.from_pretrained(opts["model"], **settings)
    results = [evaluate_sts(embedder, f, args.cleanup) for f in args.files]
    print("| file | pairs | Spearman | Pearson |\n|---|---|---|---|")
    for r in results:
        print(f"| {Path(r['file']).name} | {r['pairs']} | {r['spearman']:.2f} | {r['pearson']:.2f} |")
    if args.output:
        Path(args.output).write_text(json.dumps({"model": opts["model"], "settings": settings,
                                                 "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
