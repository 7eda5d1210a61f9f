"""``spectral controls``: the first-component shift beside its controls (other directions of the
same size, other amounts, the whole mean difference, the reverse shift on the embedder), scored
with the official alignment metrics and their content-token versions."""
from __future__ import annotations

import argparse
import csv

import numpy as np

from ...analysis.controls import (STOP_WORDS_SOURCE, content_mask, control_variants,
                                  score_variants)
from ...analysis.report import write_json
from ...analysis.source import Source
from ...errors import CorpusError, SettingsError
from ...settings.analysis import ControlSettings
from ..common import add_settings
from .flags import add_model_flags, add_run_flags, add_text_flags, output_dir, source

__all__ = ["add_parser", "run"]

METRICS = ("hit@{k}", "local_alignment", "global_alignment")


def add_parser(sub) -> argparse.ArgumentParser:
    c = sub.add_parser(
        "controls", help="the first-component shift beside its controls (v2, random, centred, "
                         "mean difference, λ sweep, reverse)",
        description="Backbone and embedder embeddings of the same texts (stores or --texts). "
                    "Scores the backbone, the embedder, backbone + λ·v1 (λ = diff_1) and the "
                    "controls: λ along v2, random unit directions and the centred first "
                    "direction; the whole mean difference, and it without its v1 part; λ "
                    "multiples; the generic removal −(μ·v1)·v1; embedder − λ·v1. Official "
                    f"hit@k / local / global and content-token versions (stop words: "
                    f"{STOP_WORDS_SOURCE}; punctuation). Writes controls.json and controls.csv.")
    add_text_flags(c)
    add_model_flags(c, "backbone-", "backbone")
    add_model_flags(c, "embedder-", "embedder")
    add_run_flags(c)
    add_settings(c, [ControlSettings], suppress=False)
    c.set_defaults(func=run)
    return c


def _load(src: Source, with_texts: bool) -> tuple[list, list | None, np.ndarray]:
    ids, texts, dense = [], [], []
    for batch in src.batches(with_texts=with_texts):
        ids += list(batch.ids)
        texts += list(batch.texts or [])
        dense.append(np.asarray(batch.dense, np.float32))
    if not ids:
        raise CorpusError("no texts to analyse")
    return ids, texts if with_texts else None, np.concatenate(dense)


def run(args: argparse.Namespace) -> dict:
    back = source(args, "backbone-")    # settings and paths checked before --output is created
    emb = source(args, "embedder-")
    out = output_dir(args)
    emb.share_model(back)
    ids, texts, b = _load(back, True)
    ids_e, _, e = _load(emb, False)
    if ids != ids_e:
        raise CorpusError(f"the backbone and the embedder saw different texts ({len(ids)} vs "
                          f"{len(ids_e)} rows, or different ids)")
    if b.shape != e.shape:
        raise SettingsError(f"backbone vectors {b.shape} vs embedder vectors {e.shape}")
    variants, facts = control_variants(b, e, seeds=args.seeds, scales=args.lambda_scales)
    model = back.model
    mask = None if args.no_content else content_mask(model.tokenizer, int(model.lm_head.shape[0]))
    scores = score_variants(variants, {"backbone": b, "embedder": e}, texts, model, k=args.k, mask=mask)
    _write_csv(out / "controls.csv", scores, args.k)
    report = {"command": "controls", "backbone": back.describe(), "embedder": emb.describe(),
              "rows": len(ids), "k": args.k, "stop_words": None if mask is None else STOP_WORDS_SOURCE,
              **facts, "variants": scores}
    write_json(out / "controls.json", report)
    return report


def _write_csv(path, scores: dict, k: int) -> None:
    names = [m.format(k=k) for m in METRICS]
    views = [v for v in ("official", "content") if any(v in r for r in scores.values())]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["variant", "what", "step_norm", *[f"{v} {n}" for v in views for n in names]])
        for name, r in scores.items():
            w.writerow([name, r["what"], f"{r['step_norm']:.4f}",
                        *[f"{r[v][n]:.4f}" for v in views for n in names]])
