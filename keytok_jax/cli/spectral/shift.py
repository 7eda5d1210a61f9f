"""``spectral shift`` (fit the first-component shift, then the alignment metrics before and after)
and ``spectral align`` (the metrics of a source, optionally with a shift file)."""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

from ...analysis.alignment import evaluate_alignment
from ...analysis.components import Components
from ...analysis.report import ALIGN_HEADER, ALIGN_HEADER_AFTER, TokenDecoder, write_json
from ...analysis.shift import make_shift, shift_lambda
from ...analysis.source import Source, Spill, stream_components
from ...errors import SettingsError
from ...pipeline import Shift
from ...settings.analysis import AlignSettings, ApplyShiftSettings, ShiftSettings
from ..common import add_settings
from .flags import (add_component_flags, add_model_flags, add_run_flags, add_text_flags,
                    output_dir, plots_or_none, source)

__all__ = ["add_parsers", "run_shift", "run_align", "parse_lambda"]


def add_parsers(sub) -> None:
    s = sub.add_parser(
        "shift", help="first-component shift e + λ·v1: aligned tokens and metrics before/after",
        description="Components from the source (or --components), λ (--lambda), the shift "
                    "file shift.json (keytok_jax.pipeline.Shift, read by embed --shift), and the "
                    "alignment metrics and top-k tokens before and after: shift-report.json, "
                    "shift.csv (one row per text), shift-example*.png. Texts are embedded once "
                    "(spilled to a temporary file in --output between the two passes).")
    add_text_flags(s)
    add_model_flags(s)
    add_run_flags(s)
    add_component_flags(s.add_argument_group("components"))
    add_settings(s, [ShiftSettings, AlignSettings], suppress=False)
    s.set_defaults(func=run_shift)

    a = sub.add_parser(
        "align", help="hit@k, local and global alignment (official definitions), optionally with a shift",
        description="T = tokenizer.encode(text). hit@k = any top-k token in T; local = |top-|T| ∩ T| "
                    "/ |T| (mean over texts); global = |∪ matched| / |∪ T|. Empty texts are skipped "
                    "and counted. Writes align.json and align.csv (one row per text).")
    add_text_flags(a)
    add_model_flags(a)
    add_run_flags(a)
    add_settings(a, [ApplyShiftSettings, AlignSettings], suppress=False)
    a.set_defaults(func=run_align)


def parse_lambda(value: str) -> tuple[Any, dict | None, str]:
    """--lambda → (how, variation report, kind) for :func:`shift_lambda`."""
    try:
        return float(value), None, "given"
    except ValueError:
        pass
    if value == "remove":
        return "remove", None, "remove"
    p = Path(value)
    if p.exists():
        data = json.loads(p.read_text())
        if "lambda" not in data:
            raise SettingsError(f"{p} has no 'lambda' (expected a variation.json)")
        return "variation", data, "variation"
    raise SettingsError(f"--lambda must be a number, 'remove' or a variation.json, got {value!r}")


def _align(batches, model, args, path: Path, shift: Shift | None) -> dict:
    """The alignment metrics (before, and after ``shift``) with one CSV row per text at ``path``."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(ALIGN_HEADER + (ALIGN_HEADER_AFTER if shift is not None else []))
        return evaluate_alignment(batches, model, k=args.k, depth=args.depth,
                                  shift_vec=None if shift is None else shift.lam * shift.direction,
                                  examples=args.examples, rows_csv=w,
                                  decoder=TokenDecoder(model.tokenizer))


def _plot_examples(out: Path, stem: str, res: dict, args, title: str) -> None:
    if (plots := plots_or_none(args.no_plots)) and res["examples"] and "after" in res:
        for i, ex in enumerate(res["examples"][: args.plot_examples]):
            plots.plot_before_after(ex["top_before"], ex["logits_before"], ex["top_after"],
                                    ex["logits_after"], out / f"{stem}-example{i + 1}.png",
                                    title=f"{title}: {ex['text'][:60]}")


def run_align(args: argparse.Namespace) -> dict:
    src = source(args)      # settings and paths checked before --output is created
    shift = Shift.load(args.shift) if args.shift else None
    out = output_dir(args)
    model = src.model
    t0 = time.perf_counter()
    res = _align(src.batches(with_texts=True), model, args, out / "align.csv", shift)
    report = {"command": "align", "source": src.describe(), "k": args.k, "depth": args.depth,
              "shift": args.shift, "lambda": None if shift is None else shift.lam,
              "seconds": time.perf_counter() - t0, **res}
    _plot_examples(out, "align", res, args, "top-k before/after")
    write_json(out / "align.json", report)
    return report


def _components(src: Source, args, out: Path, spill: Spill | None):
    """The components (``--components``, or one pass over the source, saved) and the batches of
    the second pass (the spill's replay for texts embedded on the fly)."""
    if args.components:
        return Components.load(args.components), src.batches(with_texts=True)
    acc = stream_components(src, args.precision, keep=spill)
    comp = acc.components(args.centered, method=args.method)
    comp.save(out / f"components-{'centered' if args.centered else 'uncentered'}.npz")
    return comp, spill.replay() if spill is not None else src.batches(with_texts=True)


def run_shift(args: argparse.Namespace) -> dict:
    src = source(args)      # settings and paths checked before --output is created
    out = output_dir(args)
    t0 = time.perf_counter()
    spill = Spill(src.dim, out) if not args.components and src.store is None else None
    try:
        comp, batches = _components(src, args, out, spill)
        t_comp = time.perf_counter() - t0
        how, var_report, lam_kind = parse_lambda(args.lam)
        lam = shift_lambda(comp, how, var_report, scale=args.lambda_scale)
        model = src.model
        shift = make_shift(comp, lam, model)
        shift.save(out / "shift.json")
        res = _align(batches, model, args, out / "shift.csv", shift)
    finally:
        if spill is not None:
            spill.close()
    report = {"command": "shift", "source": src.describe(), "k": args.k, "depth": args.depth,
              "centered": comp.centered, "lambda": lam, "lambda_from": lam_kind,
              "lambda_scale": args.lambda_scale,
              "first_coefficient_mean": float(comp.mean @ comp.first),
              "first_explained": float(comp.explained[0]), "model_hash": shift.model_hash,
              "shift_file": str(out / "shift.json"), "seconds_components": t_comp,
              "seconds": time.perf_counter() - t0, **res}
    _plot_examples(out, "shift", res, args, f"λ={lam:.3g}")
    write_json(out / "shift-report.json", report)
    return report
