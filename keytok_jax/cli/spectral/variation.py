"""``spectral variation``: coefficients of backbone vs embedder embeddings of the same texts on
the backbone's principal directions (the paper's variation; λ = diff_1 is the official shift)."""
from __future__ import annotations

import argparse
import hashlib
import json

import numpy as np

from ...analysis.moments import StreamingMoments
from ...analysis.report import (VARIATION_HEADER, TokenDecoder, direction_tokens,
                                variation_table, write_csv, write_json)
from ...analysis.shift import make_shift, variation
from ...analysis.source import Source
from ...errors import CorpusError, SettingsError
from ...loading import DEFAULT_MODEL
from ...settings.analysis import ReportSettings, VariationSettings
from ..common import add_settings
from .flags import (LIBRARY, add_component_flags, add_model_flags, add_run_flags, add_text_flags,
                    output_dir, plots_or_none, source)

__all__ = ["add_parser", "run"]


def add_parser(sub) -> argparse.ArgumentParser:
    v = sub.add_parser(
        "variation", help="coefficients of backbone vs embedder embeddings on the backbone's components",
        description="For the same texts: the backbone's principal directions V; "
                    "diff_i = mean(embedder @ V - backbone @ V)_i; share_i = diff_i² / Σ diff². "
                    "λ = diff_1 is the official 'v1' shift. Writes variation.{json,csv,png} and "
                    "with --shift-out the shift file for the backbone.")
    add_text_flags(v)
    both = v.add_argument_group("both roles (a role's own flag wins)")
    both.add_argument("--model", help=f"model of both the backbone and the embedder (default: {DEFAULT_MODEL})")
    both.add_argument("--max-length", type=int,
                      help=f"max tokens per text for both (default: {LIBRARY['max_length']})")
    add_model_flags(v, "backbone-", "backbone")
    add_model_flags(v, "embedder-", "embedder")
    add_run_flags(v)
    add_component_flags(v, method=False)
    add_settings(v, [VariationSettings, ReportSettings], suppress=False)
    v.set_defaults(func=run)
    return v


def _moments(src: Source, precision: str) -> tuple[StreamingMoments, bytes]:
    """The streaming moments of ``src`` and a digest of the ids it gave, id by id (a store cuts
    its batches at shard edges, texts embedded on the fly at ``batch_rows``: the digest must not
    depend on where batches end)."""
    acc = StreamingMoments(src.dim, precision)
    ids = hashlib.sha256()
    for batch in src.batches():
        acc.update(batch.dense)
        for doc_id in batch.ids:
            ids.update(json.dumps(doc_id).encode() + b"\n")
    return acc, ids.digest()


def run(args: argparse.Namespace) -> dict:
    back = source(args, "backbone-")    # settings and paths checked before --output is created
    emb = source(args, "embedder-")
    out = output_dir(args)
    emb.share_model(back)
    if back.dim != emb.dim:
        raise SettingsError(f"backbone dim {back.dim} != embedder dim {emb.dim}")
    acc_b, ids_b = _moments(back, args.precision)
    acc_e, ids_e = _moments(emb, args.precision)
    if acc_b.count != acc_e.count or ids_b != ids_e:
        raise CorpusError("the backbone and the embedder saw different texts "
                          f"({acc_b.count} vs {acc_e.count} rows, or different ids)")
    comp = acc_b.components(args.centered, method="eigh")
    comp.save(out / "components-backbone.npz")
    var = variation(comp, acc_e.mean)
    model = back.model
    dirs = direction_tokens(comp, model.lm_head, TokenDecoder(model.tokenizer), args.report_components)
    entries, rows = variation_table(var, dirs)
    report = {"command": "variation", "backbone": back.describe(), "embedder": emb.describe(),
              "rows": acc_b.count, "centered": args.centered, "precision": args.precision,
              "lambda": var["lambda"], "mean_diff_norm": var["mean_diff_norm"],
              "first_share": float(var["share"][0]), "components": entries}
    write_csv(out / "variation.csv", VARIATION_HEADER, rows)
    np.save(out / "variation-diff.npy", var["diff"])
    if args.shift_out:
        make_shift(comp, var["lambda"], model).save(args.shift_out)
        report["shift_file"] = args.shift_out
    if plots := plots_or_none(args.no_plots):
        plots.plot_variation(var["diff"], out / "variation.png",
                             title=f"variation per component ({acc_b.count} texts)")
    write_json(out / "variation.json", report)
    return report
