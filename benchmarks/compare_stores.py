"""Are two stores byte-identical? ``python benchmarks/compare_stores.py STORE_A STORE_B``

Compares every file of the two store directories byte for byte. In ``manifest.json`` and
``shards/*.json`` the values that name when, where and from which absolute path a store was
written (``created``, ``finalized``, ``written``, ``host``, ``input``) are masked first: two runs of
the same command on the same input differ there and nowhere else. Exit status 0 when the stores
are identical; otherwise 1, listing the files that differ or exist on one side only.

Used to show that a refactoring leaves the stores of ``python -m keytok_jax.embed`` unchanged, e.g.
the example corpus and a 256-document SciFact slice written before and after.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

VOLATILE = ("created", "finalized", "written", "host", "input")
_VOLATILE_RE = re.compile(rb'("(?:%s)"\s*:\s*)"(?:[^"\\]|\\.)*"' % b"|".join(k.encode() for k in VOLATILE))


def _is_record(rel: Path) -> bool:
    return rel.as_posix() == "manifest.json" or (rel.parent.as_posix() == "shards" and rel.suffix == ".json")


def comparable_bytes(path: Path, rel: Path) -> bytes:
    data = path.read_bytes()
    return _VOLATILE_RE.sub(rb'\1"*"', data) if _is_record(rel) else data


def files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file()}


def differences(a: Path, b: Path) -> list[str]:
    """One line per file that differs or is on one side only (empty: identical)."""
    fa, fb = files(a), files(b)
    out = [f"only in {a}: {rel}" for rel in sorted(fa - fb)]
    out += [f"only in {b}: {rel}" for rel in sorted(fb - fa)]
    out += [f"differs: {rel}" for rel in sorted(fa & fb)
            if comparable_bytes(a / rel, rel) != comparable_bytes(b / rel, rel)]
    return out


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    a, b = map(Path, args)
    for p in (a, b):
        if not p.is_dir():
            print(f"error: {p} is not a store directory", file=sys.stderr)
            return 2
    diff = differences(a, b)
    if diff:
        print("\n".join(diff))
        return 1
    print(f"identical: {a} and {b} ({len(files(a))} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
