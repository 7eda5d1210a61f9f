"""What the spectral subcommands share: their flag groups (generated from
:mod:`keytok_jax.settings.analysis` where the flag has no role prefix), the embedding source each
role's flags describe, the output folder and the optional plots."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ...analysis import plots
from ...analysis.source import Source
from ...errors import PathError, SettingsError
from ...loading import DEFAULT_MODEL
from ...model import ATTENTION_MODES
from ...pipeline.preflight import check_output_dir
from ...pooling import POOLING_METHODS
from ...settings.analysis import (ANALYSIS_PRESET, EMBED_FLAGS, ComponentSettings, RunSettings,
                                  TextSettings, analysis_embedding)
from ...settings.core import defaults
from ...settings.embed import EmbedSettings
from ..common import add_settings

__all__ = ["LIBRARY", "add_text_flags", "add_model_flags", "add_run_flags", "add_component_flags",
           "role_embedding", "source", "output_dir", "plots_or_none"]

# The library's embedding defaults, shown where neither the analysis preset nor --config sets one.
LIBRARY = defaults(EmbedSettings)


def add_text_flags(p: argparse.ArgumentParser) -> None:
    add_settings(p.add_argument_group("texts"), [TextSettings], suppress=False)


def add_run_flags(p: argparse.ArgumentParser) -> None:
    add_settings(p.add_argument_group("run"), [RunSettings], suppress=False)


def add_component_flags(p, centered: bool = True, method: bool = True) -> None:
    """``p``: a parser (flags among its options) or an argument group."""
    skip = [name for name, keep in (("centered", centered), ("method", method)) if not keep]
    add_settings(p, [ComponentSettings], skip=skip, suppress=False)


def add_model_flags(p: argparse.ArgumentParser, prefix: str = "", role: str = "",
                    store: bool = True) -> None:
    """The embedding flags of one role (``--backbone-pooling``, ...). Written out rather than
    generated: each carries the role's prefix and says its default comes from ``--config``."""
    dash = f"--{prefix}" if prefix else "--"
    what = f" of the {role}" if role else ""
    g = p.add_argument_group(f"{role or 'model'} embeddings")
    if store:
        g.add_argument(f"{dash}store", help=f"store{what} written by python -m keytok_jax.embed --dense "
                                            "(instead of embedding --texts)")
    g.add_argument(f"{dash}model", help=f"model{what}: alias, HF folder, .gguf or hub id "
                                        f"(default: {DEFAULT_MODEL}, or the store's)")
    g.add_argument(f"{dash}config", help=f"embed preset YAML{what} (configs/*.yaml: pooling, prompt, ...)")
    g.add_argument(f"{dash}pooling", choices=list(POOLING_METHODS),
                   help=f"pooling{what} (default: {ANALYSIS_PRESET['pooling']}, or the preset's)")
    g.add_argument(f"{dash}prompt", help=f"prompt template with {{text}} or none/prompteol{what} "
                                         f"(default: {ANALYSIS_PRESET['prompt']}, or the preset's)")
    g.add_argument(f"{dash}instruction", help=f"instruction{what}")
    g.add_argument(f"{dash}instruction-format", help=f"instruction format{what} (e5-mistral, gritlm, "
                                                     "llm2vec, plain or a template)")
    g.add_argument(f"{dash}attention", choices=list(ATTENTION_MODES),
                   help=f"attention{what} (default: {LIBRARY['attention']})")
    g.add_argument(f"{dash}max-length", type=int,
                   help=f"max tokens per text{what} (default: {LIBRARY['max_length']}, or the preset's)")


def role_embedding(args: argparse.Namespace, prefix: str = "") -> tuple[str | None, dict]:
    """``(model, embedding settings)`` of one role. With a prefix (variation), ``--model`` and
    ``--max-length`` apply to both roles unless the role's own flag is given."""
    a = vars(args)
    own = prefix.replace("-", "_")
    flags = {name: a.get(own + name) for name in ("model", *EMBED_FLAGS)}
    if prefix:
        flags = {name: a.get(name) if value is None else value for name, value in flags.items()}
    return analysis_embedding(flags, a.get(own + "config"))


def source(args: argparse.Namespace, prefix: str = "") -> Source:
    """The store (``--[prefix]store``) or texts (``--texts``) one role analyses."""
    store = vars(args).get(prefix.replace("-", "_") + "store")
    model, settings = role_embedding(args, prefix)
    common = {"limit": args.limit, "batch_rows": args.batch_rows, "dtype": args.dtype,
              "text_format": args.format, "min_score": args.min_score, "gold": args.gold,
              "sts_cleanup": not args.no_sts_cleanup, "id_field": args.id_field,
              "text_fields": args.text_fields}
    if store:
        return Source(store=store, model=model, texts_for_store=args.store_texts or args.texts, **common)
    if not args.texts:
        raise SettingsError(f"--texts: give --texts or --{prefix}store")
    if not Path(args.texts).exists():
        raise PathError(f"--texts {args.texts}: no such file or directory")
    return Source(texts=args.texts, model=model, settings=settings,
                  batch_tokens=args.batch_tokens, **common)


def output_dir(args: argparse.Namespace) -> Path:
    """``--output``, created once it is known to be a directory that can be made and written."""
    check_output_dir("--output", args.output)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    return out


def plots_or_none(no_plots: bool):
    """The plots module, or None with ``--no-plots`` or (with a warning) without matplotlib."""
    if no_plots:
        return None
    try:
        plots.pyplot()
    except ImportError as e:
        print(f"warning: no plots ({e}); pip install matplotlib", file=sys.stderr)
        return None
    return plots
