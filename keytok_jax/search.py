"""Retrieval over a store: a sparse inverted index of aligned tokens, a dense index, query modes.

Documents are embedded once (``python -m keytok_jax.embed``); this module searches them.

* :class:`SparseIndex` — the inverted index: a ``scipy.sparse`` CSR matrix ``[vocab, docs]``
  (row t = the posting list of token t: document rows and weights) built from the store's
  ``token_ids`` / ``token_weights``, plus the forward index (each document's top-k) used to say
  why a document matched. Saved as plain ``.npy`` files under ``STORE/index/sparse`` and
  memory-mapped on reopen, so opening costs no read of the postings.
* :class:`DenseIndex` — the store's dense vectors, L2-normalised (cosine), searched on device by
  a chunked matmul + top-k (:func:`keytok_jax.projection.topk_projection`; over several devices
  the documents are split and per-device top-k merged, with the same ids and ties).
* :class:`Searcher` — query modes over both:

  ``tokens``  inference-free: the query's own token ids from the tokenizer, in both forms a
              word takes (the text tokenized with a leading space, as mid-sentence words are,
              and each word alone, as after a prompt's opening quote), tokens without a letter
              or digit left out, each weighted by the IDF of the document index
              (``query_weights="binary"``: 1). No model.
  ``encode``  the query through the store's model and settings → its top-k aligned tokens.
  ``expand``  ``tokens`` plus the query's top-M aligned tokens, the aligned weights rescaled so
              their largest equals the largest token weight.
  ``dense``   cosine between the query's and the documents' dense vectors.
  ``hybrid``  fusion of a sparse mode (``hybrid_sparse``) and ``dense``: reciprocal rank fusion
              (``fusion="rrf"``: sum of 1 / (60 + rank) over the two lists) or a weighted sum
              (``fusion="weighted"``: ``alpha * sparse + (1 - alpha) * dense`` after min-max
              normalising each list's scores over its own top ``depth`` results; a document
              missing from one list scores 0 there).

Sparse scores are dot products between the query vector and the documents' top-k weights.
Results are ``[(doc_id, score), ...]`` per query, best first; equal scores go to the lower store row.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from . import store as store_lib

INDEX_FORMAT = "keytok-sparse-index/1"
MODES = ("tokens", "encode", "expand", "dense", "hybrid")
QUERY_WEIGHTS = ("idf", "binary")
FUSIONS = ("rrf", "weighted")
RRF_K = 60
_WORD = re.compile(r"\w[\w-]*")


class IndexError_(Exception):
    """A saved index that cannot be used (wrong format, stale for its store)."""


def _store_stamp(store: store_lib.Store) -> dict:
    # A derived index is current when built from the same content: the shard records' checksums.
    import hashlib

    h = hashlib.sha256(json.dumps([r.get("sha256") for r in store.shard_records()], sort_keys=True).encode())
    return {"num_rows": store.num_rows, "k": store.k, "vocab_size": store.vocab_size,
            "content": h.hexdigest()[:32]}


def bm25_idf(doc_freq: np.ndarray, num_docs: int) -> np.ndarray:
    """BM25's (always positive) IDF: log(1 + (N - df + 0.5) / (df + 0.5))."""
    df = np.asarray(doc_freq, np.float64)
    return np.log1p((num_docs - df + 0.5) / (df + 0.5)).astype(np.float32)


def _top_rows(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best k (row, score) pairs, best first, equal scores to the lower row."""
    if len(scores) > k:
        keep = np.argpartition(-scores, k - 1)[:k]
        # argpartition cuts ties at the k-th score arbitrarily; take every row tied with it, then sort.
        kth = scores[keep].min()
        keep = np.flatnonzero(scores >= kth)
        rows, scores = rows[keep], scores[keep]
    order = np.lexsort((rows, -scores))[:k]
    return rows[order], scores[order]


# ----------------------------------------------------------------------------- sparse index

@dataclass
class SparseIndex:
    """Inverted index ``postings [vocab, docs]`` (CSR, float32) + forward index ``doc_tokens`` /
    ``doc_weights [docs, k]`` + ``ids``. Build with :meth:`from_store` or :meth:`from_arrays`."""
    postings: sp.csr_array
    doc_tokens: np.ndarray
    doc_weights: np.ndarray
    ids: list[str]
    meta: dict

    @property
    def num_docs(self) -> int:
        return self.postings.shape[1]

    @property
    def vocab_size(self) -> int:
        return self.postings.shape[0]

    @property
    def doc_freq(self) -> np.ndarray:
        return np.diff(self.postings.indptr)

    @property
    def idf(self) -> np.ndarray:
        return bm25_idf(self.doc_freq, self.num_docs)

    @property
    def nbytes(self) -> int:
        p = self.postings
        return int(p.data.nbytes + p.indices.nbytes + p.indptr.nbytes + self.doc_tokens.nbytes
                   + self.doc_weights.nbytes)

    @classmethod
    def from_arrays(cls, token_ids, token_weights, ids: Sequence[str], vocab_size: int,
                    meta: dict | None = None) -> SparseIndex:
        """From ``token_ids`` / ``token_weights [docs, k]``. Entries with id -1 (empty texts) or
        weight 0 (``relu`` weighting) carry nothing and are left out of the postings."""
        token_ids = np.ascontiguousarray(token_ids, np.int32)
        token_weights = np.ascontiguousarray(token_weights, np.float32)
        n, k = token_ids.shape
        if token_weights.shape != (n, k) or len(ids) != n:
            raise ValueError(f"token_ids {token_ids.shape}, token_weights {token_weights.shape} and "
                             f"{len(ids)} ids do not agree")
        if n and (token_ids.max(initial=-1) >= vocab_size or token_ids.min(initial=0) < -1):
            raise ValueError(f"token ids outside [-1, {vocab_size})")
        keep = (token_ids >= 0) & (token_weights != 0)
        rows = np.broadcast_to(np.arange(n, dtype=np.int32)[:, None], (n, k))[keep]
        # [docs, vocab] COO → CSR of the transpose: the posting lists, each sorted by row.
        postings = sp.csr_array((token_weights[keep], (token_ids[keep], rows)),
                                shape=(vocab_size, n), dtype=np.float32)
        postings.sum_duplicates()
        # scipy wants indices and indptr of one dtype (else it copies both on load to upcast).
        index_dtype = np.int32 if postings.nnz < 2**31 and n < 2**31 else np.int64
        postings.indices = postings.indices.astype(index_dtype, copy=False)
        postings.indptr = postings.indptr.astype(index_dtype, copy=False)
        return cls(postings, token_ids, token_weights, list(ids),
                   {"format": INDEX_FORMAT, "num_docs": n, "k": k, "vocab_size": vocab_size,
                    "nnz": int(postings.nnz), **(meta or {})})

    @classmethod
    def from_store(cls, store) -> SparseIndex:
        if not isinstance(store, store_lib.Store):
            store = store_lib.open(store)
        token_ids = store.token_ids.read().result()
        token_weights = store.token_weights.read().result()
        return cls.from_arrays(token_ids, token_weights, store.ids, store.vocab_size,
                               {"store": str(store.path), "store_stamp": _store_stamp(store),
                                "model": store.settings.get("model"),
                                "weighting": store.settings.get("weighting")})

    def save(self, directory) -> Path:
        """Write the index as ``.npy`` files + ``meta.json`` (last, so a partial write is never
        mistaken for an index)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / "meta.json").unlink(missing_ok=True)
        p = self.postings
        for name, arr in (("indptr", p.indptr), ("indices", p.indices), ("data", p.data),
                          ("doc_tokens", self.doc_tokens), ("doc_weights", self.doc_weights)):
            np.save(d / f"{name}.npy", np.ascontiguousarray(arr))
        store_lib._atomic_write(d / "ids.jsonl", store_lib.encode_ids(self.ids))
        store_lib._atomic_write(d / "meta.json", json.dumps(self.meta, indent=1).encode())
        return d

    @classmethod
    def load(cls, directory, *, mmap: bool = True) -> SparseIndex:
        d = Path(directory)
        try:
            meta = json.loads((d / "meta.json").read_text())
        except FileNotFoundError:
            raise IndexError_(f"{d}: no saved index (meta.json missing)") from None
        if meta.get("format") != INDEX_FORMAT:
            raise IndexError_(f"{d}: index format {meta.get('format')!r}, expected {INDEX_FORMAT!r}")
        mode = "r" if mmap else None
        arr = {name: np.load(d / f"{name}.npy", mmap_mode=mode)
               for name in ("indptr", "indices", "data", "doc_tokens", "doc_weights")}
        postings = sp.csr_array((arr["data"], arr["indices"], arr["indptr"]),
                                shape=(meta["vocab_size"], meta["num_docs"]), copy=False)
        ids = store_lib.decode_ids((d / "ids.jsonl").read_bytes(), str(d / "ids.jsonl"))
        return cls(postings, arr["doc_tokens"], arr["doc_weights"], ids, meta)

    @classmethod
    def for_store(cls, store, directory=None, *, rebuild: bool = False) -> SparseIndex:
        """The saved index of a store (``STORE/index/sparse`` by default), built and saved first
        when missing, stale (built from other content) or ``rebuild``."""
        if not isinstance(store, store_lib.Store):
            store = store_lib.open(store)
        d = Path(directory) if directory else store.path / "index" / "sparse"
        if not rebuild:
            try:
                index = cls.load(d)
                if index.meta.get("store_stamp") == _store_stamp(store):
                    return index
            except IndexError_:
                pass
        index = cls.from_store(store)
        index.save(d)
        return cls.load(d)

    def query_matrix(self, token_ids: Sequence[Sequence[int]],
                     weights: Sequence[Sequence[float]] | None = None) -> sp.csr_array:
        """Sparse query vectors ``[queries, vocab]`` from token id lists (weights default 1;
        a repeated id adds up)."""
        indptr = np.zeros(len(token_ids) + 1, np.int64)
        indptr[1:] = np.cumsum([len(t) for t in token_ids])
        cols = np.concatenate([np.asarray(t, np.int64) for t in token_ids]) if len(token_ids) else np.zeros(0, np.int64)
        if weights is None:
            vals = np.ones(len(cols), np.float32)
        else:
            vals = (np.concatenate([np.asarray(w, np.float32) for w in weights])
                    if len(weights) else np.zeros(0, np.float32))
        if len(cols) and (cols.min() < 0 or cols.max() >= self.vocab_size):
            raise ValueError(f"query token ids outside [0, {self.vocab_size})")
        q = sp.csr_array((vals, cols, indptr), shape=(len(token_ids), self.vocab_size))
        q.sum_duplicates()
        return q

    def search(self, queries: sp.csr_array, k: int = 10) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top-k ``(rows, scores)`` per query vector (rows of ``[queries, vocab]``). Documents
        sharing no token with a query are not returned, so a list may be shorter than k."""
        queries = sp.csr_array(queries, dtype=np.float32)
        p, n = self.postings, self.num_docs
        out = []
        # Term-at-a-time into a dense accumulator: 3x faster than a sparse-sparse product on a
        # 1M-document index, where a query's common tokens touch ~2M postings.
        for i in range(queries.shape[0]):
            lo, hi = queries.indptr[i], queries.indptr[i + 1]
            spans = [(p.indptr[t], p.indptr[t + 1], w)
                     for t, w in zip(queries.indices[lo:hi].tolist(), queries.data[lo:hi].tolist())]
            spans = [(a, b, w) for a, b, w in spans if b > a]
            if not spans:
                out.append((np.zeros(0, np.int64), np.zeros(0, np.float32)))
                continue
            rows = np.concatenate([p.indices[a:b] for a, b, _ in spans])
            vals = np.concatenate([p.data[a:b] * np.float32(w) for a, b, w in spans])
            scores = np.bincount(rows, vals, minlength=n).astype(np.float32)
            touched = np.zeros(n, bool)
            touched[rows] = True
            hit = np.flatnonzero(touched)
            out.append(_top_rows(hit, scores[hit], k))
        return out

    def explain(self, query: sp.csr_array, row: int) -> list[tuple[int, float, float]]:
        """Why document ``row`` matched query vector ``query`` (one row): the shared tokens as
        ``(token_id, query_weight, doc_weight)``, largest contribution first."""
        q = sp.csr_array(query)
        qmap = dict(zip(q.indices.tolist(), q.data.tolist()))
        shared = [(int(t), qmap[int(t)], float(w))
                  for t, w in zip(self.doc_tokens[row], self.doc_weights[row]) if int(t) in qmap and w != 0]
        return sorted(shared, key=lambda x: -x[1] * x[2])


# ----------------------------------------------------------------------------- dense index

class DenseIndex:
    """The documents' dense vectors ``[docs, dim]``, L2-normalised, on device; :meth:`search`
    returns cosine top-k. With ``mesh`` (a 1-axis mesh over ``axis``, or a device count > 1)
    the documents are split over the devices and each takes its own top-k before a merge."""

    def __init__(self, vectors, ids: Sequence[str], *, mesh=None, axis: str = "docs",
                 chunk: int = 16384):
        import jax
        import jax.numpy as jnp

        from .pooling import l2_normalize

        vectors = np.asarray(vectors, np.float32)
        if vectors.ndim != 2 or len(vectors) != len(ids):
            raise ValueError(f"vectors {vectors.shape} and {len(ids)} ids do not agree")
        self.ids = list(ids)
        self.dim = vectors.shape[1]
        self.chunk = chunk
        self.axis = axis
        if isinstance(mesh, int):
            from jax.sharding import Mesh

            mesh = Mesh(np.array(jax.devices()[:mesh]), (axis,)) if mesh > 1 else None
        self.mesh = mesh
        docs = np.asarray(l2_normalize(jnp.asarray(vectors)))
        if mesh is None:
            self.docs = jax.device_put(docs)
        else:
            from jax.sharding import NamedSharding
            from jax.sharding import PartitionSpec as P

            m = mesh.shape[axis]
            pad = -len(docs) % m     # padding rows are never returned (see sharded_topk_projection)
            self._num_docs = len(docs)
            self.docs = jax.device_put(np.pad(docs, ((0, pad), (0, 0))), NamedSharding(mesh, P(axis, None)))
        self._fns: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        return len(self.ids) * self.dim * 4

    @classmethod
    def from_store(cls, store, **kw) -> DenseIndex:
        if not isinstance(store, store_lib.Store):
            store = store_lib.open(store)
        if store.dense is None:
            raise ValueError(f"{store.path} has no dense vectors (embed with --dense)")
        return cls(store.dense.read().result(), store.ids, **kw)

    def _fn(self, k: int):
        import jax

        from .projection import sharded_topk_projection, topk_projection

        if k not in self._fns:
            n, chunk, mesh, axis = len(self.ids), self.chunk, self.mesh, self.axis
            if mesh is None:
                def f(q, docs):
                    return topk_projection(q, docs, k, chunk=chunk)
            else:
                def f(q, docs):
                    # Rows past the real documents are zero padding: score them below any cosine.
                    return sharded_topk_projection(q, docs, k, mesh, chunk=chunk, axis=axis, batch_axis=None,
                                                   num_valid=n)
            self._fns[k] = jax.jit(f)
        return self._fns[k]

    def search(self, query_vectors, k: int = 10, *, batch: int = 256
               ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top-k ``(rows, cosines)`` per query vector ``[queries, dim]`` (normalised here)."""
        import jax.numpy as jnp

        from .pooling import l2_normalize

        q = np.asarray(query_vectors, np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query vectors {q.shape}, the index has dim {self.dim}")
        k = min(k, len(self.ids))
        fn, out = self._fn(k), []
        for start in range(0, len(q), batch):
            part = q[start:start + batch]
            # Pad the batch to a fixed shape: one compilation per k.
            padded = np.zeros((batch if len(q) > batch else max(len(part), 1), self.dim), np.float32)
            padded[: len(part)] = part
            rows, scores = fn(l2_normalize(jnp.asarray(padded)), self.docs)
            rows, scores = np.asarray(rows), np.asarray(scores)
            out.extend((rows[i].astype(np.int64), scores[i]) for i in range(len(part)))
        return out


# ----------------------------------------------------------------------------- fusion

def fuse(sparse: tuple[np.ndarray, np.ndarray], dense: tuple[np.ndarray, np.ndarray], k: int, *,
         method: str = "rrf", alpha: float = 0.5, rrf_k: int = RRF_K) -> tuple[np.ndarray, np.ndarray]:
    """Fuse one query's two ranked lists ``(rows, scores)`` into the top k (see module doc)."""
    if method not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {method!r}")
    total: dict[int, float] = {}
    for weight, (rows, scores) in ((alpha, sparse), (1.0 - alpha, dense)):
        if method == "rrf":
            values = 1.0 / (rrf_k + np.arange(1, len(rows) + 1))
            weight = 1.0
        else:
            lo, hi = (float(scores.min()), float(scores.max())) if len(scores) else (0.0, 0.0)
            values = (scores - lo) / (hi - lo) if hi > lo else np.ones(len(scores))
        for r, v in zip(rows.tolist(), values.tolist()):
            total[r] = total.get(r, 0.0) + weight * v
    rows = np.fromiter(total.keys(), np.int64, len(total))
    scores = np.fromiter(total.values(), np.float64, len(total)).astype(np.float32)
    return _top_rows(rows, scores, k)


# ----------------------------------------------------------------------------- searcher

def embedder_for_store(store, *, model=None, shift=None, instruction: str | None = None,
                       batch_tokens: int = 8192, mesh=None):
    """An :class:`~keytok_jax.embedder.Embedder` with the store's model and settings (what
    ``encode``, ``expand`` and ``dense`` queries need). ``instruction`` replaces the store's
    instruction for queries (asymmetric models such as e5-mistral instruct queries only). A store
    embedded with a shift needs the same shift file (checked by fingerprint)."""
    from .embedder import Embedder, EmbedSettings, Shift
    from .loading import load_model

    if not isinstance(store, store_lib.Store):
        store = store_lib.open(store)
    s = store.settings
    fields = {f: s[f] for f in EmbedSettings.__dataclass_fields__ if f in s}
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
        model = load_model(s["model"], dtype=s.get("dtype", "float32"))
    ident = s.get("model_identity")
    if ident is not None:
        from .embed import _model_identity

        if _model_identity(model) != ident:
            raise ValueError(f"{store.path} was embedded with {ident}, the loaded model is "
                             f"{_model_identity(model)}")
    return Embedder(model, EmbedSettings(**fields), shift=shift, batch_tokens=batch_tokens, mesh=mesh)


@dataclass
class QueryResult:
    hits: list[tuple[str, float]]            # (doc id, score), best first
    rows: np.ndarray                          # store rows of the hits
    vector: sp.csr_array | None = None        # the sparse query vector (sparse modes)


class Searcher:
    """Query modes over a store's indexes (see the module doc). The model is loaded only when a
    mode needs it (``encode``, ``expand``, ``dense``, ``hybrid``); ``tokens`` needs the tokenizer."""

    def __init__(self, store, *, index_dir=None, rebuild: bool = False, query_weights: str = "idf",
                 expand_m: int = 16, hybrid_sparse: str = "expand", fusion: str = "weighted",
                 alpha: float = 0.3, depth: int = 100, shift=None, query_instruction: str | None = None,
                 embedder=None, tokenizer=None, mesh=None):
        if query_weights not in QUERY_WEIGHTS:
            raise ValueError(f"query_weights must be one of {QUERY_WEIGHTS}, got {query_weights!r}")
        if hybrid_sparse not in ("tokens", "encode", "expand"):
            raise ValueError(f"hybrid_sparse must be tokens, encode or expand, got {hybrid_sparse!r}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        self.store = store if isinstance(store, store_lib.Store) else store_lib.open(store)
        t0 = time.perf_counter()
        self.sparse = SparseIndex.for_store(self.store, index_dir, rebuild=rebuild)
        self.index_seconds = time.perf_counter() - t0
        self._idf = self.sparse.idf
        self.query_weights, self.expand_m = query_weights, expand_m
        self.hybrid_sparse, self.fusion, self.alpha, self.depth = hybrid_sparse, fusion, alpha, depth
        self._shift, self._instruction, self._mesh = shift, query_instruction, mesh
        self._embedder = embedder
        self._tokenizer = tokenizer if tokenizer is not None else (embedder.model.tokenizer if embedder else None)
        self._dense: DenseIndex | None = None

    # -- lazily built pieces
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from .loading import load_tokenizer

            self._tokenizer = load_tokenizer(self.store.settings["model"])
        return self._tokenizer

    @property
    def embedder(self):
        if self._embedder is None:
            self._embedder = embedder_for_store(self.store, shift=self._shift, instruction=self._instruction)
        return self._embedder

    @property
    def dense(self) -> DenseIndex:
        if self._dense is None:
            self._dense = DenseIndex.from_store(self.store, mesh=self._mesh)
        return self._dense

    @cached_property
    def _word_tokens(self) -> np.ndarray:
        # Punctuation and whitespace tokens sit high in many documents' projections (the prompt
        # ends in a quote) and carry no topic: token queries leave them out.
        strings = self.tokenizer.convert_ids_to_tokens(list(range(self.sparse.vocab_size)))
        decoded = [self.tokenizer.convert_tokens_to_string([t]) if t is not None else "" for t in strings]
        return np.array([any(ch.isalnum() for ch in d) for d in decoded])

    # -- query vectors
    def token_vectors(self, queries: Sequence[str]) -> sp.csr_array:
        """``tokens`` mode: each query's distinct token ids, weight IDF or 1 (see the module doc)."""
        enc = self.tokenizer([" " + q.strip() for q in queries], add_special_tokens=False)["input_ids"]
        words = [_WORD.findall(q) for q in queries]
        flat = [w for ws in words for w in ws]
        bare = iter(self.tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else [])
        word = self._word_tokens
        ids = []
        for row, ws in zip(enc, words):
            toks = set(row)
            for _ in ws:
                toks.update(next(bare))
            ids.append(sorted(t for t in toks if word[t]))
        weights = [self._idf[t] if self.query_weights == "idf" else np.ones(len(t), np.float32) for t in ids]
        return self.sparse.query_matrix(ids, weights)

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
        of ``hybrid_sparse``; ``dense``: None). ``encoded``: the queries' EmbedOutput, if at hand."""
        mode = self.hybrid_sparse if mode == "hybrid" else mode
        if mode == "dense":
            return None
        if mode == "tokens":
            return self.token_vectors(queries)
        encoded = encoded if encoded is not None else self._encoded(queries)
        return self._aligned_vectors(encoded) if mode == "encode" else self._expanded(queries, encoded)

    # -- search
    def search(self, queries: Sequence[str], mode: str = "tokens", k: int = 10) -> list[QueryResult]:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        queries = [queries] if isinstance(queries, str) else list(queries)
        if not queries:
            return []
        # One model call gives a query's dense vector and its aligned tokens.
        out = self._encoded(queries) if mode != "tokens" else None
        vectors = self.query_vectors(queries, mode, out)
        if mode == "dense":
            hits = self.dense.search(out.dense, k)
        elif mode == "hybrid":
            sparse_hits = self.sparse.search(vectors, self.depth)
            dense_hits = self.dense.search(out.dense, self.depth)
            hits = [fuse(s, d, k, method=self.fusion, alpha=self.alpha) for s, d in zip(sparse_hits, dense_hits)]
        else:
            hits = self.sparse.search(vectors, k)
        ids = self.sparse.ids
        return [QueryResult([(ids[r], float(s)) for r, s in zip(rows.tolist(), scores.tolist())], rows,
                            vectors[[i]] if vectors is not None else None)
                for i, (rows, scores) in enumerate(hits)]

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


# ----------------------------------------------------------------------------- CLI

def read_query_file(path) -> list[tuple[str, str]]:
    """``(id, text)`` pairs from a BEIR ``queries.jsonl`` (``_id``/``text``), a TSV
    (``id<TAB>text``) or a plain text file (one query per line, id = line number)."""
    p = Path(path)
    out = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if p.suffix in (".jsonl", ".json"):
                try:
                    row = json.loads(line)
                    out.append((str(row["_id"]), str(row["text"])))
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ValueError(f"{p}:{n}: not a query line with _id and text ({type(e).__name__}: {e})") from None
            elif p.suffix == ".tsv":
                qid, sep, text = line.partition("\t")
                if not sep:
                    raise ValueError(f"{p}:{n}: expected 'id<TAB>text'")
                out.append((qid, text))
            else:
                out.append((str(n), line))
    return out


def build_parser():
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m keytok_jax.search", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Search a store: ranked document ids, scores, and the tokens each document "
                    "matched on.\n\n" + __doc__.split("\n\n", 2)[2])
    p.add_argument("--store", required=True, help="store written by python -m keytok_jax.embed")
    p.add_argument("--query", action="append", default=[], help="a query text; repeat for several")
    p.add_argument("--queries", help="file of queries: BEIR queries.jsonl, id<TAB>text .tsv, or "
                                     "one query per line")
    p.add_argument("--mode", choices=MODES, default="tokens", help="query mode (default tokens: "
                   "inference-free, needs only the tokenizer)")
    p.add_argument("-k", "--k", type=int, default=10, help="results per query (default 10)")
    p.add_argument("--format", choices=("text", "jsonl", "trec"), default="text",
                   help="text: ranked lists with matched tokens (default); jsonl: one object per "
                        "query; trec: a TREC run file (qid Q0 doc rank score tag)")
    p.add_argument("--output", help="write results here instead of standard output")
    p.add_argument("--show-tokens", type=int, default=6,
                   help="text format: matched (or, for dense, the document's top) tokens shown per hit")
    p.add_argument("--index", help="sparse index directory (default STORE/index/sparse; built on "
                                   "first use and rebuilt when the store changes)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the sparse index")
    p.add_argument("--query-weights", choices=QUERY_WEIGHTS, default="idf",
                   help="tokens/expand: weight of a query token (default idf)")
    p.add_argument("--expand-m", type=int, default=16, help="expand: aligned tokens added (default 16)")
    p.add_argument("--hybrid-sparse", choices=("tokens", "encode", "expand"), default="expand",
                   help="hybrid: the sparse side (default expand)")
    p.add_argument("--fusion", choices=FUSIONS, default="weighted",
                   help="hybrid: weighted (min-max normalised scores, default) or rrf (k=60)")
    p.add_argument("--alpha", type=float, default=0.3, help="weighted fusion: sparse weight (default 0.3)")
    p.add_argument("--shift", help="the shift file the store was embedded with, if any")
    p.add_argument("--query-instruction", help="instruction for queries (asymmetric models)")
    return p


def main(argv=None) -> int:
    import sys

    args = build_parser().parse_args(argv)
    try:
        queries = [(str(i + 1), q) for i, q in enumerate(args.query)]
        if args.queries:
            queries += read_query_file(args.queries)
        if not queries:
            raise ValueError("no queries: pass --query TEXT or --queries FILE")
        searcher = Searcher(args.store, index_dir=args.index, rebuild=args.rebuild,
                            query_weights=args.query_weights, expand_m=args.expand_m,
                            hybrid_sparse=args.hybrid_sparse, fusion=args.fusion, alpha=args.alpha,
                            shift=args.shift, query_instruction=args.query_instruction)
        results = searcher.search([q for _, q in queries], args.mode, args.k)
    except (store_lib.StoreError, IndexError_, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for (qid, text), res in zip(queries, results):
            if args.format == "trec":
                for rank, (doc, s) in enumerate(res.hits, 1):
                    out.write(f"{qid} Q0 {doc} {rank} {s:.6f} keytok-{args.mode}\n")
                continue
            matched = [[t for t, _, _ in searcher.explain(res, r)] for r in range(len(res.hits))]
            if args.format == "jsonl":
                out.write(json.dumps({"query_id": qid, "query": text, "hits": [
                    {"id": d, "score": s, "matched_tokens": m} for (d, s), m in zip(res.hits, matched)]},
                    ensure_ascii=False) + "\n")
                continue
            out.write(f"query {qid}: {text}\n")
            if not res.hits:
                out.write("  (no document shares a token with this query)\n")
            for rank, ((doc, s), row) in enumerate(zip(res.hits, res.rows.tolist()), 1):
                if res.vector is not None:
                    why = ", ".join(repr(t) for t in matched[rank - 1][: args.show_tokens])
                    why = f"matched {why}" if why else "matched nothing (fused from the dense list)"
                else:
                    why = "doc tokens " + ", ".join(repr(t) for t, _ in searcher.doc_tokens(row, args.show_tokens))
                out.write(f"  {rank:3d}. {doc}  {s:.4f}  {why}\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
