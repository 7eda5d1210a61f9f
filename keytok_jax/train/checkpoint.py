"""What makes a rerun a resume: the run's fingerprint, orbax checkpoints and the step log.

``OUTPUT/run.json`` records every setting that changes the trained parameters; a rerun with
other settings is refused, naming them, instead of silently mixing two runs. Checkpoints hold the
trainable parameters and the optimizer state every ``--save-every`` optimizer steps; since the
micro-batch order is a pure function of the step (:class:`~keytok_jax.train.batches.Batches`), a
resumed run ends bit-identical to an uninterrupted one. Log lines of steps after the checkpoint
are dropped, as those steps are redone.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import jax

from ..errors import SettingsError
from ..pipeline import model_identity

__all__ = ["RUN_FIELDS", "fingerprint", "check_resume", "Checkpoints", "read_log"]

RUN_FIELDS = ("model", "data", "data_format", "split", "mode", "rank", "alpha", "lora_targets",
              "pooling", "prompt", "instruction", "instruction_format", "attention", "max_length",
              "add_eos", "negatives", "temperature", "batch_size", "accumulate", "lr", "warmup",
              "weight_decay", "max_grad_norm", "epochs", "max_steps", "seed", "limit")


def fingerprint(opts: Mapping, model) -> dict:
    run = {k: opts.get(k) for k in RUN_FIELDS}
    run["model_identity"] = model_identity(model)
    run["data"] = str(Path(opts["data"]).resolve())
    return run


def check_resume(meta_path: Path, run: dict) -> None:
    """Record ``run`` in a new run directory; refuse one that holds a run with other settings."""
    if not meta_path.exists():
        meta_path.write_text(json.dumps(run, indent=1))
        return
    old = json.loads(meta_path.read_text())
    changed = sorted(k for k in set(old) | set(run) if old.get(k) != run.get(k))
    if changed:
        raise SettingsError(f"{meta_path.parent} holds a run with other settings ({', '.join(changed)}: "
                            f"{', '.join(f'{old.get(k)!r} -> {run.get(k)!r}' for k in changed)}); "
                            f"use another --output or the original settings")


class Checkpoints:
    """Synchronous orbax checkpoints of a pytree, keeping the latest ``keep``."""

    def __init__(self, path: Path, keep: int):
        import orbax.checkpoint as ocp

        self.manager = ocp.CheckpointManager(path.resolve(), options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, step: int, like):
        """The state saved at ``step``, with the structure, shapes and dtypes of ``like``."""
        import orbax.checkpoint as ocp

        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), like)
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def save(self, step: int, state) -> None:
        import orbax.checkpoint as ocp

        self.manager.save(step, args=ocp.args.StandardSave(state))
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def read_log(log_path: Path, resumed_at: int | None) -> list[dict]:
    """The step records of the log up to the checkpoint ``resumed_at`` (None: no checkpoint, so
    none of them: a run killed before its first checkpoint starts over). The log is rewritten to
    hold them, so each step is logged once."""
    history = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []
    history = [h for h in history if h["step"] <= (resumed_at or 0)]
    log_path.write_text("".join(json.dumps(h) + "\n" for h in history))
    return history
