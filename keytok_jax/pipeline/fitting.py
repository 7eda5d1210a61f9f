"""The corpus job's fit stage: the statistics of the correction (``--correction``), before any
sparse vector is written.

    the store's own fit (a resumed job) | a fit file (--correction-fit) | a sample of the corpus
    → embedded once (the same compiled step as the job) → CorrectionFit → the embedder applies it

The fit is attached to the store (``STORE/correction_fit.json``) and its fingerprint is one of the
store's settings, so a resume reuses it and a different fit is refused by name. With several
processes every process fits the same sample and process 0's fit is broadcast, so all apply the
same correction.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
from collections import deque
import time
from pathlib import Path

import numpy as np
from jax.experimental import multihost_utils

from .. import store
from ..errors import CorpusError
from ..records import Corpus, Doc
from ..settings import FitSettings, InputSettings, JobSettings
from .correction import CorrectionFit
from .embedder import EmbedError, Embedder
from .preflight import STDIN
from .read import read_corpus

__all__ = ["FIT_ATTACHMENT", "sample_positions", "sample_docs", "job_fit", "fit_settings",
           "check_sample", "attach_fit"]

FIT_ATTACHMENT = "correction_fit"


def sample_positions(total: int, n: int) -> np.ndarray:
    """``min(n, total)`` distinct positions evenly spaced over ``range(total)``, first and last
    included."""
    if total <= n:
        return np.arange(total)
    return np.unique(np.linspace(0, total - 1, n).round().astype(np.int64))


def sample_docs(source, inp: InputSettings, fit: FitSettings, corpus: Corpus
                ) -> tuple[list[Doc], str]:
    """The documents the statistics are fitted on, and a description of the sample. ``first``
    (and any sample of standard input, or of a corpus no larger than the sample) takes them from
    the job's own reader and puts them back in front of it (``corpus.docs``); ``spread`` reads
    the corpus file a second time."""
    name = "standard input" if str(source) == STDIN else Path(str(source)).name
    total = corpus.total
    n = fit.fit_docs if inp.limit is None else min(fit.fit_docs, inp.limit)
    if fit.fit_sample == "first" or total is None or total <= n:
        head = list(itertools.islice(corpus.docs, n))
        corpus.docs = itertools.chain(head, corpus.docs)
        return head, f"first {len(head)} documents of {name}"
    # the corpus pass writes the rejected lines; this one only skips them
    docs = read_corpus(source, format=inp.format, id_field=inp.id_field,
                       text_fields=tuple(inp.text_fields), on_error=inp.on_error,
                       rejects_path=os.devnull if inp.on_error == "skip" else None)
    picked = _spread(docs, sample_positions(total, n))
    return picked, f"{len(picked)} documents spread over the {total} of {name}"


def _spread(docs, want: np.ndarray) -> list[Doc]:
    """The documents at positions ``want`` (increasing), streaming. A count with rejected lines
    is an upper bound, so positions may fall past the end: the last documents stand in for them."""
    wanted, picked = set(want.tolist()), {}
    recent: deque = deque(maxlen=len(want))
    for i, doc in enumerate(docs):
        if i in wanted:
            picked[i] = doc
        recent.append((i, doc))
    for i, doc in reversed(recent):
        if len(picked) >= min(len(want), len(recent)):
            break
        picked.setdefault(i, doc)
    return [picked[i] for i in sorted(picked)]


def fit_settings(job: JobSettings, fit: CorrectionFit | None) -> dict:
    """What the store records of the fit (nothing without a correction, so stores written
    before it still resume)."""
    if fit is None:
        return {}
    if job.fit.correction_fit:
        return {"correction_fit": fit.fingerprint(), "fit_from": "file"}
    return {"correction_fit": fit.fingerprint(), "fit_docs": job.fit.fit_docs,
            "fit_sample": job.fit.fit_sample}


def _sample_fingerprint(docs: list[Doc]) -> dict:
    return store.input_fingerprint([d.id for d in docs], [d.text for d in docs], [d.flags for d in docs])


def check_sample(job: JobSettings, source, corpus: Corpus, fit: CorrectionFit | None,
                 report: dict) -> None:
    """A store's fit is reused only while the input still holds the rows it was fitted on: every
    vector of the store depends on it, so an edited sample cannot be mended shard by shard.
    Called once the store has accepted the job's settings (the same sample rule)."""
    if fit is None or fit.input is None or report.get("fit_from") != "store":
        return
    docs, _ = sample_docs(source, job.input, job.fit, corpus)
    now = _sample_fingerprint(docs)
    if now["input_sha256"] == fit.input["input_sha256"]:
        return
    old, new = fit.input["input_rows"], now["input_rows"]
    row = next((i for i in range(len(docs)) if old[8 * i: 8 * i + 8] != new[8 * i: 8 * i + 8]),
               len(docs))
    where = (f"sample document {row + 1}: {docs[row].source}, id {docs[row].id!r}" if row < len(docs)
             else f"the sample now holds {len(docs)} documents, not {len(old) // 8}")
    raise store.InputChangedError(
        f"{job.output.output}: the correction was fitted on documents that changed since it was "
        f"recorded ({where}); every vector of the store depends on that fit, so no shard can be "
        "kept: write to a new --output")


def _fit_on_corpus(job: JobSettings, embedder: Embedder, source, corpus: Corpus) -> CorrectionFit:
    docs, sample = sample_docs(source, job.input, job.fit, corpus)
    if not docs:
        raise CorpusError(f"{source}: no documents to fit the correction on")
    tokenized = embedder.tokenize([d.text for d in docs])
    for t, d in zip(tokenized, docs):
        t.flags |= d.flags
    st = embedder.stats
    counts = (st.docs, st.real_tokens, st.padded_tokens, st.batches)
    try:
        fit = embedder.fit_correction(tokenized, sample=sample)
    except EmbedError as e:
        raise e.named([d.source for d in docs]) from None
    finally:   # the job's counters are the corpus pass's (compilations are shared and kept)
        st.docs, st.real_tokens, st.padded_tokens, st.batches = counts
    return dataclasses.replace(fit, input=_sample_fingerprint(docs))


def _broadcast(fit: CorrectionFit) -> CorrectionFit:
    """Process 0's fit on every process."""
    arrays = multihost_utils.broadcast_one_to_all(
        (fit.mean, fit.pc1, fit.pc1_centered, np.int64(fit.docs)))
    mean, pc1, centered, docs = (np.asarray(a) for a in arrays)
    return dataclasses.replace(fit, mean=mean.astype(np.float32), pc1=pc1.astype(np.float32),
                               pc1_centered=centered.astype(np.float32), docs=int(docs))


def job_fit(job: JobSettings, embedder: Embedder, source, corpus: Corpus,
            processes: int = 1) -> tuple[CorrectionFit | None, dict]:
    """The fit the job applies (already applied to ``embedder``) and a report for the summary:
    where it came from, its documents and seconds. None without a correction."""
    if embedder.settings.correction == "none":
        return None, {}
    t0 = time.perf_counter()
    stored = store.read_attachment(Path(job.output.output), FIT_ATTACHMENT)
    if job.fit.correction_fit:
        fit, origin = CorrectionFit.load(job.fit.correction_fit), "file"
    elif stored is not None:
        fit, origin = CorrectionFit.from_json(stored, f"{job.output.output}/{FIT_ATTACHMENT}.json"), "store"
    else:
        fit, origin = _fit_on_corpus(job, embedder, source, corpus), "corpus"
    if processes > 1:
        fit = _broadcast(fit)
    embedder.set_correction_fit(fit)
    return fit, {"fit_from": origin, "fit_docs": fit.docs,
                 "fit_seconds": round(time.perf_counter() - t0, 2)}


def attach_fit(writer: store.StoreWriter, fit: CorrectionFit | None) -> None:
    """Record the fit with the store (once: a resumed store already holds it)."""
    if fit is not None and store.read_attachment(writer.path, FIT_ATTACHMENT) is None:
        writer.attach(FIT_ATTACHMENT, fit.as_json())
