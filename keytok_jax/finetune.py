"""``python -m keytok_jax.finetune``: train a decoder backbone into a text embedder (SGPT-style).

InfoNCE over (anchor, positive[, hard negative]) examples with in-batch negatives; pooled with
the SGPT position-weighted mean (default) or the last token; LoRA (default), bias-only (BitFit) or
full fine-tuning with AdamW (optax). Training data: pair/triplet JSONL, NLI files (SentEval SNLI
folder or SimCSE csv) or a BEIR folder's train qrels (keytok_jax/train/data.py).

Checkpoints (orbax) go to ``OUTPUT/checkpoints`` every ``--save-every`` optimizer steps and at the
end; rerunning the same command resumes from the latest one at the same step, data position and
optimizer state (a rerun with different settings is refused, naming them). The result is exported
to ``OUTPUT/model``: a Hugging Face folder (model.safetensors with the adapters merged, config.json,
tokenizer) that keytok_jax and transformers both load, plus ``keytok.yaml``, the embedding preset it
was trained with::

    python -m keytok_jax.embed --config OUTPUT/model/keytok.yaml --input CORPUS --output STORE

Batches have a fixed number of examples and are padded to a multiple of 16 tokens (one compiled
program per length); the last incomplete batch of an epoch is dropped (its rows would otherwise be
missing negatives). With ``--accumulate N`` gradients are averaged over N micro-batches, but each
anchor's negatives are those of its own micro-batch.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("keytok_jax")

SEQ_MULTIPLE = 16
RUN_FIELDS = ("model", "data", "data_format", "split", "mode", "rank", "alpha", "lora_targets",
              "pooling", "prompt", "instruction", "instruction_format", "attention", "max_length",
              "add_eos", "negatives", "temperature", "batch_size", "accumulate", "lr", "warmup",
              "weight_decay", "max_grad_norm", "epochs", "max_steps", "seed", "limit")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m keytok_jax.finetune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    io = p.add_argument_group("data and output")
    io.add_argument("--data", required=True,
                    help="training data: a .jsonl of {anchor, positive[, negative]}, an NLI folder "
                         "(SentEval s1/s2/labels.SPLIT) or SimCSE csv (sent0,sent1,hard_neg), or a BEIR "
                         "folder (queries.jsonl, corpus.jsonl, qrels/SPLIT.tsv)")
    io.add_argument("--data-format", default="auto", choices=["auto", "jsonl", "nli", "beir"],
                    help="format of --data (default: from the path)")
    io.add_argument("--split", help="BEIR qrels split (default: train) or NLI splits, comma-separated "
                                    "(default: every split in the folder)")
    io.add_argument("--limit", type=int, help="use only the first N examples (after reading, before shuffling)")
    io.add_argument("--output", required=True,
                    help="run directory: checkpoints/, train_log.jsonl, summary.json and the exported model/")
    io.add_argument("--eval-sts", metavar="FILE",
                    help="STS file (STS-B sts-*.csv or SentEval STS.input.*) whose Spearman correlation "
                         "is measured before training and after, recorded in summary.json")

    m = p.add_argument_group("model and embedding")
    m.add_argument("--model", default="smollm2-135m",
                   help="backbone: alias, Hugging Face folder, .gguf file or hub id (default: %(default)s)")
    m.add_argument("--pooling", default="weighted_mean", choices=["weighted_mean", "mean", "last"],
                   help="SGPT position-weighted mean, mean, or last token (default: %(default)s)")
    m.add_argument("--prompt", default="none",
                   help="prompt template with {text}, or a name: none, prompteol (default: %(default)s)")
    m.add_argument("--instruction", help="instruction prepended to every text with --instruction-format")
    m.add_argument("--instruction-format", default="plain",
                   help="template with {instruction} and {text}, or a name: e5-mistral, gritlm, llm2vec, "
                        "plain (default: %(default)s)")
    m.add_argument("--attention", default="causal", choices=["causal", "bidirectional"],
                   help="attention mask during training and in the exported preset (default: %(default)s)")
    m.add_argument("--add-eos", action="store_true", help="append the EOS token to every text")
    m.add_argument("--max-length", type=int, default=128,
                   help="max tokens per text incl. template; longer texts are truncated (default: %(default)s)")

    t = p.add_argument_group("training")
    t.add_argument("--mode", default="lora", choices=["lora", "bias", "full"],
                   help="what is trained: LoRA adapters, biases only (BitFit; needs an architecture with "
                        "biases), or every parameter (default: %(default)s)")
    t.add_argument("--rank", type=int, default=8, help="LoRA rank (default: %(default)s)")
    t.add_argument("--alpha", type=float, default=16.0, help="LoRA scale numerator: update = alpha/rank * A@B "
                                                              "(default: %(default)s)")
    t.add_argument("--lora-targets", default="attn,mlp",
                   help="comma-separated module names whose kernels get LoRA: attn, mlp, or single "
                        "projections (q, k, v, o, gate, up, down, fc_in, fc_out) (default: %(default)s)")
    t.add_argument("--negatives", default="auto", choices=["auto", "hard", "in-batch"],
                   help="hard: use each example's hard negative too (examples without one are dropped); "
                        "in-batch: ignore hard negatives; auto: hard when every example has one "
                        "(default: %(default)s)")
    t.add_argument("--temperature", type=float, default=0.05,
                   help="InfoNCE temperature (default: %(default)s, SimCSE/SGPT's 20x scale)")
    t.add_argument("--batch-size", type=int, default=32, help="examples per micro-batch (default: %(default)s)")
    t.add_argument("--accumulate", type=int, default=1,
                   help="micro-batches per optimizer step (gradient accumulation; default: %(default)s)")
    t.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (default: %(default)s)")
    t.add_argument("--warmup", type=int, default=10,
                   help="optimizer steps of linear warm-up before the linear decay to 0 (default: %(default)s)")
    t.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default: %(default)s)")
    t.add_argument("--max-grad-norm", type=float, default=1.0, help="global-norm clipping (default: %(default)s)")
    t.add_argument("--epochs", type=float, default=1.0, help="passes over the data (default: %(default)s)")
    t.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (overrides --epochs)")
    t.add_argument("--seed", type=int, default=0, help="data order and LoRA init (default: %(default)s)")
    t.add_argument("--save-every", type=int, default=50,
                   help="checkpoint every N optimizer steps, and at the end (default: %(default)s)")
    t.add_argument("--keep", type=int, default=2, help="checkpoints kept (default: %(default)s)")
    t.add_argument("--no-export", action="store_true", help="do not export OUTPUT/model at the end")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


# ------------------------------------------------------------------ batches

def _pad_to(n: int, multiple: int = SEQ_MULTIPLE) -> int:
    return -(-n // multiple) * multiple


class Batches:
    """Fixed-size micro-batches of tokenized examples in a seeded per-epoch order.

    Micro-batch ``m`` is a pure function of ``m`` (epoch ``m // per_epoch``, position
    ``m % per_epoch`` in that epoch's permutation), so a resumed run continues exactly where the
    checkpoint was taken."""

    def __init__(self, tokenized: list[list], batch_size: int, max_length: int, seed: int):
        self.roles = len(tokenized)
        self.docs = tokenized                    # [roles][examples] TokenizedDoc
        self.n = len(tokenized[0])
        self.batch_size, self.seed = batch_size, seed
        self.max_len = _pad_to(max_length)
        self.per_epoch = self.n // batch_size
        if self.per_epoch < 1:
            raise ValueError(f"{self.n} examples do not fill one batch of {batch_size}")
        self._order: dict[int, np.ndarray] = {}

    def order(self, epoch: int) -> np.ndarray:
        if epoch not in self._order:
            self._order = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._order[epoch]

    def __call__(self, micro_step: int):
        """ids, mask, pool_mask: int32 [roles * batch, T], right-padded with 0."""
        epoch, pos = divmod(micro_step, self.per_epoch)
        rows = self.order(epoch)[pos * self.batch_size:(pos + 1) * self.batch_size]
        docs = [self.docs[r][i] for r in range(self.roles) for i in rows]
        seq = min(_pad_to(max(len(d.ids) for d in docs)), self.max_len)
        from .prompts import pad_batch

        return pad_batch(docs, len(docs), seq)


# ------------------------------------------------------------------ run

def _fingerprint(opts: dict, model) -> dict:
    from .embed import _model_identity

    run = {k: opts.get(k) for k in RUN_FIELDS}
    run["model_identity"] = _model_identity(model)
    run["data"] = str(Path(opts["data"]).resolve())
    return run


def _check_resume(meta_path: Path, run: dict) -> None:
    if not meta_path.exists():
        meta_path.write_text(json.dumps(run, indent=1))
        return
    old = json.loads(meta_path.read_text())
    changed = sorted(k for k in set(old) | set(run) if old.get(k) != run.get(k))
    if changed:
        raise SystemExit(f"{meta_path.parent} holds a run with other settings ({', '.join(changed)}: "
                         f"{', '.join(f'{old.get(k)!r} -> {run.get(k)!r}' for k in changed)}); "
                         f"use another --output or the original settings")


def _checkpoint_manager(path: Path, keep: int):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(path.resolve(), options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=False))


def sts_spearman(model, settings, path) -> dict:
    """Spearman correlation (x100) of cosine similarities with the gold scores of an STS file."""
    from .embedder import Embedder
    from .sts import evaluate_sts

    return evaluate_sts(Embedder(model, settings), path)


def train(opts: dict, stop_after: int | None = None) -> dict:
    """Run (or resume) training as ``opts`` (the parsed flags) say. ``stop_after``: return after
    that many optimizer steps of this call without the final save or export (tests simulate a
    kill with it)."""
    import jax
    import jax.numpy as jnp

    from .embedder import EmbedSettings
    from .loading import load_model
    from .prompts import DocTokenizer
    from .store import FLAG_TRUNCATED
    from .train import data as train_data
    from .train.objectives import (Adapter, combine, count, frozen_part, init_trainable,
                                   make_optimizer, make_train_step, merge_lora)

    t_start = time.perf_counter()
    out = Path(opts["output"])
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(opts["model"], dtype="float32")
    if model.tokenizer is None:
        raise SystemExit(f"{opts['model']} has no tokenizer; training needs one")
    settings = EmbedSettings(pooling=opts["pooling"], prompt=opts["prompt"], instruction=opts.get("instruction"),
                             instruction_format=opts["instruction_format"], add_eos=opts["add_eos"],
                             attention=opts["attention"], max_length=opts["max_length"])
    run = _fingerprint(opts, model)
    _check_resume(out / "run.json", run)

    examples = train_data.read_examples(opts["data"], opts["data_format"], split=opts.get("split"))
    n_read = len(examples)
    if opts.get("limit"):
        examples = examples[: opts["limit"]]
    with_negative = sum(e.negative is not None for e in examples)
    use_hard = opts["negatives"] == "hard" or (opts["negatives"] == "auto" and with_negative > 0)
    dropped = len(examples) - with_negative if use_hard else 0
    if use_hard:
        examples = [e for e in examples if e.negative is not None]
    tok = DocTokenizer(model.tokenizer, settings.template(), settings.max_length)
    roles = [[e.anchor for e in examples], [e.positive for e in examples]]
    if use_hard:
        roles.append([e.negative for e in examples])
    batches = Batches([tok(texts) for texts in roles], opts["batch_size"], settings.max_length, opts["seed"])
    truncated = sum(bool(d.flags & FLAG_TRUNCATED) for docs in batches.docs for d in docs)

    accumulate = opts["accumulate"]
    steps_per_epoch = batches.per_epoch // accumulate
    if steps_per_epoch < 1:
        raise SystemExit(f"{batches.per_epoch} micro-batches per epoch cannot fill one optimizer step of "
                         f"--accumulate {accumulate}")
    total_steps = opts.get("max_steps") or max(1, int(round(opts["epochs"] * steps_per_epoch)))

    adapter = Adapter(opts["mode"], opts["rank"], opts["alpha"],
                      tuple(t.strip() for t in opts["lora_targets"].split(",") if t.strip()))
    optimizer, schedule = make_optimizer(opts["lr"], total_steps, opts["warmup"], opts["weight_decay"],
                                         opts["max_grad_norm"], accumulate)
    trainable = init_trainable(model.params, adapter, jax.random.PRNGKey(opts["seed"]))
    frozen = frozen_part(model.params, adapter)
    opt_state = optimizer.init(trainable)
    module = model.module(settings.attention)
    step_fn = make_train_step(module, adapter, optimizer, settings.pooling, batches.roles, opts["temperature"])

    manager = _checkpoint_manager(out / "checkpoints", opts.get("keep", 2))
    step = 0
    log_path = out / "train_log.jsonl"
    history = [json.loads(l) for l in log_path.read_text().splitlines()] if log_path.exists() else []
    if manager.latest_step() is not None:
        import orbax.checkpoint as ocp

        step = manager.latest_step()
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), (trainable, opt_state))
        restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
        trainable, opt_state = restored
        history = [h for h in history if h["step"] <= step]   # steps after the checkpoint are redone
        log.info("resuming %s at step %d", out, step)
    log_path.write_text("".join(json.dumps(h) + "\n" for h in history))

    summary = {"examples": len(examples), "examples_read": n_read, "dropped_without_negative": dropped,
               "hard_negatives": use_hard, "truncated_texts": truncated,
               "micro_batches_per_epoch": batches.per_epoch, "total_steps": total_steps,
               "trainable_parameters": count(trainable), "model_parameters": count(model.params),
               "resumed_at": step, "settings": run}
    if opts.get("eval_sts") and step == 0 and not (out / "sts_before.json").exists():
        before = sts_spearman(model, settings, opts["eval_sts"])
        (out / "sts_before.json").write_text(json.dumps(before))

    bar = None
    if not opts.get("no_progress"):
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=step, unit="step", desc="finetune", dynamic_ncols=True)
    examples_per_step = opts["batch_size"] * accumulate
    t_loop, steps_here, compile_s, compile_steps = time.perf_counter(), 0, 0.0, 0
    seen_shapes = set()
    with open(log_path, "a") as log_file:
        while step < total_steps:
            t0 = time.perf_counter()
            metrics, compiled = [], False
            for micro in range(step * accumulate, (step + 1) * accumulate):
                ids, mask, pool_mask = batches(micro)
                compiled |= ids.shape not in seen_shapes
                seen_shapes.add(ids.shape)
                trainable, opt_state, m = step_fn(trainable, opt_state, frozen, ids, mask, pool_mask)
                metrics.append(m)
            metrics = {k: float(np.mean([float(m[k]) for m in metrics])) for k in metrics[0]}
            step += 1
            steps_here += 1
            elapsed = time.perf_counter() - t0
            if compiled:   # steps that compiled a new shape: kept out of the throughput
                compile_steps, compile_s = compile_steps + 1, compile_s + elapsed
            record = {"step": step, **metrics, "lr": float(schedule(step - 1)),
                      "examples_per_s": examples_per_step / elapsed, "seconds": elapsed}
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            history.append(record)
            if bar is not None:
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['accuracy']:.2f}",
                                ex_s=f"{record['examples_per_s']:.1f}", refresh=False)
                bar.update(1)
            if step % opts["save_every"] == 0 or step == total_steps:
                import orbax.checkpoint as ocp

                manager.save(step, args=ocp.args.StandardSave((trainable, opt_state)))
                manager.wait_until_finished()
            if stop_after is not None and steps_here >= stop_after:
                break
    if bar is not None:
        bar.close()
    manager.close()
    train_seconds = time.perf_counter() - t_loop
    timed_steps = steps_here - compile_steps
    summary.update({"steps": step, "steps_this_run": steps_here, "train_seconds": train_seconds,
                    "steps_with_compilation": compile_steps, "seconds_of_steps_with_compilation": compile_s,
                    "examples_per_s": (timed_steps * examples_per_step / max(train_seconds - compile_s, 1e-9)
                                       if timed_steps else None),
                    "first_loss": history[0]["loss"] if history else None,
                    "last_loss": float(np.mean([h["loss"] for h in history[-10:]])) if history else None})
    final_params = merge_lora(combine(frozen, trainable, adapter))
    summary["final_params"] = final_params
    if stop_after is not None and step < total_steps:
        return summary

    tuned = dataclasses.replace(model, params=jax.tree.map(jnp.asarray, final_params))
    if opts.get("eval_sts"):
        summary["sts_before"] = json.loads((out / "sts_before.json").read_text()) \
            if (out / "sts_before.json").exists() else None
        summary["sts_after"] = sts_spearman(tuned, settings, opts["eval_sts"])
    if not opts.get("no_export"):
        export(tuned, settings, out / "model")
        summary["exported"] = str(out / "model")
    summary["wall_seconds"] = time.perf_counter() - t_start
    (out / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "final_params"},
                                                 indent=1, default=str))
    return summary


def export(model, settings, folder: Path) -> None:
    """Hugging Face folder of ``model`` plus ``keytok.yaml``: the embed preset it was trained for."""
    import yaml

    from .loading import save_hf_folder

    save_hf_folder(model, folder)
    preset = {"description": f"embedder fine-tuned by python -m keytok_jax.finetune from {model.source}",
              "model": str(folder.resolve()), "pooling": settings.pooling, "prompt": settings.prompt,
              "attention": settings.attention, "max_length": settings.max_length, "add_eos": settings.add_eos}
    if settings.instruction:
        preset.update(instruction=settings.instruction, instruction_format=settings.instruction_format)
    (folder / "keytok.yaml").write_text(yaml.safe_dump(preset, sort_keys=False))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    for name in ("batch_size", "accumulate", "save_every", "rank"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    from .train.data import CorpusError

    try:
        summary = train(vars(args))
    except (CorpusError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    shown = {k: v for k, v in summary.items() if k not in ("final_params", "settings")}
    print(json.dumps(shown, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
