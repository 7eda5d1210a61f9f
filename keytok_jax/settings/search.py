"""Settings of retrieval: how queries become vectors and lists are fused (shared by ``search``,
``evaluate`` and :class:`keytok_jax.retrieval.Searcher`), and each retrieval command's own flags,
with every default written once."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from ..errors import SettingsError
from .core import setting

__all__ = ["QUERY_PROMPT", "MODES", "SPARSE_MODES", "ALL_MODES", "QUERY_WEIGHTS", "FUSIONS", "RRF_K",
           "SEARCH_FORMATS", "QuerySettings", "SearchSettings", "EvaluateSettings",
           "ExportSettings", "check_factor"]

MODES = ("tokens", "encode", "expand", "union", "dense", "hybrid", "bm25", "bm25-hybrid")
SPARSE_MODES = ("tokens", "encode", "expand", "union")   # the modes that make a sparse query vector
ALL_MODES = ("bm25",) + tuple(m for m in MODES if m != "bm25")   # evaluate: BM25 first
QUERY_WEIGHTS = ("idf", "binary")
FUSIONS = ("rrf", "weighted")
RRF_K = 60
# The prompt a sentence-transformers folder's queries take by default (its ``encode_query``).
QUERY_PROMPT = "query"
SEARCH_FORMATS = ("text", "jsonl", "trec")


@dataclass(frozen=True)
class QuerySettings:
    """How a query is turned into vectors and how ``hybrid`` fuses its two lists."""
    query_weights: str = setting("idf", "tokens/expand: weight of a query token",
                                 choices=QUERY_WEIGHTS)
    expand_m: int = setting(16, "expand: aligned tokens added")
    union_m: int = setting(16, "union (the paper's query form): the query's top-M aligned tokens "
                           "joined to its own tokens, all weighted 1; 0: its own tokens only")
    hybrid_sparse: str = setting("expand", "hybrid: the sparse side", choices=SPARSE_MODES)
    fusion: str = setting("weighted", "hybrid, bm25-hybrid: weighted (min-max normalised scores) or rrf "
                          f"(reciprocal rank, k={RRF_K})", choices=FUSIONS)
    alpha: float = setting(0.3, "weighted fusion: weight of the sparse side")
    depth: int = setting(100, "hybrid, bm25-hybrid: results taken from each list before fusing",
                         flag="")
    bm25_with: str = setting("dense", "bm25-hybrid: the keytok list fused with BM25's",
                             choices=SPARSE_MODES + ("dense",))
    bm25_alpha: float = setting(0.9, "bm25-hybrid, weighted fusion: weight of the BM25 side "
                                "(0.9: the best of 0.5-0.9 on SciFact, README Sparse quality)")
    shift: str | None = setting(None, "the shift file the store was embedded with, if any")
    query_instruction: str | None = setting(None, "instruction for queries (asymmetric models)")

    def __post_init__(self):
        if self.query_weights not in QUERY_WEIGHTS:
            raise SettingsError(f"query_weights must be one of {QUERY_WEIGHTS}, "
                                f"got {self.query_weights!r}")
        if self.hybrid_sparse not in SPARSE_MODES:
            raise SettingsError(f"hybrid_sparse must be one of {SPARSE_MODES}, "
                                f"got {self.hybrid_sparse!r}")
        if self.bm25_with not in SPARSE_MODES + ("dense",):
            raise SettingsError(f"bm25_with must be one of {SPARSE_MODES + ('dense',)}, "
                                f"got {self.bm25_with!r}")
        if self.union_m < 0:
            raise SettingsError(f"union_m must be 0 or more, got {self.union_m}")
        if self.fusion not in FUSIONS:
            raise SettingsError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")


@dataclass(frozen=True)
class SearchSettings:
    """``python -m keytok_jax.search`` besides :class:`QuerySettings` (``--query`` is repeatable
    and added by the command)."""
    store: str | None = setting(None, "store written by python -m keytok_jax.embed", required=True)
    queries: str | None = setting(None, "file of queries: BEIR queries.jsonl, id<TAB>text .tsv, "
                                  "or one query per line")
    mode: str = setting("tokens", "query mode (tokens: inference-free, needs only the tokenizer)",
                        choices=MODES)
    k: int = setting(10, "results per query", short="-k")
    format: str = setting("text", "text: ranked lists with matched tokens; jsonl: one object per "
                          "query; trec: a TREC run file (qid Q0 doc rank score tag)",
                          choices=SEARCH_FORMATS)
    output: str | None = setting(None, "write results here instead of standard output")
    show_tokens: int = setting(6, "text format: matched (or, for dense, the document's top) "
                               "tokens shown per hit")
    index: str | None = setting(None, "sparse index directory (default STORE/index/sparse; built "
                                "on first use and rebuilt when the store changes)")
    rebuild: bool = setting(False, "rebuild the sparse index")


@dataclass(frozen=True)
class EvaluateSettings:
    """``python -m keytok_jax.evaluate`` besides :class:`QuerySettings` (``--mode`` is repeatable
    and added by the command)."""
    store: str | None = setting(None, "store written by python -m keytok_jax.embed (with --dense "
                                "for the dense and hybrid modes)", required=True)
    dataset: str | None = setting(None, "BEIR folder (corpus.jsonl, queries.jsonl, qrels/)",
                                  required=True)
    split: str = setting("test", "qrels split (qrels/SPLIT.tsv)")
    k: int = setting(100, "results retrieved per query (Recall@100 needs 100)")
    warmup: int = setting(8, "queries searched once before timing (model load, compilation)",
                          flag="")
    output: str | None = setting(None, "write the report as JSON here")
    markdown: str | None = setting(None, "also write the table as markdown here")


@dataclass(frozen=True)
class ExportSettings:
    """``python -m keytok_jax.export``."""
    store: str | None = setting(None, "store written by python -m keytok_jax.embed", required=True)
    output: str | None = setting(None, "documents file (.jsonl, or .jsonl.gz compressed)",
                                 required=True)
    factor: float = setting(100.0, "quantization: impact = round(weight * factor); a positive "
                            "finite number (0, negative, nan or inf are refused, and so is a "
                            "factor at which every weight rounds to 0)")
    queries: str | None = setting(None, "also export these queries (BEIR queries.jsonl, .tsv or "
                                  "one per line)")
    queries_output: str | None = setting(None, "where the query vectors go (default OUTPUT's "
                                         "folder/queries.jsonl)")
    query_mode: str = setting("tokens", "how query vectors are made (see python -m "
                              "keytok_jax.search --help)", choices=SPARSE_MODES)

    def __post_init__(self):
        check_factor(self.factor)
        if self.query_mode not in SPARSE_MODES:
            raise SettingsError(f"--query-mode: must be one of {', '.join(SPARSE_MODES)}, "
                                f"got {self.query_mode!r}")


def check_factor(factor) -> None:
    """An export's quantization factor is a positive finite number: 0, a negative, NaN or an
    infinite factor would write every vector empty (or meaningless)."""
    if (isinstance(factor, bool) or not isinstance(factor, numbers.Real)
            or not math.isfinite(factor) or factor <= 0):
        raise SettingsError(f"--factor: must be a positive finite number (impact = "
                            f"round(weight * factor)), got {factor!r}")
