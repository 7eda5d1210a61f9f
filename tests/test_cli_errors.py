"""One error path for every command (issue 19, items 4 and 5): each expected failure is one line
``error: <path or flag>: <problem>`` on standard error and exit status 2 (Ctrl-C: ``error:
interrupted``, 130), never a traceback unless ``--debug``; and what is on disk afterwards is still
right: nothing created when the command is refused at the start, an interrupted or failed store
resumable to the store an uninterrupted run writes, a store that was read left untouched."""
import errno
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import one_error
from keytok_jax import store as store_lib
from keytok_jax.cli.common import EXIT_INTERRUPTED
from keytok_jax.embed import main as embed_main
from keytok_jax.errors import SettingsError
from keytok_jax.export import main as export_main
from keytok_jax.retrieval import export_store
from keytok_jax.search import main as search_main
from keytok_jax.show import main as show_main
from keytok_jax.spectral import main as spectral_main
from keytok_jax.store import fileio

ROOT = os.geteuid() == 0   # file modes do not stop root: other ways to make a path unwritable

DOCS = [("d1", "the cat sat on the mat"), ("d2", "dogs chase cats"), ("d3", "a bird in the hand"),
        ("d4", "fish swim in the sea"), ("d5", "the sun is a star"), ("d6", "rain falls on plains")]


def tree(path: Path, skip: str = "") -> dict:
    """Every file under ``path`` with its bytes (what "untouched" compares), less those under
    ``skip`` (a store's derived ``index/``, which a search builds on first use)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and not (skip and p.relative_to(path).parts[0] == skip)}


def content(path) -> tuple:
    s = store_lib.open(path)
    return (s.ids, np.asarray(s.token_ids.read().result()),
            np.asarray(s.token_weights.read().result()))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    path = d / "c.jsonl"
    path.write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in DOCS))
    return path


@pytest.fixture(scope="module")
def base(tiny_folder):
    return ["--model", str(tiny_folder), "--max-length", "32", "--top-k", "4", "--no-progress",
            "--shard-size", "2"]


@pytest.fixture(scope="module")
def clean_store(corpus, base, tmp_path_factory):
    """The store an uninterrupted run writes (3 shards of 2 rows)."""
    out = tmp_path_factory.mktemp("clean") / "store"
    assert embed_main(base + ["--input", str(corpus), "--output", str(out)]) == 0
    return out


# ------------------------------------------------------------------ refused before anything runs

def test_bad_flags_are_one_line(capsys, corpus, tmp_path):
    assert embed_main(["--input", str(corpus)]) == 2
    one_error(capsys, "--output", "required")
    assert embed_main(["--input", str(corpus), "--output", str(tmp_path / "s"), "--top-k", "x"]) == 2
    one_error(capsys, "--top-k", "invalid int value")
    assert embed_main(["--input", str(corpus), "--output", str(tmp_path / "s"), "--nope"]) == 2
    one_error(capsys, "--nope", "unrecognized")
    assert embed_main(["--input", str(corpus), "--output", str(tmp_path / "s"), "--shard-size",
                       "0"]) == 2
    one_error(capsys, "--shard-size", "positive")
    assert embed_main(["--input", str(corpus), "--output", str(tmp_path / "s"), "--bucket-step",
                       "-8"]) == 2
    one_error(capsys, "--bucket-step", "positive")
    assert spectral_main(["nope"]) == 2
    one_error(capsys, "invalid choice")
    assert list(tmp_path.iterdir()) == []


def test_input_errors_come_before_the_model_and_the_store(capsys, corpus, tmp_path):
    # A model path that does not exist: had the model been loaded first, its error would show.
    base = ["--model", str(tmp_path / "no-model"), "--no-progress"]
    out = tmp_path / "store"
    assert embed_main(base + ["--input", str(tmp_path / "missing.jsonl"), "--output", str(out)]) == 2
    one_error(capsys, "--input", "missing.jsonl", "no such file")
    odd = tmp_path / "corpus.data"
    odd.write_text("x\n")
    assert embed_main(base + ["--input", str(odd), "--output", str(out)]) == 2
    one_error(capsys, "--input", "cannot tell the format", "--format")
    assert embed_main(base + ["--input", str(tmp_path), "--output", str(out)]) == 2
    one_error(capsys, "BEIR folder without corpus.jsonl")
    assert embed_main(base + ["--input", str(corpus), "--output", str(out), "--shift",
                              str(tmp_path / "shift.json")]) == 2
    one_error(capsys, "--shift", "no such file")
    assert embed_main(base + ["--input", str(corpus), "--output", str(out), "--config",
                              str(tmp_path / "missing.yaml")]) == 2
    one_error(capsys, "missing.yaml", "cannot read the preset")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["corpus.data"]


def test_output_under_a_regular_file(capsys, corpus, base, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory\n")
    assert embed_main(base + ["--input", str(corpus), "--output", str(blocker / "store")]) == 2
    one_error(capsys, "--output", str(blocker), "not a directory")
    assert embed_main(base + ["--input", str(corpus), "--output", str(blocker)]) == 2
    one_error(capsys, "--output", "not a directory")
    assert blocker.read_text() == "not a directory\n" and sorted(tmp_path.iterdir()) == [blocker]


def test_read_only_output(capsys, corpus, base, tmp_path, clean_store):
    if ROOT:
        # Root writes through file modes; /proc refuses new directories to everyone.
        out = Path("/proc/keytok-test/store")
        assert embed_main(base + ["--input", str(corpus), "--output", str(out)]) == 2
        one_error(capsys, "/proc/keytok-test")
        assert not out.exists()
        return
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert embed_main(base + ["--input", str(corpus), "--output", str(locked / "s")]) == 2
        one_error(capsys, "--output", "not writable")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_unwritable_rejects_and_summary_json(capsys, corpus, base, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(corpus.read_text() + "not json\n")
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = tmp_path / "store"
    run = base + ["--input", str(bad), "--output", str(out), "--on-error", "skip"]
    assert embed_main(run + ["--rejects", str(blocker / "r.jsonl")]) == 2
    one_error(capsys, "--rejects", "not a directory")
    assert embed_main(run + ["--rejects", str(tmp_path)]) == 2
    one_error(capsys, "--rejects", "is a directory")
    assert embed_main(run + ["--summary-json", str(blocker / "s.json")]) == 2
    one_error(capsys, "--summary-json", "not a directory")
    assert embed_main(run + ["--summary-json", str(tmp_path / "no-dir" / "s.json")]) == 2
    one_error(capsys, "--summary-json", "does not exist")
    assert embed_main(run + ["--rejects", str(bad)]) == 2          # would append to the corpus
    one_error(capsys, "--rejects", "is the input corpus")
    assert embed_main(run + ["--summary-json", str(bad)]) == 2     # would overwrite it
    one_error(capsys, "--summary-json", "is the input corpus")
    assert bad.read_text() == corpus.read_text() + "not json\n"
    # Refused at the start: no store, no rejects file, however long the embedding would be.
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "file"]


# ------------------------------------------------------------------ failing while writing

def _fail_on_shard_record(monkeypatch, exc):
    """``fileio.atomic_write`` raises ``exc`` when the second shard's record is written."""
    real = fileio.atomic_write

    def atomic_write(path, data):
        if path.parent.name == "shards" and path.name == "shard-000001.json":
            raise exc
        return real(path, data)

    monkeypatch.setattr(fileio, "atomic_write", atomic_write)


@pytest.mark.parametrize("exc, code, texts", [
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), 2,
     ("--output", "No space left on device", "rerun the same command")),
    (KeyboardInterrupt(), EXIT_INTERRUPTED, ("error: interrupted",)),
])
def test_full_disk_or_interrupt_while_writing_a_shard(capsys, monkeypatch, corpus, base, tmp_path,
                                                      clean_store, exc, code, texts):
    """A write() on a full disk raises ENOSPC without a file name; the line names the store."""
    out = tmp_path / "store"
    _fail_on_shard_record(monkeypatch, exc)
    assert embed_main(base + ["--input", str(corpus), "--output", str(out)]) == code
    one_error(capsys, *texts, *([str(out)] if code == 2 else []))
    with pytest.raises(store_lib.StoreIncompleteError):
        store_lib.open(out)
    monkeypatch.undo()
    assert embed_main(base + ["--input", str(corpus), "--output", str(out)]) == 0
    capsys.readouterr()
    got, want = content(out), content(clean_store)
    assert got[0] == want[0] and np.array_equal(got[1], want[1]) and np.array_equal(got[2], want[2])


def test_debug_shows_the_traceback(capsys, tmp_path, monkeypatch):
    assert show_main([str(tmp_path / "missing"), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("error: ")
    monkeypatch.setenv("KEYTOK_DEBUG", "1")
    assert show_main([str(tmp_path / "missing")]) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("KEYTOK_DEBUG", "0")
    assert show_main([str(tmp_path / "missing")]) == 2
    one_error(capsys, str(tmp_path / "missing"), "store")


# ------------------------------------------------------------------ reading stores

def test_show_missing_or_incomplete_store(capsys, corpus, base, tmp_path, monkeypatch):
    assert show_main([str(tmp_path / "missing")]) == 2
    one_error(capsys, str(tmp_path / "missing"), "store")
    out = tmp_path / "partial"
    _fail_on_shard_record(monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert embed_main(base + ["--input", str(corpus), "--output", str(out)]) == 2
    capsys.readouterr()
    before = tree(out)
    assert show_main([str(out)]) == 2
    one_error(capsys, str(out), "incomplete")
    assert tree(out) == before
    assert show_main([str(out), "--rows", "-1"]) == 2
    one_error(capsys, "--rows")


def test_export_and_search_output_errors(capsys, clean_store, tmp_path):
    before = tree(clean_store)
    target = tmp_path / "dir"
    target.mkdir()
    blocker = tmp_path / "file"
    blocker.write_text("")
    for main, extra in ((export_main, []), (search_main, ["--query", "cats"])):
        assert main(["--store", str(clean_store), "--output", str(target)] + extra) == 2
        one_error(capsys, "--output", "is a directory")
        assert main(["--store", str(clean_store), "--output", str(blocker / "x.jsonl")] + extra) == 2
        one_error(capsys, "--output", "not a directory")
    assert export_main(["--store", str(clean_store), "--output", str(tmp_path / "v.jsonl"),
                        "--queries", str(tmp_path / "q.tsv")]) == 2
    one_error(capsys, "--queries", "no such file")
    assert list(target.iterdir()) == [] and blocker.read_text() == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file"]
    assert tree(clean_store) == before


def test_read_only_export_and_search_output(capsys, clean_store, tmp_path):
    before = tree(clean_store, skip="index")
    if ROOT:
        # Root writes through file modes; nothing new can be made in /proc.
        outs = [Path("/proc/keytok-test-export.jsonl"), Path("/proc/keytok-test-search.txt")]
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        outs = [locked / "v.jsonl", locked / "run.txt"]
    try:
        assert export_main(["--store", str(clean_store), "--output", str(outs[0])]) == 2
        one_error(capsys, str(outs[0]))
        assert search_main(["--store", str(clean_store), "--query", "cats", "--output",
                            str(outs[1])]) == 2
        one_error(capsys, str(outs[1]))
        assert not any(p.exists() for p in outs)
    finally:
        if not ROOT:
            locked.chmod(0o755)
    assert tree(clean_store, skip="index") == before


def test_export_full_disk_leaves_no_partial_file(capsys, clean_store, tmp_path, monkeypatch):
    out = tmp_path / "v.jsonl"
    real = json.dumps
    calls = []

    def dumps(obj, **kw):   # the disk fills up after the third document's line
        calls.append(1)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, **kw)

    monkeypatch.setattr("keytok_jax.retrieval.export.json.dumps", dumps)
    assert export_main(["--store", str(clean_store), "--output", str(out)]) == 2
    monkeypatch.undo()
    one_error(capsys, "No space left on device")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("factor", ["0", "-1", "nan", "inf", "-inf"])
def test_export_refuses_useless_factors(capsys, clean_store, tmp_path, factor):
    out = tmp_path / "v.jsonl"
    assert export_main(["--store", str(clean_store), "--output", str(out), f"--factor={factor}"]) == 2
    one_error(capsys, "--factor", "positive finite")
    assert not out.exists()
    with pytest.raises(SettingsError, match="--factor"):
        export_store(clean_store, out, factor=float(factor))
    assert not out.exists()


def test_export_refuses_a_factor_that_empties_every_vector(capsys, clean_store, tmp_path):
    out = tmp_path / "v.jsonl"
    assert export_main(["--store", str(clean_store), "--output", str(out), "--factor", "1e-9"]) == 2
    one_error(capsys, "--factor", "round to 0", "nothing written")
    assert list(tmp_path.iterdir()) == []
    assert export_main(["--store", str(clean_store), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [i for i, _ in DOCS] and all(r["vector"] for r in rows)
    assert math.isclose(json.loads(capsys.readouterr().out)["factor"], 100.0)


def test_search_query_errors(capsys, clean_store, tmp_path):
    assert search_main(["--store", str(clean_store)]) == 2
    one_error(capsys, "--query", "no queries")
    assert search_main(["--store", str(clean_store), "--queries", str(tmp_path / "q.jsonl")]) == 2
    one_error(capsys, "--queries", "no such file")
    assert search_main(["--store", str(clean_store), "--query", "x", "--mode", "nope"]) == 2
    one_error(capsys, "--mode", "invalid choice")


def test_analysis_commands_check_paths_before_creating_output(capsys, tmp_path):
    from keytok_jax.sts import main as sts_main

    out = tmp_path / "out"
    assert spectral_main(["components", "--texts", str(tmp_path / "t.txt"), "--output",
                          str(out)]) == 2
    one_error(capsys, "--texts", "no such file")
    assert spectral_main(["contribution", "--text", "hello", "--direction",
                          str(tmp_path / "v.npz"), "--output", str(out)]) == 2
    one_error(capsys, "--direction", "no such file")
    assert spectral_main(["components", "--texts", str(tmp_path), "--config",
                          str(tmp_path / "p.yaml"), "--output", str(out)]) == 2
    one_error(capsys, "p.yaml", "cannot read the preset")
    assert sts_main([str(tmp_path / "sts-test.csv")]) == 2
    one_error(capsys, "sts-test.csv", "no such file")
    assert list(tmp_path.iterdir()) == []


def test_error_line_is_one_line():
    from keytok_jax.cli.common import error_line
    from keytok_jax.errors import KeytokError

    # A library's multi-line text quoted in a message is joined; indented detail lines stay.
    assert error_line(KeytokError("m: cannot load (hub said: no\nnetwork). Offline?")) == \
        "error: m: cannot load (hub said: no network). Offline?"
    assert error_line(KeytokError("s: 2 problems:\n  a\n  b")) == "error: s: 2 problems:\n  a\n  b"
    assert error_line(FileNotFoundError(errno.ENOENT, "No such file or directory", "f")) == \
        "error: f: No such file or directory"
    assert error_line(OSError(errno.ENOSPC, "No space left on device")) == \
        "error: No space left on device"
