"""``spectral contribution``: the logits of a text's top tokens from its first-component part and
from the residual (official ``subvec_decode_contribution``)."""
from __future__ import annotations

import argparse

import numpy as np

from ...analysis.components import Components
from ...analysis.report import TokenDecoder, write_csv, write_json
from ...analysis.shift import contribution
from ...errors import SettingsError
from ...loading import DEFAULT_MODEL, load_model
from ...pipeline import Embedder, EmbedSettings, Shift
from ...pipeline.preflight import check_readable_file
from ...settings.analysis import ContributionSettings, RunSettings
from ..common import add_settings
from .flags import add_model_flags, output_dir, plots_or_none, role_embedding

__all__ = ["add_parser", "run"]

HEADER = ["text", "rank", "token_id", "token", "total", "first_component", "residual"]


def add_parser(sub) -> argparse.ArgumentParser:
    t = sub.add_parser(
        "contribution", help="logits of a text's top tokens from its first-component part and the residual",
        description="e1 = (e·v1) v1, r = e - e1; for the top-k tokens of e: logits of e, e1, r. "
                    "Writes contribution.{json,csv} and contribution-N.png.")
    t.add_argument("--text", action="append", help="a text to analyse (repeatable)")
    add_settings(t, [ContributionSettings, RunSettings], skip=("batch_rows", "batch_tokens", "store_texts"),
                 suppress=False)
    add_model_flags(t, store=False)
    t.set_defaults(func=run)
    return t


def _direction(path: str) -> np.ndarray:
    """The first direction of a components ``.npz``, or a shift file's direction."""
    if path.endswith(".npz"):
        return Components.load(path).first
    return Shift.load(path).direction


def run(args: argparse.Namespace) -> dict:
    if not args.text:
        raise SettingsError("--text: give at least one")
    check_readable_file("--direction", args.direction)   # paths before the model and --output
    model_name, settings = role_embedding(args)
    out = output_dir(args)
    model_name = model_name or DEFAULT_MODEL
    model = load_model(model_name, dtype=args.dtype)
    dense = Embedder(model, EmbedSettings(**settings)).encode(args.text)
    v = _direction(args.direction)
    decoder = TokenDecoder(model.tokenizer)
    report = {"command": "contribution", "model": model_name, **settings,
              "direction": args.direction, "texts": []}
    rows = []
    for i, (text, e) in enumerate(zip(args.text, dense)):
        c = contribution(e, v, model.lm_head, args.k)
        toks = decoder.many(c["ids"])
        rows += [[text, r + 1, int(tid), tk, f"{c['total'][r]:.4f}", f"{c['first'][r]:.4f}",
                  f"{c['residual'][r]:.4f}"] for r, (tid, tk) in enumerate(zip(c["ids"], toks))]
        report["texts"].append({"text": text, "coefficient": c["coefficient"], "tokens": toks,
                                "total": c["total"], "first": c["first"], "residual": c["residual"]})
        if plots := plots_or_none(args.no_plots):
            plots.plot_contribution(toks, c["total"], c["first"], c["residual"],
                                    out / f"contribution-{i + 1}.png", title=text[:80])
    write_csv(out / "contribution.csv", HEADER, rows)
    write_json(out / "contribution.json", report)
    return report
