"""The corpus job (``python -m keytok_jax.embed``): a corpus file in, a resumable store out.

    open the store (or resume it) → read the corpus as shards → tokenize each shard in a thread,
    one shard ahead of the device → embed it → write it in a thread → finalize → summary

Each shard is ``shard_size`` consecutive input rows, length-sorted inside the embedder into fixed
padded shapes, and recorded atomically by the store, so rerunning the same command skips finished
shards and a rerun with different settings is refused, naming the setting. Which shards this
process embeds and writes is the :class:`~keytok_jax.pipeline.schedule.ShardSchedule` it is given
(one process, independent processes, or a mesh spanning processes in lock-step).
"""
from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .. import sharding, store
from ..distributed import barrier, init_distributed
from ..errors import CorpusError, SettingsError
from ..loading import load_model
from ..records import FLAG_REPLACED, Doc, EmbedOutput, ReadStats, TokenizedDoc
from ..settings import EmbedSettings, build
from .correction import Shift
from .embedder import Embedder, model_identity
from .lockstep import shard_schedule
from .read import count_docs, read_corpus
from .schedule import Shards, ShardTask

__all__ = ["run", "Corpus", "Progress", "ShardWrites", "Tally", "open_store", "open_corpus",
           "embed_shards"]


# ------------------------------------------------------------------ set-up

def start_processes(opts: dict) -> tuple[int, int]:
    """(process index, process count); ``jax.distributed`` only with ``--distributed``."""
    if not opts.get("distributed"):
        return 0, 1
    return init_distributed(opts.get("coordinator"), opts.get("num_processes"), opts.get("process_id"))


def load_job_model(opts: dict, processes: int):
    if opts.get("global_mesh") and not opts.get("mesh"):
        raise SettingsError("--global-mesh needs --mesh (e.g. --mesh data=2,model=4)")
    mesh = sharding.parse_mesh(opts.get("mesh"), global_mesh=bool(opts.get("global_mesh")))
    # Several processes: no orbax parameter cache (its multi-process saves and restores are
    # collective over global arrays; here each process holds its own copy).
    return load_model(opts["model"], dtype=opts["dtype"], mesh=mesh, cache=processes == 1)


def open_store(opts: dict, settings: EmbedSettings, model, shift: Shift | None,
               source: Path) -> store.StoreWriter:
    """Create the store, or resume it when its recorded settings are these."""
    recorded = {
        **settings.as_dict(), "model": opts["model"], "model_identity": model_identity(model),
        "dtype": opts["dtype"], "shift": shift.fingerprint() if shift else None,
        "input": str(source), "format": opts["format"], "id_field": opts["id_field"],
        "text_fields": list(opts["text_fields"]), "limit": opts["limit"],
    }
    dim = (settings.matryoshka_dim or model.config.output_dim) if opts["dense"] else None
    return store.StoreWriter.create_or_resume(
        opts["output"], recorded, k=settings.top_k, vocab_size=model.config.vocab_size,
        dim=dim, shard_size=opts["shard_size"])


@dataclass
class Corpus:
    """The input as the job reads it."""
    docs: Iterator[Doc]
    stats: ReadStats
    total: int  # documents to embed: exact for valid input, an upper bound with rejected lines


def open_corpus(opts: dict, source: Path, process: int) -> Corpus:
    rejects = opts.get("rejects") or (str(Path(opts["output"])) + ".rejects.jsonl")
    if process != 0:
        rejects = os.devnull   # every process reads the whole corpus; process 0 writes the rejects
    stats = ReadStats()
    reader_kw = dict(format=opts["format"], id_field=opts["id_field"],
                     text_fields=tuple(opts["text_fields"]), on_error=opts["on_error"])
    docs = read_corpus(source, rejects_path=rejects if opts["on_error"] == "skip" else None,
                       stats=stats, **reader_kw)
    total = count_docs(source, **reader_kw)
    if opts["limit"] is not None:
        total = min(total, opts["limit"])
    return Corpus(docs, stats, total)


# ------------------------------------------------------------------ the shard loop

class Progress:
    """The progress bar (none when ``show`` is false): documents, real tokens per second and
    the padding of the batches whose results arrived."""

    def __init__(self, total: int, show: bool, process: int, processes: int):
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
        if not self.enabled:
            return
        counters = {"replaced": int(sum(1 for d in docs if d.flags & FLAG_REPLACED))}
        self.futures.append(self.pool.submit(
            self.writer.write_shard, index, [d.id for d in docs], out.token_ids, out.token_weights,
            out.lengths, out.flags, out.dense if self.dense else None, counters=counters))

    def wait(self) -> None:
        for f in self.futures:
            f.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True)


@dataclass
class Tally:
    reused: int = 0  # shards an earlier run recorded
    embedded_docs: int = 0


def tokenize_shard(embedder: Embedder, docs: list[Doc]) -> list[TokenizedDoc]:
    """The shard's texts tokenized, with the reader's flags (replaced, empty) kept."""
    tokenized = embedder.tokenize([d.text for d in docs])
    for t, d in zip(tokenized, docs):
        t.flags |= d.flags
    return tokenized


def embed_shard(embedder: Embedder, task: ShardTask, tokenized: Future, writes: ShardWrites,
                progress: Progress) -> int:
    """Embed one shard (a filler embeds nothing, in step with the others) and queue its write;
    returns the documents embedded."""
    out = embedder.embed_tokenized(tokenized.result(), on_batch=progress.batch_done)
    if task.index is None:
        return 0
    writes.submit(task.index, task.docs, out)
    return len(task.docs)


def embed_shards(embedder: Embedder, tasks: Iterable[ShardTask], writes: ShardWrites,
                 progress: Progress) -> Tally:
    """Run the tasks: finished shards are counted, the others tokenized one shard ahead of the
    device, embedded and written."""
    tally = Tally()
    tokenize_pool = ThreadPoolExecutor(1, thread_name_prefix="tokenize")
    try:
        pending = None  # (task, future of its tokenized docs)
        for task in tasks:
            if task.done:
                tally.reused += 1
                progress.skip(len(task.docs))
                continue
            future = tokenize_pool.submit(tokenize_shard, embedder, task.docs)
            if pending is not None:
                tally.embedded_docs += embed_shard(embedder, *pending, writes, progress)
            pending = (task, future)
        if pending is not None:
            tally.embedded_docs += embed_shard(embedder, *pending, writes, progress)
        writes.wait()
    finally:
        tokenize_pool.shutdown(wait=True, cancel_futures=True)
        writes.close()
        progress.close()
    return tally


# ------------------------------------------------------------------ the end

def finalize(writer: store.StoreWriter, num_shards: int, process: int, output) -> dict:
    """The manifest, once every process has recorded its shards; process 0 finalizes."""
    barrier("shards written")
    if process == 0:
        manifest = writer.finalize(num_shards)
    barrier("finalized")
    if process != 0:
        manifest = store.open(output).manifest
    return manifest


def summary(opts: dict, embedder: Embedder, manifest: dict, num_shards: int, tally: Tally,
            corpus: Corpus, process: int, processes: int, load_seconds: float, wall: float) -> dict:
    st = embedder.stats
    counters = manifest["counters"]  # sums of the shard records' flag counts
    return {
        "store": str(opts["output"]), "mesh": embedder.model.load_info.get("mesh") or "single device",
        **({"process": f"{process} of {processes}"} if processes > 1 else {}),
        "rows": manifest["num_rows"], "shards": num_shards,
        "shards_reused": tally.reused, "docs_embedded": tally.embedded_docs,
        "real_tokens": st.real_tokens, "padded_tokens": st.padded_tokens,
        "padding_fraction": round(st.padding_fraction, 4),
        "truncated": counters["truncated"], "empty": counters["empty"],
        "replaced_utf8": counters["replaced"],
        "rejected": corpus.stats.rejected, "compiles": st.compiles,
        "compile_seconds": round(st.compile_seconds, 2), "load_seconds": round(load_seconds, 2),
        "wall_seconds": round(wall, 2),
        "docs_per_s": round(tally.embedded_docs / max(wall, 1e-9), 2),
        "real_tokens_per_s": round(st.real_tokens / max(wall, 1e-9), 1),
    }


def run(opts: dict) -> dict:
    """Embed ``opts["input"]`` into the store ``opts["output"]`` (the resolved options of
    :func:`keytok_jax.cli.embed.resolve_options`); returns the summary."""
    t_start = time.perf_counter()
    settings = build(EmbedSettings, opts)
    shift = Shift.load(opts["shift"]) if opts.get("shift") else None
    process, processes = start_processes(opts)
    model = load_job_model(opts, processes)
    load_seconds = time.perf_counter() - t_start
    if shift is not None:
        shift.check_model(model, opts["shift"])
    embedder = Embedder(model, settings, shift=shift, batch_tokens=opts["batch_tokens"],
                        vocab_chunk=opts["vocab_chunk"])
    schedule = shard_schedule(embedder.mesh, process, processes)
    source = Path(opts["input"]).resolve()
    writer = open_store(opts, settings, model, shift, source)
    done = writer.done_shards()
    corpus = open_corpus(opts, source, process)
    shards = Shards(corpus.docs, writer.shard_size, opts["limit"])
    progress = Progress(schedule.owned_rows(corpus.total, writer.shard_size),
                        not opts.get("no_progress"), process, processes)
    tally = embed_shards(embedder, schedule.tasks(shards, done),
                         ShardWrites(writer, schedule.writes, bool(opts["dense"])), progress)
    if shards.count == 0:
        raise CorpusError(f"{source}: no documents to embed")
    manifest = finalize(writer, shards.count, process, opts["output"])
    return summary(opts, embedder, manifest, shards.count, tally, corpus, process, processes,
                   load_seconds, time.perf_counter() - t_start)
