"""Resume never trusts what it cannot check (issue 19): a recorded shard is reused only when it
holds this run's input rows and its files match its record; otherwise the job stops with exit 2
naming the shard, the row or array and the way out, and ``--recompute`` redoes those shards into
the store a fresh run writes. One job per store: ``STORE/.lock``."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import embed_runner, load_benchmark

from keytok_jax import store as store_lib

compare_stores = load_benchmark("compare_stores")

WORDS = "alpha beta gamma delta protein cell risk dose trial effect".split()


def docs(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"_id": f"d{i}", "text": " ".join(rng.choice(WORDS, rng.integers(1, 12)))}
            for i in range(n)]


def write_corpus(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def embed(tiny_folder, capsys):
    """``embed(corpus, out, *flags)`` → (exit status, stderr, summary dict or None). Without the
    corpus correction: these tests edit rows a fit would have sampled (every row of these small
    corpora), which refuses the whole store (tests/test_correction.py); here the shards' own
    resume is under test."""
    return embed_runner(tiny_folder, capsys, "--max-length", "32", "--top-k", "4", "--shard-size", "2",
                        "--correction", "none")


def store_bytes(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


def assert_same_as_fresh(embed, corpus: Path, out: Path, tmp_path: Path) -> None:
    """``out`` is the store a fresh run on ``corpus`` writes (byte for byte, less times and
    hosts), finished, sound, with unique ids and one row per input document."""
    fresh = tmp_path / "fresh"
    shutil.rmtree(fresh, ignore_errors=True)
    rc, err, _ = embed(corpus, fresh)
    assert rc == 0, err
    assert compare_stores.differences(out, fresh) == []
    st = store_lib.open(out)
    assert st.verify() == st.num_shards
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    assert st.ids == [r["_id"] for r in rows] and len(set(st.ids)) == len(st.ids)
    assert not (out / ".lock").exists()


# ------------------------------------------------------------------ input identity

def test_input_edited_after_a_duplicate_stop_is_refused_then_recomputed(embed, tmp_path):
    """The issue's case: stopped on a duplicate id after shard 0 was recorded; the user deletes
    the first copy and reruns the same command."""
    rows = docs(5)
    corpus = write_corpus(tmp_path / "c.jsonl", rows + [{"_id": "d1", "text": "second copy"}])
    out = tmp_path / "store"
    rc, err, _ = embed(corpus, out)
    assert rc == 2 and "duplicate id 'd1'" in err
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    recorded = {p.name for p in (out / "shards").iterdir()}
    assert recorded == {"shard-000000.json"}   # shard 0 = d0, d1 was recorded before the stop

    write_corpus(corpus, [rows[0]] + rows[2:] + [{"_id": "d1", "text": "second copy"}])
    before = store_bytes(out)
    rc, err, _ = embed(corpus, out)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith(f"error: {out}: cannot reuse recorded shard 0")
    assert "row 1: the shard holds id 'd1', the input now has 'd2'" in err
    assert f"(input {corpus}:2)" in err
    assert "new --output" in err and "--recompute" in err
    assert store_bytes(out) == before   # nothing written, the store is not silently wrong
    with pytest.raises(store_lib.StoreIncompleteError):
        store_lib.open(out)

    rc, err, summary = embed(corpus, out, "--recompute")
    assert rc == 0, err
    assert summary["shards_recomputed"] == 1 and summary["rows"] == 5
    assert_same_as_fresh(embed, corpus, out, tmp_path)


def test_changed_text_is_named_by_row_and_id(embed, tmp_path):
    rows = docs(7)
    corpus = write_corpus(tmp_path / "c.jsonl", rows)
    out = tmp_path / "store"
    assert embed(corpus, out)[0] == 0
    before = store_bytes(out)
    rows[3] = dict(rows[3], text="an edited text")
    write_corpus(corpus, rows)
    rc, err, _ = embed(corpus, out)
    assert rc == 2 and "cannot reuse recorded shard 1" in err
    assert "row 3 (id 'd3'): its text (or its reader flags) changed" in err
    assert store_bytes(out) == before and store_lib.open(out).verify() == 4
    rc, err, summary = embed(corpus, out, "--recompute")
    assert rc == 0 and summary["shards_recomputed"] == 1 and summary["shards_reused"] == 3
    assert_same_as_fresh(embed, corpus, out, tmp_path)


def test_unchanged_rerun_reuses_every_shard(embed, tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", docs(5))
    out = tmp_path / "store"
    assert embed(corpus, out)[0] == 0
    before = store_bytes(out)
    rc, err, summary = embed(corpus, out)
    assert rc == 0 and summary["shards_reused"] == 3 and summary["docs_embedded"] == 0
    assert summary["shards_recomputed"] == 0 and "lock" not in summary
    assert store_bytes(out) == before
    record = json.loads((out / "shards" / "shard-000000.json").read_text())
    assert len(record["input_sha256"]) == 64 and len(record["input_rows"]) == 16


def test_record_without_fingerprint_is_not_trusted(embed, tmp_path):
    """A store written before input fingerprints (records without them) is not reused blindly."""
    corpus = write_corpus(tmp_path / "c.jsonl", docs(5))
    out = tmp_path / "store"
    assert embed(corpus, out)[0] == 0
    for p in (out / "shards").iterdir():
        record = json.loads(p.read_text())
        del record["input_sha256"], record["input_rows"]
        p.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    before = store_bytes(out)
    rc, err, _ = embed(corpus, out)
    assert rc == 2 and "cannot reuse recorded shard 0" in err and "no fingerprint" in err
    assert "--recompute" in err and store_bytes(out) == before
    rc, err, summary = embed(corpus, out, "--recompute")
    assert rc == 0 and summary["shards_recomputed"] == 3
    assert_same_as_fresh(embed, corpus, out, tmp_path)


def test_shrunk_input_is_refused_then_trimmed(embed, tmp_path):
    rows = docs(7)
    corpus = write_corpus(tmp_path / "c.jsonl", rows)
    out = tmp_path / "store"
    assert embed(corpus, out)[0] == 0
    write_corpus(corpus, rows[:4])   # two whole shards: every remaining shard is unchanged
    before = store_bytes(out)
    rc, err, _ = embed(corpus, out)
    assert rc == 2 and "holds shards 2 to 3" in err and "input now ends with shard 1" in err
    assert "--recompute" in err and store_bytes(out) == before
    assert len(store_lib.open(out)) == 7
    rc, err, summary = embed(corpus, out, "--recompute")
    assert rc == 0 and summary["rows"] == 4 and summary["shards_reused"] == 2
    assert_same_as_fresh(embed, corpus, out, tmp_path)


def test_grown_input_on_a_finished_store_is_refused_then_reopened(embed, tmp_path):
    rows = docs(6)
    corpus = write_corpus(tmp_path / "c.jsonl", rows[:4])
    out = tmp_path / "store"
    assert embed(corpus, out)[0] == 0
    write_corpus(corpus, rows)
    before = store_bytes(out)
    rc, err, _ = embed(corpus, out)
    assert rc == 2 and "finished with 4 rows (2 shards)" in err and "--recompute" in err
    assert store_bytes(out) == before
    rc, err, summary = embed(corpus, out, "--recompute")
    assert rc == 0 and summary["rows"] == 6 and summary["docs_embedded"] == 2
    assert_same_as_fresh(embed, corpus, out, tmp_path)


# ------------------------------------------------------------------ verified reuse

def test_damaged_chunks_are_refused_then_recomputed(embed, tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", docs(7))
    out = tmp_path / "store"
    assert embed(corpus, out)[0] == 0
    (out / "token_weights" / "1.0").write_bytes((out / "token_weights" / "0.0").read_bytes())
    (out / "lengths" / "1").write_bytes(b"overwritten")
    (out / "ids" / "shard-000002.jsonl").unlink()
    before = store_bytes(out)
    rc, err, _ = embed(corpus, out)
    assert rc == 2 and err.count("\n") == 1
    assert "cannot reuse recorded shard 1" in err
    assert "token_weights: rows [2, 4) in chunk token_weights/1.0 do not match their checksum" in err
    assert "lengths: chunk lengths/1 is unreadable" in err and "--recompute" in err
    assert store_bytes(out) == before
    with pytest.raises(store_lib.StoreDamagedError) as e:
        store_lib.open(out).verify()
    assert [(p.shard, p.text.split(":")[0]) for p in e.value.problems] == [
        (1, "token_weights"), (1, "lengths"), (2, "ids file ids/shard-000002.jsonl is missing")]
    rc, err, summary = embed(corpus, out, "--recompute")
    assert rc == 0 and summary["shards_recomputed"] == 2 and summary["shards_reused"] == 2
    assert_same_as_fresh(embed, corpus, out, tmp_path)


# ------------------------------------------------------------------ one writer, stdin

def test_second_job_is_refused_naming_the_first(embed, tmp_path, caplog):
    corpus = write_corpus(tmp_path / "c.jsonl", docs(3))
    out = tmp_path / "store"
    assert embed(corpus, out)[0] == 0
    before = store_bytes(out)
    code = ("import sys, time; from keytok_jax.store import StoreLock; "
            "StoreLock.acquire(sys.argv[1]); print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc, err, _ = embed(corpus, out)
        assert rc == 2 and err.count("\n") == 1
        assert f"error: {out} is being written by another job: process {holder.pid}" in err
        assert f"{out / '.lock'}" in err
    finally:
        holder.kill()
        holder.wait()
    assert {k: v for k, v in store_bytes(out).items() if k != ".lock"} == before
    rc, err, summary = embed(corpus, out)   # the killed holder's lock is taken over
    assert rc == 0 and summary["shards_reused"] == 2
    warned = caplog.text   # a warning as it starts (stderr from the command), and in the summary
    assert f"took over the stale lock of {out / '.lock'}" in warned
    assert f"process {holder.pid}" in warned and "no longer running" in summary["lock"]
    assert not (out / ".lock").exists() and store_bytes(out) == before


def test_stdin_input_is_recorded_as_dash(embed, tmp_path, monkeypatch):
    rows = docs(3)
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    out = tmp_path / "store"
    for expected_reused in (0, 2):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        rc, err, summary = embed("-", out)
        assert rc == 0, err
        assert summary["shards_reused"] == expected_reused
    st = store_lib.open(out)
    assert st.settings["input"] == "-" and st.ids == ["d0", "d1", "d2"]
