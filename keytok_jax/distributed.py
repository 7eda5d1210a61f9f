"""Several processes (hosts) in one job: starting ``jax.distributed`` and waiting for each other.

Coordinator, process count and id come from the arguments, else from ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``, else JAX detects them (SLURM, TPU pods, Open MPI).
CPU collectives go through gloo (the only ones XLA:CPU has across processes).
"""
from __future__ import annotations

import os

import jax
from jax.experimental import multihost_utils

__all__ = ["init_distributed", "barrier"]


def _pick(value, env: str, cast=str):
    if value is None and os.environ.get(env):
        value = cast(os.environ[env])
    return value


def init_distributed(coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> tuple[int, int]:
    """Start ``jax.distributed`` (once); returns (this process's index, process count)."""
    kwargs = {"coordinator_address": _pick(coordinator, "JAX_COORDINATOR_ADDRESS"),
              "num_processes": _pick(num_processes, "JAX_NUM_PROCESSES", int),
              "process_id": _pick(process_id, "JAX_PROCESS_ID", int)}
    if not jax.distributed.is_initialized():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(**{k: v for k, v in kwargs.items() if v is not None})
    return jax.process_index(), jax.process_count()


def barrier(name: str) -> None:
    """Wait until every process of the job reaches the barrier of this name (no-op alone)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"keytok_jax.embed: {name}")
