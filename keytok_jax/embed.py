"""``python -m keytok_jax.embed``: embed a corpus into a resumable sparse-token store.

Reads a corpus as a stream (JSONL, TSV, plain text, parquet, or a BEIR folder), tokenizes it in a
background thread ahead of the device, embeds it shard by shard (each shard = ``--shard-size``
consecutive input rows, length-sorted inside the shard into fixed padded shapes), and writes each
shard to a tensorstore zarr store with an atomic completion record. Rerunning the same command
skips finished shards; a rerun with different settings is refused, naming the setting.

Settings come from the defaults, then ``--config FILE.yaml`` (see configs/), then the flags given.
``--mesh data=D,model=M`` spreads the device work over a mesh of D*M devices (keytok_jax/sharding.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from . import store as store_lib
from .embedder import EmbedSettings, Embedder, Shift
from .readers import CorpusError, ReadStats, count_docs, read_corpus

# flag name → (EmbedSettings field or job option, default)
JOB_DEFAULTS = {
    # The built-in preset is configs/smollm2.yaml: PromptEOL + last token on SmolLM2.
    "pooling": "last", "prompt": "prompteol",
    "model": "smollm2-135m", "dtype": "float32", "dense": False, "shift": None,
    "format": "auto", "id_field": "_id", "text_fields": ["title", "text"], "on_error": "raise",
    "rejects": None, "shard_size": 1024, "batch_tokens": 8192, "vocab_chunk": 4096, "limit": None,
    "mesh": None, "global_mesh": False, "distributed": False, "coordinator": None, "num_processes": None,
    "process_id": None,
}
SETTING_FIELDS = [f.name for f in EmbedSettings.__dataclass_fields__.values()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m keytok_jax.embed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    io = p.add_argument_group("input and output")
    io.add_argument("--input", required=True,
                    help="corpus: .jsonl/.json, .tsv, .txt (one text per line, id = line number), "
                         ".parquet, or a BEIR dataset folder (reads its corpus.jsonl)")
    io.add_argument("--output", required=True, help="store directory (created, or resumed if it exists)")
    io.add_argument("--config", help="YAML preset (e.g. configs/smollm2.yaml); flags override it")
    io.add_argument("--format", choices=["auto", "jsonl", "tsv", "txt", "parquet", "beir"],
                    help="input format (default: from the path)")
    io.add_argument("--id-field", help="JSONL/parquet id field (default: _id)")
    io.add_argument("--text-fields", nargs="+",
                    help="fields joined with a space to make the text (default: title text, BEIR style)")
    io.add_argument("--limit", type=int, help="embed only the first N documents")
    io.add_argument("--on-error", choices=["raise", "skip"],
                    help="malformed input line: stop with file:line (raise, default) or skip it, "
                         "count it and write it to --rejects")
    io.add_argument("--rejects", help="JSONL side file for skipped lines (default: STORE.rejects.jsonl)")
    io.add_argument("--dense", action="store_true", help="also store the dense vectors [N, D]")
    io.add_argument("--shard-size", type=int, help="rows per shard = unit of resume (default: 1024)")
    io.add_argument("--resume", action="store_true",
                    help="resume an existing store (the default behaviour; kept for explicitness)")

    m = p.add_argument_group("model and embedding")
    m.add_argument("--model", help="alias, Hugging Face folder, .gguf file or hub id (default: smollm2-135m)")
    m.add_argument("--dtype", choices=["float32", "bfloat16"], help="parameter dtype (default: float32)")
    m.add_argument("--pooling", choices=["last", "mean", "weighted_mean"],
                   help="last token, mean, or SGPT position-weighted mean (default: last)")
    m.add_argument("--attention", choices=["causal", "bidirectional"], help="attention mask (default: causal)")
    m.add_argument("--prompt", help="prompt template with {text}, or a name: none, prompteol (default: prompteol)")
    m.add_argument("--instruction", help="instruction text prepended with --instruction-format")
    m.add_argument("--instruction-format",
                   help="template with {instruction} and {text}, or a name: e5-mistral, gritlm, llm2vec, plain")
    m.add_argument("--pool-instruction", action="store_true",
                   help="pool the instruction tokens too (default: keep them out of pooling)")
    m.add_argument("--add-eos", action="store_true", help="append the EOS token (e5-mistral style)")
    m.add_argument("--max-length", type=int, help="max tokens per text incl. template; longer texts are truncated and flagged (default: 512)")
    m.add_argument("--top-k", type=int, help="aligned tokens kept per text (default: 64)")
    m.add_argument("--weighting", choices=["logit", "relu", "log1p_relu"],
                   help="token weight: raw logit, max(logit,0), or log(1+max(logit,0)) (default: relu)")
    m.add_argument("--normalize", action="store_true", help="L2-normalise the dense vectors")
    m.add_argument("--matryoshka-dim", type=int, help="keep the first N dims of the dense vectors")
    m.add_argument("--shift", help="first-component shift file (written by python -m keytok_jax.spectral) "
                                   "applied before the LM-head projection")

    s = p.add_argument_group("speed")
    s.add_argument("--batch-tokens", type=int, help="padded tokens per device batch (default: 8192)")
    s.add_argument("--vocab-chunk", type=int, help="vocabulary rows per top-k step (default: 4096)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--summary-json", help="also write the final summary to this JSON file")

    d = p.add_argument_group("several devices and hosts (README: Sharding and multiple devices)")
    d.add_argument("--mesh", metavar="data=D,model=M",
                   help="spread the job over D*M devices (config key: mesh). data=D splits every batch "
                        "over D devices (data parallel: throughput; rows per batch are rounded up to a "
                        "multiple of D); model=M splits attention heads, MLP units and the vocabulary "
                        "(embedding, LM head, top-k) over M devices (tensor parallel: for models too big "
                        "for one device). A missing axis is 1; one axis may be -1 (the rest). D*M may "
                        "not exceed the devices JAX sees. Rules: keytok_jax/sharding.py. "
                        "Default: one device")
    d.add_argument("--distributed", action="store_true",
                   help="one of several processes (hosts) writing one store: jax.distributed.initialize "
                        "with the three flags below, else the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / "
                        "JAX_PROCESS_ID environment variables, else JAX's auto-detection (SLURM, TPU pods, "
                        "Open MPI). Shard i of the store is embedded by process i mod N on its own devices "
                        "(--mesh applies to each process's local devices; see --global-mesh); process 0 "
                        "finalizes the store once every process has recorded its shards. Run the same "
                        "command on every process; rerun them all to resume")
    d.add_argument("--global-mesh", action="store_true",
                   help="with --distributed: --mesh spans the devices of all processes (config key: "
                        "global_mesh), so the model axis can cross hosts (a model too big for one host). "
                        "Processes then step in lock-step: each round, every group of processes that holds "
                        "the same data rows embeds one shard, all run the same agreed sequence of batch "
                        "shapes (a process with fewer batches runs empty, masked rows) and one process per "
                        "group writes. Slower than the default when the model fits on one host")
    d.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0's coordinator service")
    d.add_argument("--num-processes", type=int, help="number of processes in the job")
    d.add_argument("--process-id", type=int, help="this process's index, 0 .. num-processes - 1")
    return p


def resolve_options(argv=None) -> dict:
    args = vars(build_parser().parse_args(argv))
    opts = EmbedSettings().as_dict()
    opts.update(JOB_DEFAULTS)
    if "config" in args:
        preset = yaml.safe_load(Path(args["config"]).read_text()) or {}
        unknown = set(preset) - set(opts) - {"description"}
        if unknown:
            raise SystemExit(f"{args['config']}: unknown keys {sorted(unknown)}")
        opts.update({k: v for k, v in preset.items() if k != "description"})
    opts.update(args)
    return opts


def _model_identity(model) -> dict:
    # Name and size of each source file: stable across reinstalls (unlike mtimes).
    return {"source": Path(model.source).name,
            "files": [[Path(f).name, Path(f).stat().st_size] for f in model.load_info["files"]]}


def init_distributed(opts: dict) -> tuple[int, int]:
    """(process index, process count); starts ``jax.distributed`` with ``--distributed``.

    Coordinator, process count and id come from the flags, else from ``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``, else JAX detects them (SLURM, TPU pods, Open MPI).
    CPU collectives go through gloo (the only ones XLA:CPU has across processes)."""
    if not opts.get("distributed"):
        return 0, 1
    import jax

    def pick(flag, env, cast=str):
        value = opts.get(flag)
        if value is None and os.environ.get(env):
            value = cast(os.environ[env])
        return value

    kwargs = {"coordinator_address": pick("coordinator", "JAX_COORDINATOR_ADDRESS"),
              "num_processes": pick("num_processes", "JAX_NUM_PROCESSES", int),
              "process_id": pick("process_id", "JAX_PROCESS_ID", int)}
    if not jax.distributed.is_initialized():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(**{k: v for k, v in kwargs.items() if v is not None})
    return jax.process_index(), jax.process_count()


def _barrier(name: str, nproc: int) -> None:
    if nproc > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"keytok_jax.embed: {name}")


def run(opts: dict) -> dict:
    from .loading import load_model

    t_start = time.perf_counter()
    settings = EmbedSettings(**{k: opts[k] for k in SETTING_FIELDS})
    shift = Shift.load(opts["shift"]) if opts.get("shift") else None
    pid, nproc = init_distributed(opts)
    from . import sharding

    if opts.get("global_mesh") and not opts.get("mesh"):
        raise ValueError("--global-mesh needs --mesh (e.g. --mesh data=2,model=4)")
    mesh = sharding.parse_mesh(opts.get("mesh"), global_mesh=bool(opts.get("global_mesh")))
    # Several processes: no orbax parameter cache (its multi-process saves and restores are
    # collective over global arrays; here each process holds its own copy).
    model = load_model(opts["model"], dtype=opts["dtype"], mesh=mesh, cache=nproc == 1)
    load_seconds = time.perf_counter() - t_start
    if shift is not None and shift.model_hash:
        from .spectral import model_hash

        if shift.model_hash != model_hash(model):
            raise ValueError(f"{opts['shift']} was computed for another model (LM-head hash "
                             f"{shift.model_hash}, this model's is {model_hash(model)})")
    embedder = Embedder(model, settings, shift=shift, batch_tokens=opts["batch_tokens"],
                        vocab_chunk=opts["vocab_chunk"])
    # Shards go to groups of processes: each process alone, or with --global-mesh the processes
    # that feed the same batch rows (sharding.process_groups); one process per group writes.
    group, n_groups, writes_rows = pid, nproc, True
    if embedder.lockstep:
        group, n_groups, _, writes_rows = embedder.process_group
    input_path = Path(opts["input"]).resolve()
    store_settings = {
        **settings.as_dict(), "model": opts["model"], "model_identity": _model_identity(model),
        "dtype": opts["dtype"], "shift": shift.fingerprint() if shift else None,
        "input": str(input_path), "format": opts["format"], "id_field": opts["id_field"],
        "text_fields": list(opts["text_fields"]), "limit": opts["limit"],
    }
    dim = (settings.matryoshka_dim or model.config.output_dim) if opts["dense"] else None
    writer = store_lib.StoreWriter.create_or_resume(
        opts["output"], store_settings, k=settings.top_k, vocab_size=model.config.vocab_size,
        dim=dim, shard_size=opts["shard_size"])
    done = writer.done_shards()
    rejects = opts.get("rejects") or (str(Path(opts["output"])) + ".rejects.jsonl")
    if pid != 0:
        rejects = os.devnull   # every process reads the whole corpus; process 0 writes the rejects
    read_stats = ReadStats()
    reader_kw = dict(format=opts["format"], id_field=opts["id_field"],
                     text_fields=tuple(opts["text_fields"]), on_error=opts["on_error"])
    docs = read_corpus(input_path, rejects_path=rejects if opts["on_error"] == "skip" else None,
                       stats=read_stats, **reader_kw)
    total = count_docs(input_path, **reader_kw)
    if opts["limit"] is not None:
        total = min(total, opts["limit"])
    size = writer.shard_size

    def owned(index: int) -> bool:
        return index % n_groups == group

    total = sum(min(size, total - i * size) for i in range(-(-total // size)) if owned(i))

    bar = None
    if not opts.get("no_progress"):
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="doc", dynamic_ncols=True,
                   desc="embed" if nproc == 1 else f"embed [{pid}/{nproc}]")
    tokenize_pool = ThreadPoolExecutor(1, thread_name_prefix="tokenize")
    write_pool = ThreadPoolExecutor(1, thread_name_prefix="write")
    writes, embedded_docs = [], 0
    tally = {"shards": 0, "reused": 0}
    t_embed = time.perf_counter()

    def shards():
        """(index, docs) per shard, input order; stops at --limit."""
        batch, index, seen = [], 0, 0
        for doc in docs:
            if opts["limit"] is not None and seen >= opts["limit"]:
                break
            batch.append(doc)
            seen += 1
            if len(batch) == writer.shard_size:
                yield index, batch
                batch, index = [], index + 1
        if batch:
            yield index, batch

    def tokenize(shard_docs):
        tokenized = embedder.tokenize([d.text for d in shard_docs])
        for t, d in zip(tokenized, shard_docs):
            t.flags |= d.flags
        return tokenized

    done_tokens = [0, 0]  # real, padded (of batches whose results arrived)

    def on_batch(n_docs, n_tokens, n_padded):
        done_tokens[0] += n_tokens
        done_tokens[1] += n_padded
        if bar is not None:
            elapsed = max(time.perf_counter() - t_embed, 1e-9)
            bar.set_postfix(tok_s=f"{done_tokens[0] / elapsed:,.0f}",
                            pad=f"{1 - done_tokens[0] / max(done_tokens[1], 1):.0%}", refresh=False)
            bar.update(n_docs)

    def embed_and_write(index, shard_docs, tokenized):
        out = embedder.embed_tokenized(tokenized, on_batch=on_batch)
        if index is None:
            return 0
        if not writes_rows:   # another process of the group writes these rows
            return len(shard_docs)
        counters = {"replaced": int(sum(1 for d in shard_docs if d.flags & store_lib.FLAG_REPLACED))}
        writes.append(write_pool.submit(
            writer.write_shard, index, [d.id for d in shard_docs], out.token_ids, out.token_weights,
            out.lengths, out.flags, out.dense if dim else None, counters=counters))
        return len(shard_docs)

    def work():
        """(index, docs) of the shards this process embeds. In lock-step (a mesh over several
        processes) also (None, []) for each round of n_groups shards in which it has nothing to
        embed (its shard is finished or past the end), since every process runs every round."""
        round_has_work, last_round = False, -1
        for index, shard_docs in shards():
            tally["shards"] = index + 1
            r = index // n_groups
            if embedder.lockstep and r != last_round:
                if last_round >= 0 and not round_has_work:
                    yield None, []
                last_round, round_has_work = r, False
            if not owned(index):
                continue
            if index in done:
                tally["reused"] += 1
                if bar:
                    bar.update(len(shard_docs))
                continue
            round_has_work = True
            yield index, shard_docs
        if embedder.lockstep and last_round >= 0 and not round_has_work:
            yield None, []

    try:
        pending = None  # (index, docs, future of tokenized docs): tokenization runs one shard ahead
        for index, shard_docs in work():
            future = tokenize_pool.submit(tokenize, shard_docs)
            if pending is not None:
                embedded_docs += embed_and_write(pending[0], pending[1], pending[2].result())
            pending = (index, shard_docs, future)
        if pending is not None:
            embedded_docs += embed_and_write(pending[0], pending[1], pending[2].result())
        for w in writes:
            w.result()
    finally:
        tokenize_pool.shutdown(wait=True, cancel_futures=True)
        write_pool.shutdown(wait=True)
        if bar:
            bar.close()
    n_shards, reused = tally["shards"], tally["reused"]
    if n_shards == 0:
        raise CorpusError(f"{input_path}: no documents to embed")
    _barrier("shards written", nproc)      # every process has recorded its shards
    if pid == 0:
        manifest = writer.finalize(n_shards)
    _barrier("finalized", nproc)
    if pid != 0:
        manifest = store_lib.open(opts["output"]).manifest
    wall = time.perf_counter() - t_start
    st = embedder.stats
    counters = manifest["counters"]  # sums of the shard records' flag counts
    summary = {
        "store": str(opts["output"]), "mesh": model.load_info.get("mesh") or "single device",
        **({"process": f"{pid} of {nproc}"} if nproc > 1 else {}),
        "rows": manifest["num_rows"], "shards": n_shards,
        "shards_reused": reused, "docs_embedded": embedded_docs, "real_tokens": st.real_tokens,
        "padded_tokens": st.padded_tokens, "padding_fraction": round(st.padding_fraction, 4),
        "truncated": counters["truncated"], "empty": counters["empty"],
        "replaced_utf8": counters["replaced"],
        "rejected": read_stats.rejected, "compiles": st.compiles,
        "compile_seconds": round(st.compile_seconds, 2), "load_seconds": round(load_seconds, 2),
        "wall_seconds": round(wall, 2),
        "docs_per_s": round(embedded_docs / max(wall, 1e-9), 2),
        "real_tokens_per_s": round(st.real_tokens / max(wall, 1e-9), 1),
    }
    return summary


def main(argv=None) -> int:
    opts = resolve_options(argv)
    try:
        summary = run(opts)
    except (CorpusError, store_lib.StoreError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    width = max(len(k) for k in summary)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in summary.items()))
    if opts.get("summary_json"):
        Path(opts["summary_json"]).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
