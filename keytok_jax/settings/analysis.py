"""Settings of the analyses (``python -m keytok_jax.spectral`` and ``sts``): how texts are read and
embedded on the fly, the components, the alignment metrics and the shift, with every default.

Texts embedded on the fly start from :data:`ANALYSIS_PRESET`, the raw backbone with SGPT's
position-weighted mean (the pooling of the paper's GPT-Neo / SGPT spectral analysis), not from the
embed job's PromptEOL preset. An embed preset (``--config``) may be given: any key the embed job
knows is accepted (others are refused, as the embed job refuses them), and those that do not change
the pooled vector are ignored (the analyses need raw pooled vectors).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from .core import defaults, read_preset, setting
from .embed import INPUT_FORMATS, JOB_GROUPS, JOB_PRESET, EmbedSettings, InputSettings

__all__ = ["PRECISIONS", "TEXT_FORMATS", "ANALYSIS_PRESET", "EMBED_FLAGS", "TextSettings", "ControlSettings",
           "RunSettings", "ComponentSettings", "ReportSettings", "AlignSettings", "ShiftSettings",
           "ApplyShiftSettings", "VariationSettings", "ContributionSettings", "analysis_embedding",
           "sts_embedding"]

PRECISIONS = ("float32", "float64")
TEXT_FORMATS = INPUT_FORMATS + ("sts", "stsb")

# Embedding settings when texts are embedded on the fly (see the module docstring).
ANALYSIS_PRESET = {"pooling": "weighted_mean", "prompt": "none"}
# The embedding flags of each role (--pooling, --backbone-pooling, ...).
EMBED_FLAGS = ("pooling", "prompt", "instruction", "instruction_format", "attention", "max_length")
# Embed-preset keys that do not change the pooled vector (the sparse side, the dense vector's
# post-processing) or that a flag of the analysis sets instead (dtype: --dtype).
IGNORED_PRESET_KEYS = ("top_k", "weighting", "normalize", "matryoshka_dim", "dtype", "correction",
                       "doc_tokens")
_EMBED_JOB_KEYS = {**defaults(*(c for _, classes in JOB_GROUPS for c in classes)), **JOB_PRESET}
_EMBED_FIELDS = {f.name for f in dataclasses.fields(EmbedSettings)}


def analysis_embedding(flags: Mapping[str, Any], config=None) -> tuple[str | None, dict]:
    """``(model, settings)`` of one role: :data:`ANALYSIS_PRESET`, then the ``config`` embed
    preset, then ``flags`` (those not None). Only the keys set somewhere are in ``settings``, so
    reports show what was chosen; ``model`` is None when neither names one (the store's, else
    the default model)."""
    settings = dict(ANALYSIS_PRESET)
    model = None
    if config:
        preset = read_preset(config, _EMBED_JOB_KEYS)
        model = preset.get("model")
        settings.update({k: v for k, v in preset.items()
                         if k in _EMBED_FIELDS and k not in IGNORED_PRESET_KEYS})
    settings.update({k: v for k, v in flags.items() if k in EMBED_FLAGS and v is not None})
    return flags.get("model") or model, settings


def sts_embedding(flags: Mapping[str, Any], config=None) -> tuple[str, dict]:
    """``(model, settings)`` of ``python -m keytok_jax.sts``: the embed job's preset (PromptEOL
    last token), then the ``config`` embed preset (or a fine-tuned model's ``keytok.yaml``), then
    ``flags`` (those not None). ``settings`` holds the :class:`EmbedSettings` keys set somewhere,
    less the sparse side's correction and tokens (STS scores dense vectors, which they do not
    change)."""
    opts = dict(JOB_PRESET)
    if config:
        opts.update(read_preset(config, _EMBED_JOB_KEYS))
    opts.update({k: v for k, v in flags.items() if v is not None})
    return opts["model"], {k: v for k, v in opts.items() if k in _EMBED_FIELDS
                          and k not in ("correction", "doc_tokens")}


# Corpus fields read as the embed job reads them.
_CORPUS = defaults(InputSettings)


@dataclass(frozen=True)
class TextSettings:
    texts: str | None = setting(None, "texts to embed: .txt (one per line), .jsonl/.tsv/.parquet/"
                                "BEIR folder (as the embed job), a SentEval STS.input.* file "
                                "(format sts) or an STS-B sts-*.csv (stsb)")
    format: str = setting("auto", "format of --texts; auto: from the path (STS.input.* → sts, "
                          "sts-*.csv → stsb)", choices=TEXT_FORMATS)
    min_score: float | None = setting(None, "sts/stsb: keep pairs with gold score > this (the "
                                      "paper uses 4)", type=float)
    gold: str | None = setting(None, "sts: gold score file (default: the STS.gs.* beside the input)")
    no_sts_cleanup: bool = setting(False, "sts: keep ' .' and ' ?' (the official loader removes "
                                   "them)")
    id_field: str = setting(_CORPUS["id_field"], "jsonl/parquet id field")
    text_fields: tuple = setting(_CORPUS["text_fields"], "jsonl/parquet fields joined into the text",
                                 nargs="+")
    limit: int | None = setting(None, "use only the first N texts / store rows")


@dataclass(frozen=True)
class RunSettings:
    output: str | None = setting(None, "output directory (created)", required=True)
    dtype: str = setting("float32", "model parameter dtype when embedding texts",
                         choices=("float32", "bfloat16"))
    batch_rows: int = setting(512, "texts (or store rows) per batch; bounds memory")
    batch_tokens: int | None = setting(None, "padded tokens per device batch when embedding "
                                       "(default: 8192 on GPU/TPU, 1024 on CPU)")
    store_texts: str | None = setting(None, "texts of a store, when its recorded input moved "
                                      "(same order)")
    no_plots: bool = setting(False, "write no PNG plots")


@dataclass(frozen=True)
class ComponentSettings:
    precision: str = setting("float32", "accumulation and eigh precision", choices=PRECISIONS)
    centered: bool = setting(False, "use the centered components (default: uncentered, as the "
                             "paper's code)")
    method: str = setting("eigh", "eigh (all directions) or power iteration (first only; large D)",
                          choices=("eigh", "power"))


@dataclass(frozen=True)
class ReportSettings:
    report_components: int = setting(10, "components listed with their top tokens in the JSON/CSV")


@dataclass(frozen=True)
class AlignSettings:
    k: int = setting(10, "top-k tokens for hit@k and the official local depth")
    depth: str = setting("k", "local/global alignment over the top min(len(L), k) tokens (k: "
                         "official code) or the top len(L) tokens (T)", choices=("k", "T"))
    examples: int = setting(3, "texts listed with their tokens in the JSON")
    plot_examples: int = setting(3, "before/after bar plots to draw")


@dataclass(frozen=True)
class ShiftSettings:
    components: str | None = setting(None, "components .npz from `components` (skips the first "
                                     "pass)")
    lam: str = setting("remove", "λ: a number, 'remove' (= -mean first coefficient: the mean "
                       "embedding loses its v1 part) or a variation.json (its first component, "
                       "the official 'v1')", flag="--lambda")
    lambda_scale: float = setting(1.0, "multiply λ by this (e.g. 0.5 with 'remove' halves the "
                                  "mean first coefficient; on SmolLM2 that aligns better than "
                                  "full removal)")


@dataclass(frozen=True)
class ApplyShiftSettings:
    shift: str | None = setting(None, "shift file (from `shift` or `variation --shift-out`): "
                                "metrics before and after")


@dataclass(frozen=True)
class VariationSettings:
    shift_out: str | None = setting(None, "write Shift(v1, λ=diff_1, model hash) here (for embed "
                                    "--shift)")


@dataclass(frozen=True)
class ControlSettings:
    k: int = setting(10, "top-k tokens for hit@k and the official local depth")
    seeds: int = setting(3, "random unit directions tried as a control")
    lambda_scales: tuple = setting((0.25, 0.5, 1.5, 2.0), "multiples of λ swept along v1",
                                   nargs="+", type=float)
    no_content: bool = setting(False, "skip the content-token metrics (stop words and punctuation "
                                      "out of both the ranked tokens and the text's tokens)")


@dataclass(frozen=True)
class ContributionSettings:
    direction: str | None = setting(None, "components .npz (its first direction) or a shift.json",
                                    required=True)
    k: int = setting(10, "top tokens shown")
