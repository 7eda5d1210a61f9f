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

from .analysis.sts import evaluate_sts, read_sts_pairs  # noqa: E402,F401  (moved; re-exported)


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
