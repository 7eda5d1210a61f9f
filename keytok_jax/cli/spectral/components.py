"""``spectral components``: streaming principal components (uncentered and centered)."""
from __future__ import annotations

import argparse
import time

from ...analysis.moments import StreamingMoments
from ...analysis.report import (COMPONENT_HEADER, TokenDecoder, components_table, peak_rss_mb,
                                write_csv, write_json)
from ...analysis.source import stream_components
from ...settings.analysis import ReportSettings
from ..common import add_settings
from .flags import (add_component_flags, add_model_flags, add_run_flags, add_text_flags,
                    output_dir, plots_or_none, source)

__all__ = ["add_parser", "run"]


def add_parser(sub) -> argparse.ArgumentParser:
    c = sub.add_parser(
        "components", help="streaming principal components (uncentered and centered) of the embeddings",
        description="One pass: accumulate count, mean and scatter (XᵀX) over batches, then "
                    "eigh (or power iteration). Writes components-{uncentered,centered}.npz "
                    "(keytok_jax.spectral.Components.load), .csv (eigenvalues, shares, top tokens "
                    "of ±v_i), .png and components.json (time, peak RSS).")
    add_text_flags(c)
    add_model_flags(c)
    add_run_flags(c)
    add_component_flags(c.add_argument_group("components"), centered=False)
    add_settings(c, [ReportSettings], suppress=False)
    c.set_defaults(func=run)
    return c


def _write_variant(acc: StreamingMoments, centered: bool, args, out, model, decoder) -> dict:
    """Diagonalise, save the ``.npz``, the CSV table and the plot of one variant; its summary."""
    t1 = time.perf_counter()
    comp = acc.components(centered, method=args.method)
    name = "centered" if centered else "uncentered"
    comp.save(out / f"components-{name}.npz")
    summary, rows = components_table(comp, model, decoder, args.report_components)
    summary["seconds_diagonalise"] = time.perf_counter() - t1
    write_csv(out / f"components-{name}.csv", COMPONENT_HEADER, rows)
    if plots := plots_or_none(args.no_plots):
        plots.plot_explained(comp.explained, out / f"components-{name}.png",
                             title=f"{name} components ({acc.count} texts)")
    return summary


def run(args: argparse.Namespace) -> dict:
    src = source(args)      # settings and paths checked before --output is created
    out = output_dir(args)
    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    acc = stream_components(src, args.precision)
    t_stream = time.perf_counter() - t0
    rss_stream = peak_rss_mb()      # a store source has not loaded the model yet
    model = src.model
    decoder = TokenDecoder(model.tokenizer)
    report = {"command": "components", "source": src.describe(), "rows": acc.count,
              "precision": args.precision, "seconds_total": t_stream,
              "seconds_accumulate": acc.seconds, "accumulator_bytes": acc.nbytes,
              "peak_rss_mb_streaming": rss_stream}
    for centered in (False, True):
        report["centered" if centered else "uncentered"] = _write_variant(acc, centered, args, out,
                                                                          model, decoder)
    report["peak_rss_mb"] = peak_rss_mb()
    report["peak_rss_mb_at_start"] = rss0
    write_json(out / "components.json", report)
    return report
