"""Where the analysed embeddings come from: the ``dense`` array of a store, or texts embedded on
the fly through the pipeline's :class:`~keytok_jax.pipeline.Embedder`. Either way
:meth:`Source.batches` streams ``[B, D]`` float32 pooled vectors (before normalisation, as the
LM-head projection and the shift see them), so memory stays one batch whatever the corpus size.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from .. import store as store_lib
from ..errors import CorpusError, SettingsError
from ..loading import DEFAULT_MODEL, load_model
from ..pipeline import Embedder, EmbedSettings, read_corpus
from .moments import StreamingMoments
from .texts import read_texts

__all__ = ["Batch", "Source", "Spill", "stream_components"]

# Embedding settings a source reports in :meth:`Source.describe` (texts embedded on the fly).
DESCRIBED = ("pooling", "prompt", "instruction", "instruction_format", "attention", "max_length")


@dataclass
class Batch:
    ids: list
    texts: list | None
    dense: np.ndarray  # float32 [B, D], pooled, before any shift, not normalised


class Source:
    """Embeddings of a store written by ``python -m keytok_jax.embed --dense`` (``store=``; no
    re-embedding; texts for the metrics are re-read from the store's input, or
    ``texts_for_store``, and checked against its ids) or of texts embedded on the fly
    (``texts=``, with ``settings`` over the :class:`EmbedSettings` defaults)."""

    def __init__(self, *, store=None, texts=None, model=None, settings: dict | None = None,
                 text_format: str = "auto", min_score=None, gold=None, sts_cleanup: bool = True,
                 id_field: str = "_id", text_fields=("title", "text"), limit: int | None = None,
                 batch_rows: int = 512, dtype: str = "float32", batch_tokens: int | None = None,
                 texts_for_store=None):
        if (store is None) == (texts is None):
            raise SettingsError("give exactly one of store= and texts=")
        self.limit, self.batch_rows, self.batch_tokens = limit, batch_rows, batch_tokens
        self.text_kw = {"format": text_format, "min_score": min_score, "gold": gold,
                        "sts_cleanup": sts_cleanup, "id_field": id_field, "text_fields": tuple(text_fields)}
        self._model = model if not isinstance(model, str) else None
        self.model_name = model if isinstance(model, str) else None
        self.dtype = dtype
        self.texts_for_store = texts_for_store
        self.embedder = None
        self.store = self.texts_path = None
        if store is not None:
            self._open_store(store, dtype)
        else:
            self._plan_embedding(texts, settings)

    def _open_store(self, store, dtype: str) -> None:
        self.store = store if isinstance(store, store_lib.Store) else store_lib.open(store)
        s = self.store.settings
        if self.store.dense is None:
            raise SettingsError(f"{self.store.path} has no dense array: rerun the embed job with --dense")
        if s.get("normalize") or s.get("matryoshka_dim"):
            raise SettingsError(f"{self.store.path}: its dense vectors are normalised or truncated; the "
                                "spectral analysis needs the pooled vectors (embed without "
                                "--normalize / --matryoshka-dim)")
        self.settings = dict(s)
        self.model_name = self.model_name or s.get("model")
        self.dtype = s.get("dtype", dtype)

    def _plan_embedding(self, texts, settings: dict | None) -> None:
        self.texts_path = Path(texts)
        self.settings = {**EmbedSettings().as_dict(), **(settings or {})}
        if self.settings.get("normalize") or self.settings.get("matryoshka_dim"):
            raise SettingsError("the spectral analysis needs pooled vectors: no normalize / matryoshka_dim")
        # the pooled vectors are what is analysed: the sparse side's correction does not apply
        self._embed_settings = EmbedSettings(**{k: v for k, v in self.settings.items()
                                                if k in EmbedSettings.__dataclass_fields__
                                                and k != "correction"})
        self.model_name = self.model_name or DEFAULT_MODEL

    @property
    def model(self):
        if self._model is None:
            self._model = load_model(self.model_name, dtype=self.dtype)
        return self._model

    def share_model(self, other: Source) -> None:
        """Use ``other``'s model when both name the same model and dtype (one copy in memory)."""
        if self.model_name == other.model_name and self.dtype == other.dtype:
            self._model = other.model

    @property
    def dim(self) -> int:
        return self.store.dim if self.store is not None else self.model.config.output_dim

    def describe(self) -> dict:
        if self.store is not None:
            return {"store": str(self.store.path), "rows": len(self.store), "model": self.model_name,
                    "pooling": self.settings.get("pooling"), "prompt": self.settings.get("prompt"),
                    "store_shift": self.settings.get("shift"), "limit": self.limit}
        return {"texts": str(self.texts_path), **{k: v for k, v in self.text_kw.items() if k != "gold"},
                "model": self.model_name, **{k: self.settings[k] for k in DESCRIBED}, "limit": self.limit}

    def batches(self, with_texts: bool = False) -> Iterator[Batch]:
        if self.store is not None:
            yield from self._store_batches(with_texts)
            return
        if self.embedder is None:
            self.embedder = Embedder(self.model, self._embed_settings, batch_tokens=self.batch_tokens)
        texts = read_texts(self.texts_path, limit=self.limit, **self.text_kw)
        while chunk := list(islice(texts, self.batch_rows)):
            batch = [t for _, t in chunk]
            dense = self.embedder.encode(batch, window=self.batch_rows)
            yield Batch([i for i, _ in chunk], batch, np.asarray(dense, np.float32))

    # ------------------------------------------------------------------ store rows
    def _store_texts(self):
        if self.texts_for_store is not None:
            return read_texts(self.texts_for_store, limit=self.limit, **self.text_kw)
        s = self.settings
        docs = read_corpus(s["input"], format=s.get("format", "auto"), id_field=s.get("id_field", "_id"),
                           text_fields=tuple(s.get("text_fields", ("title", "text"))),
                           on_error="skip", rejects_path=os.devnull)
        return ((d.id, d.text) for d in docs)

    def _store_id_batches(self, n: int):
        """(start, stop, ids) over the first ``n`` rows, reading one shard's ids at a time."""
        size = self.store.shard_size
        for shard in range(-(-n // size)):
            ids = self.store.shard_ids(shard)
            base = shard * size
            for lo in range(0, len(ids), self.batch_rows):
                start = base + lo
                if start >= n:
                    return
                stop = min(n, start + self.batch_rows, base + len(ids))
                yield start, stop, ids[lo: lo + (stop - start)]

    def _checked_texts(self, texts, ids: list) -> list[str]:
        """The next ``len(ids)`` texts of the store's input, which must carry the store's ids."""
        got = [next(texts, None) for _ in ids]
        for want, g in zip(ids, got):
            if g is None or g[0] != want:
                raise CorpusError(f"{self.store.path}: row id {want!r} but the input gives "
                                  f"{None if g is None else g[0]!r}; pass the store's texts "
                                  "with --store-texts")
        return [g[1] for g in got]

    def _store_batches(self, with_texts: bool) -> Iterator[Batch]:
        n = len(self.store) if self.limit is None else min(self.limit, len(self.store))
        texts = self._store_texts() if with_texts else None
        for start, stop, ids in self._store_id_batches(n):
            dense = np.asarray(self.store.dense[start:stop].read().result(), np.float32)
            tx = self._checked_texts(texts, ids) if texts is not None else None
            yield Batch(list(ids), tx, dense)


class Spill:
    """Batches spilled to disk (dense as raw float32, ids and texts as JSON lines) so a second
    pass over texts embedded on the fly needs no re-embedding; memory stays one batch."""

    def __init__(self, dim: int, directory=None):
        self.dir = Path(tempfile.mkdtemp(prefix="keytok-spill-", dir=directory))
        self.dim = dim
        self._dense = open(self.dir / "dense.f32", "wb")  # noqa: SIM115 - closed in replay/close
        self._meta = open(self.dir / "meta.jsonl", "w", encoding="utf-8")  # noqa: SIM115
        self.sizes: list[int] = []

    def add(self, batch: Batch) -> Batch:
        self._dense.write(np.ascontiguousarray(batch.dense, np.float32).tobytes())
        self._meta.write(json.dumps([batch.ids, batch.texts]) + "\n")
        self.sizes.append(len(batch.ids))
        return batch

    def replay(self) -> Iterator[Batch]:
        self._dense.close()
        self._meta.close()
        with open(self.dir / "dense.f32", "rb") as fd, open(self.dir / "meta.jsonl", encoding="utf-8") as fm:
            for size, line in zip(self.sizes, fm):
                ids, texts = json.loads(line)
                dense = np.frombuffer(fd.read(size * self.dim * 4), np.float32).reshape(size, self.dim)
                yield Batch(ids, texts, dense)

    def close(self):
        for f in (self._dense, self._meta):
            if not f.closed:
                f.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def stream_components(source: Source, precision: str = "float32", sharding=None,
                      keep: Spill | None = None, on_batch=None) -> StreamingMoments:
    """One pass over ``source``: the streaming moments (and, optionally, a spill of the batches)."""
    acc = StreamingMoments(source.dim, precision, sharding)
    for batch in source.batches(with_texts=keep is not None):
        acc.update(batch.dense)
        if keep is not None:
            keep.add(batch)
        if on_batch is not None:
            on_batch(batch)
    return acc
