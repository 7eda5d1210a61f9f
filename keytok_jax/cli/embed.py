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
import errno
import json
from pathlib import Path

from ..errors import PathError
from ..pipeline.job import run
from ..settings import JOB_GROUPS, JOB_PRESET, JobSettings, defaults, resolve
from .common import add_settings, new_parser, print_table, run_command

__all__ = ["build_parser", "resolve_options", "options_from_args", "main"]

JOB_CLASSES = [cls for _, classes in JOB_GROUPS for cls in classes]


def build_parser() -> argparse.ArgumentParser:
    p = new_parser("python -m keytok_jax.embed", __doc__)
    shown = {**defaults(*JOB_CLASSES), **JOB_PRESET}
    for i, (title, classes) in enumerate(JOB_GROUPS):
        group = p.add_argument_group(title)
        if i == 0:
            group.add_argument("--config", default=argparse.SUPPRESS,
                               help="YAML preset (e.g. configs/smollm2.yaml); flags override it")
        add_settings(group, classes, shown)
    return p


def options_from_args(args: argparse.Namespace) -> dict:
    """Every option of the job: class defaults → the built-in preset (settings.JOB_PRESET) →
    ``--config`` → the flags given. Unknown preset keys raise SettingsError."""
    flags = dict(vars(args))
    flags.pop("debug", None)
    config = flags.pop("config", None)
    return resolve(JOB_CLASSES, flags, preset=JOB_PRESET, config=config)


def resolve_options(argv=None) -> dict:
    """:func:`options_from_args` of a command line (a bad flag raises UsageError)."""
    return options_from_args(build_parser().parse_args(argv))


# OS errors that only writing raises: without a file name (a write() or a flush on a full disk
# has none) they are about the store, the only large thing the job writes.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def _run_job(job: JobSettings) -> dict:
    """:func:`keytok_jax.pipeline.job.run` (which checks paths and flags before the model loads),
    a nameless write error named after the store."""
    try:
        return run(job)
    except OSError as e:
        if e.filename is None and e.errno in WRITE_ERRNOS:
            raise PathError(f"--output {job.output.output}: {e.strerror} (the finished shards "
                            "are kept: make room and rerun the same command)") from e
        raise


def _embed(args: argparse.Namespace) -> int:
    job = JobSettings.from_options(options_from_args(args))
    summary = _run_job(job)
    print_table(summary)
    if job.output.summary_json:
        Path(job.output.summary_json).write_text(json.dumps(summary, indent=2))
    return 0


def main(argv=None) -> int:
    return run_command(build_parser(), argv, _embed)
