"""The training run as named steps: prepare → trainer → resume → steps → finish.

``train`` runs (or resumes) one run directory: the backbone and the training set are prepared
and checked against the directory's fingerprint, the trainable parameters and optimizer are built
(or restored from the latest checkpoint), optimizer steps run with a checkpoint every
``save_every`` steps, and the merged model is evaluated on STS and exported. With ``--accumulate
N`` gradients are averaged over N micro-batches, but each anchor's negatives are those of its own
micro-batch.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ..analysis.sts import evaluate_sts
from ..errors import SettingsError
from ..loading import load_model
from ..model import KeytokModel
from ..pipeline import DocTokenizer, Embedder, EmbedSettings
from ..settings import build, resolve
from ..settings.train import FINETUNE_CLASSES, TrainSettings
from . import data as train_data
from .batches import TrainingSet, training_set
from .checkpoint import Checkpoints, check_resume, fingerprint, read_log
from .export import export
from .objectives import (Adapter, combine, count, frozen_part, init_trainable, make_optimizer,
                         make_train_step, merge_lora)

__all__ = ["train", "sts_spearman"]

log = logging.getLogger("keytok_jax")


@dataclass
class Run:
    """What a run is made of, built once: the backbone, the embedding trained for, the batches."""
    out: Path
    model: KeytokModel
    embed: EmbedSettings
    fingerprint: dict
    data: TrainingSet
    total_steps: int


@dataclass
class Trainer:
    """What stays fixed while training: the trainable set's shape, the frozen parameters, the
    jitted step and the learning-rate schedule (logged with each step)."""
    adapter: Adapter
    frozen: Any
    step_fn: Callable
    schedule: Callable


@dataclass
class State:
    """What changes from step to step, and what a checkpoint restores."""
    trainable: Any
    opt_state: Any
    step: int = 0
    history: list = field(default_factory=list)


@dataclass
class Progress:
    """This call's steps and time, steps that compiled a new shape kept apart from throughput."""
    started: float
    steps: int = 0
    compile_steps: int = 0
    compile_seconds: float = 0.0


def sts_spearman(model, settings, path) -> dict:
    """Spearman correlation (x100) of cosine similarities with the gold scores of an STS file."""
    return evaluate_sts(Embedder(model, settings), path)


def train(opts: Mapping, stop_after: int | None = None) -> dict:
    """Run (or resume) training as ``opts`` (the parsed flags; missing keys take their defaults)
    say. ``stop_after``: return after that many optimizer steps of this call without the final
    save or export (tests simulate a kill with it)."""
    t_start = time.perf_counter()
    opts = resolve(FINETUNE_CLASSES, opts)
    cfg = build(TrainSettings, opts)
    run = prepare(opts, cfg)
    trainer, state = make_trainer(run, cfg)
    checkpoints = Checkpoints(run.out / "checkpoints", cfg.keep)
    resume(state, checkpoints, run.out)
    summary = {**run.data.report(), "micro_batches_per_epoch": run.data.batches.per_epoch,
               "total_steps": run.total_steps, "trainable_parameters": count(state.trainable),
               "model_parameters": count(run.model.params), "resumed_at": state.step,
               "settings": run.fingerprint}
    before = run.out / "sts_before.json"
    if opts["eval_sts"] and state.step == 0 and not before.exists():
        before.write_text(json.dumps(sts_spearman(run.model, run.embed, opts["eval_sts"])))
    progress = run_steps(run, trainer, state, checkpoints, cfg, stop_after)
    checkpoints.close()
    summary.update(progress_report(progress, state, cfg))
    summary["final_params"] = merge_lora(combine(trainer.frozen, state.trainable, trainer.adapter))
    if stop_after is not None and state.step < run.total_steps:
        return summary
    return finish(run, summary, opts, t_start)


def prepare(opts: Mapping, cfg: TrainSettings) -> Run:
    """Load the backbone, refuse a run directory holding other settings, and batch the data."""
    out = Path(opts["output"])
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(opts["model"], dtype="float32")
    if model.tokenizer is None:
        raise SettingsError(f"{opts['model']} has no tokenizer; training needs one")
    embed = build(EmbedSettings, opts)   # the flags it shares with the embed job
    run = fingerprint(opts, model)
    check_resume(out / "run.json", run)
    examples = train_data.read_examples(opts["data"], opts["data_format"], split=opts["split"])
    tokenize = DocTokenizer(model.tokenizer, embed.template(), embed.max_length)
    data = training_set(examples, tokenize, limit=opts["limit"], negatives=cfg.negatives,
                        batch_size=cfg.batch_size, max_length=embed.max_length, seed=cfg.seed)
    steps_per_epoch = data.batches.per_epoch // cfg.accumulate
    if steps_per_epoch < 1:
        raise SettingsError(f"{data.batches.per_epoch} micro-batches per epoch cannot fill one "
                            f"optimizer step of --accumulate {cfg.accumulate}")
    total_steps = cfg.max_steps or max(1, int(round(cfg.epochs * steps_per_epoch)))
    return Run(out, model, embed, run, data, total_steps)


def make_trainer(run: Run, cfg: TrainSettings) -> tuple[Trainer, State]:
    """The trainable set (seeded), the frozen rest, the optimizer and the jitted step."""
    adapter = Adapter(cfg.mode, cfg.rank, cfg.alpha,
                      tuple(t.strip() for t in cfg.lora_targets.split(",") if t.strip()))
    optimizer, schedule = make_optimizer(cfg.lr, run.total_steps, cfg.warmup, cfg.weight_decay,
                                         cfg.max_grad_norm, cfg.accumulate)
    trainable = init_trainable(run.model.params, adapter, jax.random.PRNGKey(cfg.seed))
    frozen = frozen_part(run.model.params, adapter)
    state = State(trainable, optimizer.init(trainable))
    module = run.model.module(run.embed.attention)
    step_fn = make_train_step(module, adapter, optimizer, run.embed.pooling, run.data.batches.roles,
                              cfg.temperature)
    return Trainer(adapter, frozen, step_fn, schedule), state


def resume(state: State, checkpoints: Checkpoints, out: Path) -> None:
    """Continue from the latest checkpoint, if any: its parameters, optimizer state and step."""
    step = checkpoints.latest_step()
    if step is not None:
        state.trainable, state.opt_state = checkpoints.restore(step, (state.trainable, state.opt_state))
        state.step = step
        log.info("resuming %s at step %d", out, step)
    state.history = read_log(out / "train_log.jsonl", step)


def optimizer_step(trainer: Trainer, run: Run, state: State, accumulate: int,
                   seen_shapes: set) -> tuple[dict, bool]:
    """The micro-batches of optimizer step ``state.step``: (mean metrics, whether one compiled)."""
    metrics, compiled = [], False
    for micro in range(state.step * accumulate, (state.step + 1) * accumulate):
        ids, mask, pool_mask = run.data.batches(micro)
        compiled |= ids.shape not in seen_shapes
        seen_shapes.add(ids.shape)
        state.trainable, state.opt_state, m = trainer.step_fn(state.trainable, state.opt_state,
                                                              trainer.frozen, ids, mask, pool_mask)
        metrics.append(m)
    return {k: float(np.mean([float(m[k]) for m in metrics])) for k in metrics[0]}, compiled


def run_steps(run: Run, trainer: Trainer, state: State, checkpoints: Checkpoints, cfg: TrainSettings,
              stop_after: int | None) -> Progress:
    """Optimizer steps up to the total (or ``stop_after`` of them), each logged as it ends and
    checkpointed every ``save_every`` and at the last."""
    bar = None if cfg.no_progress else _progress_bar(run.total_steps, state.step)
    examples_per_step = cfg.batch_size * cfg.accumulate
    progress, seen_shapes = Progress(time.perf_counter()), set()
    with open(run.out / "train_log.jsonl", "a") as log_file:
        while state.step < run.total_steps:
            t0 = time.perf_counter()
            metrics, compiled = optimizer_step(trainer, run, state, cfg.accumulate, seen_shapes)
            state.step += 1
            progress.steps += 1
            elapsed = time.perf_counter() - t0
            if compiled:
                progress.compile_steps += 1
                progress.compile_seconds += elapsed
            record = {"step": state.step, **metrics, "lr": float(trainer.schedule(state.step - 1)),
                      "examples_per_s": examples_per_step / elapsed, "seconds": elapsed}
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            state.history.append(record)
            if bar is not None:
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['accuracy']:.2f}",
                                ex_s=f"{record['examples_per_s']:.1f}", refresh=False)
                bar.update(1)
            if state.step % cfg.save_every == 0 or state.step == run.total_steps:
                checkpoints.save(state.step, (state.trainable, state.opt_state))
            if stop_after is not None and progress.steps >= stop_after:
                break
    if bar is not None:
        bar.close()
    return progress


def _progress_bar(total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", desc="finetune", dynamic_ncols=True)


def progress_report(progress: Progress, state: State, cfg: TrainSettings) -> dict:
    """The summary's timing and loss fields."""
    train_seconds = time.perf_counter() - progress.started
    timed_steps = progress.steps - progress.compile_steps
    examples_per_step = cfg.batch_size * cfg.accumulate
    history = state.history
    return {"steps": state.step, "steps_this_run": progress.steps, "train_seconds": train_seconds,
            "steps_with_compilation": progress.compile_steps,
            "seconds_of_steps_with_compilation": progress.compile_seconds,
            "examples_per_s": (timed_steps * examples_per_step
                               / max(train_seconds - progress.compile_seconds, 1e-9)
                               if timed_steps else None),
            "first_loss": history[0]["loss"] if history else None,
            "last_loss": float(np.mean([h["loss"] for h in history[-10:]])) if history else None}


def finish(run: Run, summary: dict, opts: Mapping, t_start: float) -> dict:
    """STS after training, the export, and summary.json (without the parameters)."""
    tuned = dataclasses.replace(run.model, params=jax.tree.map(jnp.asarray, summary["final_params"]))
    if opts["eval_sts"]:
        before = run.out / "sts_before.json"
        summary["sts_before"] = json.loads(before.read_text()) if before.exists() else None
        summary["sts_after"] = sts_spearman(tuned, run.embed, opts["eval_sts"])
    if not opts["no_export"]:
        export(tuned, run.embed, run.out / "model")
        summary["exported"] = str(run.out / "model")
    summary["wall_seconds"] = time.perf_counter() - t_start
    (run.out / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "final_params"},
                                                     indent=1, default=str))
    return summary
