"""Query modes over a store's sparse and dense indexes.

``tokens``  inference-free: the query's own token ids from the tokenizer, in both forms a word
            takes (the text tokenized with a leading space, as mid-sentence words are, and each
            word alone, as after a prompt's opening quote), tokens without a letter or digit left
            out, each weighted by the IDF of the document index (``query_weights="binary"``: 1).
            No model.
``encode``  the query through the store's model and settings → its top-k aligned tokens (also
            for a store of literal document tokens: a query's own words are ``tokens``).
``expand``  ``tokens`` plus the query's top-M aligned tokens, the aligned weights rescaled so their
            largest equals the largest token weight.
``union``   the paper's query form: the query's own tokens (as ``tokens``) ∪ its top-M aligned
            tokens (``union_m``), every one weighted 1, so a document scores the sum of its
            weights over that set.
``dense``   cosine between the query's and the documents' dense vectors.
``hybrid``  fusion (:mod:`keytok_jax.retrieval.fusion`) of a sparse mode (``hybrid_sparse``) and
            ``dense``, each list cut at ``depth``.
``bm25``    BM25 over the store's documents (:mod:`keytok_jax.retrieval.bm25`; reads the corpus).
``bm25-hybrid``  fusion of ``bm25`` with a keytok mode (``bm25_with``), each list cut at ``depth``.

Results are ``[(doc_id, score), ...]`` per query, best first; equal scores go to the lower store row.
An empty or whitespace-only query has no hits in every mode, and an empty sparse vector: it is
not searched (the model would embed the bare prompt, whose dense and aligned-token matches are
confident scores that mean nothing).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..errors import SettingsError
from ..loading import load_model, load_tokenizer
from ..loading.st_folder import read_st_folder
from ..pipeline import CorrectionFit, Embedder, EmbedSettings, Shift, model_identity
from ..pipeline.fitting import FIT_ATTACHMENT
from ..pipeline.literal import LiteralTokens
from ..settings.search import MODES, QUERY_PROMPT, QuerySettings, SearchSettings
from .bm25 import BM25Index
from .dense import DenseIndex
from .fusion import fuse
from .sparse import SparseIndex, open_store

__all__ = ["MODES", "QueryResult", "Searcher", "embedder_for_store"]

_Q = QuerySettings()
_S = SearchSettings()


def embedder_for_store(store, *, model=None, shift=None, instruction: str | None = None,
                       prompt_name: str | None = None, batch_tokens: int | None = None,
                       mesh=None) -> Embedder:
    """An :class:`~keytok_jax.pipeline.Embedder` with the store's model and settings (what
    ``encode``, ``expand`` and ``dense`` queries need). ``instruction`` replaces the store's
    instruction for queries (asymmetric models such as e5-mistral instruct queries only); for a
    sentence-transformers folder, queries take its prompt ``prompt_name``, by default (no
    ``instruction`` given) its ``query`` prompt when it has one, as
    ``SentenceTransformer.encode_query`` does. A store
    embedded with a shift needs the same shift file (checked by fingerprint); a store embedded
    with a correction gives queries the same correction, with the fit it holds."""
    store = open_store(store)
    s = store.settings
    fields = {f: s[f] for f in EmbedSettings.__dataclass_fields__ if f in s}
    # Queries through the model get their aligned tokens whatever the documents hold: against
    # literal documents the query's own words are the `tokens` mode, and what the model adds
    # beyond them (encode, expand, union) is the aligned tokens.
    fields["doc_tokens"] = "aligned"
    if instruction is not None:
        fields["instruction"] = instruction
    if isinstance(shift, (str, Path)):
        shift = Shift.load(shift)
    want = s.get("shift")
    got = shift.fingerprint() if shift is not None else None
    if want != got:
        raise ValueError(f"{store.path} was embedded with shift {want!r}; queries need the same shift "
                         f"file (given: {got!r})")
    if model is None:
        model = load_model(s["model"], dtype=s.get("dtype", "float32"), lm_head=s.get("lm_head"))
    ident = s.get("model_identity")
    if ident is not None and model_identity(model) != ident:
        raise ValueError(f"{store.path} was embedded with {ident}, the loaded model is "
                         f"{model_identity(model)}")
    fields["top_k"] = min(fields.get("top_k", EmbedSettings.top_k), model.config.vocab_size)
    modules = read_st_folder(model.source) if fields.get("model_declares", "follow") == "follow" else None
    fit = store_fit(store)
    if modules is not None:
        if prompt_name is None and instruction is None and QUERY_PROMPT in modules.prompts:
            prompt_name = QUERY_PROMPT
    if prompt_name is not None:
        fields["prompt_name"] = prompt_name
    return Embedder(model, EmbedSettings(**fields), shift=shift, correction_fit=fit,
                    batch_tokens=batch_tokens, mesh=mesh)


def store_fit(store) -> CorrectionFit | None:
    """The correction fit a store was embedded with (None without a correction), checked
    against the fingerprint its settings record."""
    if store.settings.get("correction", "none") == "none":
        return None
    where = f"{store.path}/{FIT_ATTACHMENT}.json"
    data = store.attachment(FIT_ATTACHMENT)
    if data is None:
        raise SettingsError(f"{where}: missing: the store was embedded with correction "
                            f"{store.settings['correction']!r} and holds no fit")
    fit = CorrectionFit.from_json(data, where)
    if fit.fingerprint() != store.settings.get("correction_fit"):
        raise SettingsError(f"{where}: not the fit the store was embedded with (fingerprint "
                            f"{fit.fingerprint()}, recorded {store.settings.get('correction_fit')})")
    return fit


@dataclass
class QueryResult:
    hits: list[tuple[str, float]]            # (doc id, score), best first
    rows: np.ndarray                          # store rows of the hits
    vector: sp.csr_array | None = None        # the sparse query vector (sparse modes)


class Searcher:
    """Query modes over a store's indexes (see the module doc; defaults:
    :class:`keytok_jax.settings.QuerySettings`). The model is loaded only when a mode needs it
    (``encode``, ``expand``, ``dense``, ``hybrid``); ``tokens`` needs the tokenizer."""

    def __init__(self, store, *, index_dir=None, rebuild: bool = False,
                 query_weights: str = _Q.query_weights, expand_m: int = _Q.expand_m,
                 hybrid_sparse: str = _Q.hybrid_sparse, fusion: str = _Q.fusion,
                 alpha: float = _Q.alpha, depth: int = _Q.depth, shift=_Q.shift,
                 query_instruction: str | None = _Q.query_instruction,
                 union_m: int = _Q.union_m, bm25_with: str = _Q.bm25_with,
                 bm25_alpha: float = _Q.bm25_alpha, corpus=None,
                 embedder=None, tokenizer=None, mesh=None):
        # Refuses a choice outside its list before any index is built.
        QuerySettings(query_weights=query_weights, hybrid_sparse=hybrid_sparse, fusion=fusion,
                      union_m=union_m, bm25_with=bm25_with)
        self.store = open_store(store)
        t0 = time.perf_counter()
        self.sparse = SparseIndex.for_store(self.store, index_dir, rebuild=rebuild)
        self.index_seconds = time.perf_counter() - t0
        self._idf = self.sparse.idf
        self.query_weights, self.expand_m = query_weights, expand_m
        self.hybrid_sparse, self.fusion, self.alpha, self.depth = hybrid_sparse, fusion, alpha, depth
        self.union_m, self.bm25_with, self.bm25_alpha = union_m, bm25_with, bm25_alpha
        self._corpus, self._bm25 = corpus, None
        self._shift, self._instruction, self._mesh = shift, query_instruction, mesh
        self._embedder = embedder
        self._tokenizer = tokenizer if tokenizer is not None else (embedder.model.tokenizer if embedder else None)
        self._dense: DenseIndex | None = None

    # -- lazily built pieces
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.store.settings["model"])
        return self._tokenizer

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = embedder_for_store(self.store, shift=self._shift, instruction=self._instruction)
        return self._embedder

    @property
    def dense(self) -> DenseIndex:
        if self._dense is None:
            self._dense = DenseIndex.from_store(self.store, mesh=self._mesh)
        return self._dense

    @property
    def bm25(self) -> BM25Index:
        """BM25 over the store's documents, read from ``corpus`` (default: the store's input)."""
        if self._bm25 is None:
            self._bm25 = BM25Index.for_store(self.store, self._corpus)
        return self._bm25

    @cached_property
    def _literal(self) -> LiteralTokens:
        return LiteralTokens(self.tokenizer, self.sparse.vocab_size)

    def literal_tokens(self, queries: Sequence[str]) -> list[list[int]]:
        """Each query's distinct word token ids, both forms of each word
        (:mod:`keytok_jax.pipeline.literal`, the rule of ``doc_tokens="literal"`` documents)."""
        return [ids.tolist() for ids in self._literal(queries)]

    def token_vectors(self, queries: Sequence[str]) -> sp.csr_array:
        """``tokens`` mode: each query's distinct token ids, weight IDF or 1 (see the module doc)."""
        ids = self.literal_tokens(queries)
        weights = [self._idf[t] if self.query_weights == "idf" else np.ones(len(t), np.float32) for t in ids]
        return self.sparse.query_matrix(ids, weights)

    def _union(self, queries: Sequence[str], out) -> sp.csr_array:
        aligned = out.token_ids[:, : self.union_m]
        ids = [sorted(set(lit) | {int(t) for t in row if t >= 0})
               for lit, row in zip(self.literal_tokens(queries), aligned)]
        return self.sparse.query_matrix(ids, [np.ones(len(i), np.float32) for i in ids])

    def _encoded(self, queries: Sequence[str]):
        return self.embedder.encode(list(queries), output_value=None)

    def _aligned_vectors(self, out, m: int | None = None) -> sp.csr_array:
        ids, weights = out.token_ids[:, :m], out.token_weights[:, :m]
        keep = [(i >= 0) & (w != 0) for i, w in zip(ids, weights)]
        return self.sparse.query_matrix([i[c] for i, c in zip(ids, keep)], [w[c] for w, c in zip(weights, keep)])

    def _expanded(self, queries: Sequence[str], out) -> sp.csr_array:
        tok = self.token_vectors(queries)
        aligned = self._aligned_vectors(out, self.expand_m)
        tok_max = tok.max(axis=1).toarray().ravel() if tok.nnz else np.zeros(tok.shape[0])
        aligned_max = aligned.max(axis=1).toarray().ravel() if aligned.nnz else np.zeros(tok.shape[0])
        tok_max = np.where(tok_max > 0, tok_max, 1.0)    # a query with no tokens: aligned as they are
        scale = np.divide(tok_max, aligned_max, out=np.ones_like(tok_max), where=aligned_max > 0)
        return (tok + sp.diags_array(scale.astype(np.float32)) @ aligned).tocsr()

    def query_vectors(self, queries: Sequence[str], mode: str, encoded=None) -> sp.csr_array | None:
        """The sparse query vectors ``[queries, vocab]`` a mode searches with (``hybrid``: those
        of ``hybrid_sparse``, ``bm25-hybrid``: of ``bm25_with``; ``dense``, ``bm25``: None).
        ``encoded``: the queries' EmbedOutput, if at hand. An empty or whitespace-only query gets
        an empty vector."""
        mode = self._keytok_mode(mode)
        if mode in ("dense", "bm25"):
            return None
        if mode == "tokens":
            return self.token_vectors(queries)
        encoded = encoded if encoded is not None else self._encoded(queries)
        make = {"encode": lambda: self._aligned_vectors(encoded),
                "expand": lambda: self._expanded(queries, encoded),
                "union": lambda: self._union(queries, encoded)}
        vectors = make[mode]()
        blank = np.array([not q.strip() for q in queries])
        if blank.any():
            vectors = (sp.diags_array((~blank).astype(np.float32)) @ vectors).tocsr()
            vectors.eliminate_zeros()
        return vectors

    # -- search
    def search(self, queries: Sequence[str], mode: str = _S.mode, k: int = _S.k) -> list[QueryResult]:
        """Each query's hits, best first. An empty or whitespace-only query has no hits in every
        mode (it is not searched: a dense or encoded empty text would match documents with
        confident scores that mean nothing)."""
        if mode not in MODES:
            raise SettingsError(f"--mode: must be one of {', '.join(MODES)}, got {mode!r}")
        queries = [queries] if isinstance(queries, str) else list(queries)
        live = [i for i, q in enumerate(queries) if q.strip()]
        results = [self._no_hits(mode) for _ in queries]
        if live:
            found = self._search([queries[i] for i in live], mode, k)
            for i, res in zip(live, found):
                results[i] = res
        return results

    def _keytok_mode(self, mode: str) -> str:
        """The mode whose query vectors ``mode`` uses."""
        return {"hybrid": self.hybrid_sparse, "bm25-hybrid": self.bm25_with}.get(mode, mode)

    def _no_hits(self, mode: str) -> QueryResult:
        vector = None if self._keytok_mode(mode) in ("dense", "bm25") else sp.csr_array((1, self.sparse.vocab_size), dtype=np.float32)
        return QueryResult([], np.zeros(0, np.int64), vector)

    def _search(self, queries: list[str], mode: str, k: int) -> list[QueryResult]:
        # One model call gives a query's dense vector and its aligned tokens.
        needs_model = self._keytok_mode(mode) not in ("tokens", "bm25") or mode == "hybrid"
        out = self._encoded(queries) if needs_model else None
        vectors = self.query_vectors(queries, mode, out)
        hits = self._ranked(queries, mode, k, out, vectors)
        ids = self.sparse.ids
        return [QueryResult([(ids[r], float(s)) for r, s in zip(rows.tolist(), scores.tolist())], rows,
                            vectors[[i]] if vectors is not None else None)
                for i, (rows, scores) in enumerate(hits)]

    def _ranked(self, queries: list[str], mode: str, k: int, out, vectors) -> list:
        """Each query's ``(rows, scores)``, best first."""
        if mode == "bm25":
            return self.bm25.search(queries, k)
        if mode == "dense":
            return self.dense.search(out.dense, k)
        if mode == "hybrid":
            first = self._ranked(queries, self.hybrid_sparse, self.depth, out, vectors)
            second, alpha = self.dense.search(out.dense, self.depth), self.alpha
        elif mode == "bm25-hybrid":
            first = self.bm25.search(queries, self.depth)
            second = self._ranked(queries, self.bm25_with, self.depth, out, vectors)
            alpha = self.bm25_alpha
        else:
            return self.sparse.search(vectors, k)
        return [fuse(a, b, k, method=self.fusion, alpha=alpha) for a, b in zip(first, second)]

    def explain(self, result: QueryResult, rank: int) -> list[tuple[str, float, float]]:
        """The tokens (as strings) a hit shares with its query: ``(token, query_w, doc_w)``."""
        if result.vector is None:
            return []
        row = int(result.rows[rank])
        shared = self.sparse.explain(result.vector, row)
        return [(self.tokenizer.decode([t]), qw, dw) for t, qw, dw in shared]

    def doc_tokens(self, row: int, n: int = 8) -> list[tuple[str, float]]:
        """A document's top-n aligned tokens as strings."""
        ids, ws = self.sparse.doc_tokens[row][:n], self.sparse.doc_weights[row][:n]
        return [(self.tokenizer.decode([int(t)]), float(w)) for t, w in zip(ids, ws) if t >= 0]
