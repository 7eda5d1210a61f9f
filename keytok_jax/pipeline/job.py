"""The corpus job (``python -m keytok_jax.embed``): a corpus file in, a resumable store out.

    fit the correction's statistics (or reuse the store's) → open the store (or resume it) →
    read the corpus as shards → tokenize each shard in the background (a thread, or worker
    processes), one shard ahead of the device → embed it → write it in a thread → finalize → summary

Each shard is ``shard_size`` consecutive input rows, length-sorted inside the embedder into fixed
padded shapes, and recorded atomically by the store with a fingerprint of its input rows, so
rerunning the same command skips finished shards, after checking that each still holds this
input and matches its checksums (:class:`~keytok_jax.pipeline.schedule.Reuse`), and a rerun with
different settings is refused, naming the setting. The job holds the store's lock
(``STORE/.lock``) from start to end, so a second job on the same output is refused. Which shards
this process embeds and writes is the :class:`~keytok_jax.pipeline.schedule.ShardSchedule` it is
given (one process, independent processes, or a mesh spanning processes in lock-step).
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from jax.experimental import multihost_utils

from .. import sharding, store
from ..compile_cache import enable_compile_cache
from ..distributed import barrier, init_distributed
from ..errors import CorpusError
from ..loading import load_model
from ..records import FLAG_REPLACED, Corpus, Doc, EmbedOutput, ReadStats
from ..settings import (DeviceSettings, EmbedSettings, InputSettings, JobSettings, OutputSettings,
                        defaults)
from .correction import CorrectionFit, Shift
from .embedder import EmbedError, Embedder, model_identity
from .fitting import attach_fit, check_sample, fit_settings, job_fit
from .lockstep import shard_schedule
from .preflight import STDIN, check_job
from .read import count_docs, read_corpus
from .schedule import Reuse, ShardSchedule, Shards, ShardTask
from .tokenize_pool import TokenizePool, default_workers

__all__ = ["run", "Corpus", "Progress", "ShardWrites", "Tally", "open_store", "open_corpus",
           "embed_shards", "take_lock", "input_source"]

log = logging.getLogger("keytok_jax")


# ------------------------------------------------------------------ set-up

def start_processes(devices: DeviceSettings) -> tuple[int, int]:
    """(process index, process count); ``jax.distributed`` only with ``--distributed``."""
    if not devices.distributed:
        return 0, 1
    return init_distributed(devices.coordinator, devices.num_processes, devices.process_id)


def load_job_model(job: JobSettings, processes: int):
    devices = job.devices   # preflight.check_job has refused --global-mesh without --mesh
    mesh = sharding.parse_mesh(devices.mesh, global_mesh=bool(devices.global_mesh))
    # Several processes: no orbax parameter cache (its multi-process saves and restores are
    # collective over global arrays; here each process holds its own copy).
    return load_model(job.model.model, dtype=job.model.dtype, mesh=mesh, cache=processes == 1,
                      lm_head=job.model.lm_head)


def input_source(input: str) -> Path | str:
    """The corpus path as the store records it: absolute, or ``-`` for standard input."""
    return input if input == STDIN else Path(input).resolve()


def take_lock(output, process: int, processes: int) -> store.StoreLock | None:
    """The store's lock, held by process 0 for the whole job (the processes of one job share
    the store); every process fails when process 0 cannot take it."""
    lock, error = None, None
    if process == 0:
        try:
            lock = store.StoreLock.acquire(output)
        except store.StoreError as e:
            error = e
    if processes > 1:
        ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
        if not int(ok) and error is None:
            raise store.StoreError(f"{output}: process 0 of this job could not take the store's "
                                   "lock (its error names the reason)")
    if error is not None:
        raise error
    if lock is not None and lock.taken_over:
        log.warning("%s", lock.taken_over_message())
    return lock


# Settings added after stores of format 1 were first written: recorded only when they differ from
# their defaults, so those stores keep resuming (absent means the default).
LATER_SETTINGS = ("prompt_name", "model_declares", "correction", "doc_tokens")


def recorded_settings(settings: EmbedSettings) -> dict:
    """What the store records of the embedding: the settings the embedder runs with (for a
    sentence-transformers folder, its own pooling, prompt and attention, not the preset's)."""
    out, default = settings.as_dict(), defaults(EmbedSettings)
    for key in LATER_SETTINGS:
        if out[key] == default[key]:
            del out[key]
    return out


def open_store(job: JobSettings, embedder: Embedder, shift: Shift | None, source,
               fit: CorrectionFit | None = None) -> store.StoreWriter:
    """Create the store, or resume it when its recorded settings are these (the correction's
    fit among them)."""
    settings, inp, out, model = embedder.settings, job.input, job.output, embedder.model
    recorded = {
        **recorded_settings(settings), "model": job.model.model,
        # recorded only when borrowed, so stores written before --lm-head still resume
        **({"lm_head": job.model.lm_head} if job.model.lm_head else {}),
        "model_identity": model_identity(model),
        "dtype": model.dtype, "shift": shift.fingerprint() if shift else None,
        "input": str(source), "format": inp.format, "id_field": inp.id_field,
        "text_fields": list(inp.text_fields), "limit": inp.limit, **fit_settings(job, fit),
    }
    dim = (settings.matryoshka_dim or embedder.output_dim) if out.dense else None
    return store.StoreWriter.create_or_resume(
        out.output, recorded, k=settings.top_k, vocab_size=model.config.vocab_size,
        dim=dim, shard_size=out.shard_size)


def open_corpus(inp: InputSettings, output, source, process: int) -> Corpus:
    rejects = inp.rejects or (str(Path(output)) + ".rejects.jsonl")
    if process != 0:
        rejects = os.devnull   # every process reads the whole corpus; process 0 writes the rejects
    stats = ReadStats()
    reader_kw = dict(format=inp.format, id_field=inp.id_field,
                     text_fields=tuple(inp.text_fields), on_error=inp.on_error)
    docs = read_corpus(source, rejects_path=rejects if inp.on_error == "skip" else None,
                       stats=stats, **reader_kw)
    total = count_docs(source, **reader_kw)
    if inp.limit is not None:
        total = inp.limit if total is None else min(total, inp.limit)
    return Corpus(docs, stats, total)


# ------------------------------------------------------------------ the shard loop

class Progress:
    """The progress bar (none when ``show`` is false): documents, real tokens per second and
    the padding of the batches whose results arrived."""

    def __init__(self, total: int | None, show: bool, process: int, processes: int):
        self.bar = None
        self.real_tokens = self.padded_tokens = 0
        self.t0 = time.perf_counter()
        if show:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="doc", dynamic_ncols=True,
                            desc="embed" if processes == 1 else f"embed [{process}/{processes}]")

    def batch_done(self, docs: int, real_tokens: int, padded_tokens: int) -> None:
        self.real_tokens += real_tokens
        self.padded_tokens += padded_tokens
        if self.bar is not None:
            elapsed = max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix(tok_s=f"{self.real_tokens / elapsed:,.0f}",
                                 pad=f"{1 - self.real_tokens / max(self.padded_tokens, 1):.0%}",
                                 refresh=False)
            self.bar.update(docs)

    def skip(self, docs: int) -> None:
        if self.bar is not None:
            self.bar.update(docs)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class ShardWrites:
    """Shards written to the store in a background thread while the device works on the next.
    With ``enabled`` false (another process of a lock-step group writes these rows) nothing is."""

    def __init__(self, writer: store.StoreWriter, enabled: bool, dense: bool):
        self.writer, self.enabled, self.dense = writer, enabled, dense
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="write")
        self.futures: list[Future] = []

    def submit(self, index: int, docs: list[Doc], out: EmbedOutput) -> None:
        if self.enabled:
            self.futures.append(self.pool.submit(self._write, index, docs, out))

    def _write(self, index: int, docs: list[Doc], out: EmbedOutput) -> None:
        """Record the shard with its counters and the fingerprint of its input rows."""
        ids = [d.id for d in docs]
        counters = {"replaced": int(sum(1 for d in docs if d.flags & FLAG_REPLACED))}
        fingerprint = store.input_fingerprint(ids, [d.text for d in docs], [d.flags for d in docs])
        self.writer.write_shard(index, ids, out.token_ids, out.token_weights, out.lengths,
                                out.flags, out.dense if self.dense else None, counters=counters,
                                input=fingerprint)

    def wait(self) -> None:
        for f in self.futures:
            f.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True)


@dataclass
class Tally:
    reused: int = 0  # shards an earlier run recorded
    embedded_docs: int = 0
    recomputed: int = 0  # recorded shards redone (input changed or files damaged, --recompute)


def embed_shard(embedder: Embedder, task: ShardTask, tokenized: Future, writes: ShardWrites,
                progress: Progress) -> int:
    """Embed one shard (a filler embeds nothing, in step with the others) and queue its write;
    returns the documents embedded."""
    try:
        out = embedder.embed_tokenized(tokenized.result(), on_batch=progress.batch_done)
    except EmbedError as e:   # name the texts by FILE:LINE, not by their place in the shard
        raise e.named([d.source for d in task.docs]) from None
    if task.index is None:
        return 0
    writes.submit(task.index, task.docs, out)
    return len(task.docs)


def embed_shards(embedder: Embedder, tasks: Iterable[ShardTask], writes: ShardWrites,
                 progress: Progress, workers: int = 0) -> Tally:
    """Run the tasks: finished shards are counted, the others tokenized one shard ahead of the
    device (in ``workers`` processes, or a thread: :mod:`.tokenize_pool`), embedded and written."""
    tally = Tally()
    pool = TokenizePool(embedder.doc_tokenizer, workers)
    try:
        pending = None  # (task, future of its tokenized docs)
        for task in tasks:
            if task.done:
                tally.reused += 1
                progress.skip(len(task.docs))
                continue
            future = pool.submit(task.docs)
            if pending is not None:
                tally.embedded_docs += embed_shard(embedder, *pending, writes, progress)
            pending = (task, future)
        if pending is not None:
            tally.embedded_docs += embed_shard(embedder, *pending, writes, progress)
        writes.wait()
    finally:
        pool.close()
        writes.close()
        progress.close()
    return tally


# ------------------------------------------------------------------ the end

def trim(writer: store.StoreWriter, shards: Shards, recompute: bool) -> None:
    """Refuse (or, with ``recompute``, drop) records past the input's last shard: the input
    shrank since they were written."""
    extra = sorted(i for i in writer.done_shards() if i >= shards.count)
    if not extra:
        return
    if not recompute:
        raise store.InputChangedError(
            f"{writer.path}: the store holds shards {extra[0]} to {extra[-1]}, but the input now "
            f"ends with shard {shards.count - 1} ({shards.rows} documents): the input changed "
            "since those shards were recorded. Write to a new --output, or rerun with "
            "--recompute to drop them.")
    writer.drop_shards_from(shards.count)


def finalize(writer: store.StoreWriter, shards: Shards, process: int, out: OutputSettings) -> dict:
    """The manifest, once every process has recorded its shards; process 0 drops records past
    the input's end (or refuses them) and finalizes. A finished store has one row per document
    read."""
    barrier("shards written")
    if process == 0:
        trim(writer, shards, bool(out.recompute))
        manifest = writer.finalize(shards.count)
    barrier("finalized")
    if process != 0:
        manifest = store.open(out.output).manifest
    if manifest["num_rows"] != shards.rows:
        raise store.StoreError(f"{out.output}: the store holds {manifest['num_rows']} rows but "
                               f"{shards.rows} documents were read")
    return manifest


def summary(output, embedder: Embedder, manifest: dict, num_shards: int, tally: Tally,
            corpus: Corpus, process: int, processes: int, load_seconds: float, wall: float,
            fit_report: dict, precompiled: dict) -> dict:
    st = embedder.stats
    counters = manifest["counters"]  # sums of the shard records' flag counts
    return {
        "store": str(output), "mesh": embedder.model.load_info.get("mesh") or "single device",
        **({"process": f"{process} of {processes}"} if processes > 1 else {}),
        "rows": manifest["num_rows"], "shards": num_shards,
        "shards_reused": tally.reused, "shards_recomputed": tally.recomputed,
        "docs_embedded": tally.embedded_docs,
        "real_tokens": st.real_tokens, "padded_tokens": st.padded_tokens,
        "padding_fraction": round(st.padding_fraction, 4),
        "batch_tokens": embedder.batch_tokens, "bucket_step": embedder.bucket_step,
        "truncated": counters["truncated"], "empty": counters["empty"],
        "replaced_utf8": counters["replaced"],
        "rejected": corpus.stats.rejected, "compiles": st.compiles,
        "compile_seconds": round(st.compile_seconds, 2), **precompiled,
        "load_seconds": round(load_seconds, 2),
        "correction": embedder.settings.correction, **fit_report,
        "wall_seconds": round(wall, 2),
        "docs_per_s": round(tally.embedded_docs / max(wall, 1e-9), 2),
        "real_tokens_per_s": round(st.real_tokens / max(wall, 1e-9), 1),
    }


def run(job: JobSettings | dict) -> dict:
    """Embed ``job.input.input`` into the store ``job.output.output``; returns the summary.
    ``job`` may also be the flat dict of :func:`keytok_jax.cli.embed.resolve_options`.
    Settings and paths are checked before anything loads or is written; the store's lock is held
    from before the model loads to the end."""
    if not isinstance(job, JobSettings):
        job = JobSettings.from_options(job)
    check_job(job)
    t_start = time.perf_counter()
    compile_cache = enable_compile_cache(job.speed.compile_cache)
    process, processes = start_processes(job.devices)
    lock = take_lock(job.output.output, process, processes)
    try:
        result = _run_locked(job, process, processes, t_start)
    finally:
        if lock is not None:
            lock.release()
    if lock is not None and lock.taken_over:
        result["lock"] = lock.taken_over_message()
    result["compile_cache"] = compile_cache
    return result


def _run_locked(job: JobSettings, process: int, processes: int, t_start: float) -> dict:
    shift = Shift.load(job.model.shift) if job.model.shift else None
    model = load_job_model(job, processes)
    load_seconds = time.perf_counter() - t_start
    if shift is not None:
        shift.check_model(model, job.model.shift)
    embedder = Embedder(model, job.embed, shift=shift, batch_tokens=job.speed.batch_tokens,
                        vocab_chunk=job.speed.vocab_chunk, attention_impl=job.speed.attention_impl,
                        bucket_step=job.speed.bucket_step)
    precompiled = embedder.precompile() if job.speed.precompile else {}
    schedule = shard_schedule(embedder.mesh, process, processes)
    source = input_source(job.input.input)
    corpus = open_corpus(job.input, job.output.output, source, process)
    fit, fit_report = job_fit(job, embedder, source, corpus, processes)
    writer = open_store(job, embedder, shift, source, fit)
    check_sample(job, source, corpus, fit, fit_report)
    if process == 0:
        attach_fit(writer, fit)
    shards = Shards(corpus.docs, writer.shard_size, job.input.limit)
    tally = embed_corpus(embedder, writer, schedule, job, corpus, shards, process, processes)
    if shards.count == 0:
        raise CorpusError(f"{source}: no documents to embed")
    manifest = finalize(writer, shards, process, job.output)
    return summary(job.output.output, embedder, manifest, shards.count, tally, corpus, process,
                   processes, load_seconds, time.perf_counter() - t_start, fit_report, precompiled)


def embed_corpus(embedder: Embedder, writer: store.StoreWriter, schedule: ShardSchedule,
                 job: JobSettings, corpus: Corpus, shards: Shards, process: int,
                 processes: int) -> Tally:
    """Every shard of this process: the recorded ones checked and reused (or redone), the
    others embedded and written."""
    reuse = Reuse(writer, schedule, bool(job.output.recompute))
    progress = Progress(schedule.owned_rows(corpus.total, writer.shard_size),
                        not job.speed.no_progress, process, processes)
    workers = job.speed.tokenize_workers
    tally = embed_shards(embedder, schedule.tasks(reuse.check(shards), reuse),
                         ShardWrites(writer, schedule.writes, bool(job.output.dense)), progress,
                         default_workers() if workers is None else workers)
    tally.recomputed = reuse.recomputed
    return tally
