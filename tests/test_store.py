"""keytok_jax.store: layout, round trip, resume, crash safety, settings mismatch, plain readers."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts

from keytok_jax import store as S
from keytok_jax.store import fileio

K, VOCAB, DIM, SHARD = 4, 50, 6, 8
SETTINGS = {"model": "tiny", "model_hash": "abc123", "tokenizer": "tiny", "pooling": "mean",
            "prompt": "", "attention": "causal", "k": K, "weighting": "softmax",
            "dtype": "float32", "max_length": 32}
ARRAY_NAMES = ("token_ids", "token_weights", "dense", "lengths", "flags")


def shard_data(shard: int, n: int, dim: int | None = DIM) -> dict:
    """Deterministic contents of one shard: the same call gives the same bytes."""
    rng = np.random.default_rng(1000 + shard)
    ids = [f'doc-{shard}-{j} "quoted" \\ é 日本語 🙂 tab\tnl\nls\u2028nel\x85' for j in range(n)]
    if shard == 0:
        ids[0] = ""  # empty id
        ids[1] = "lone surrogate \ud800"
    flags = rng.integers(0, 8, size=n).astype(np.uint8)
    return {
        "ids": ids,
        "token_ids": rng.integers(-1, VOCAB, size=(n, K)),
        "token_weights": rng.standard_normal((n, K)).astype(np.float32),
        "lengths": rng.integers(0, 33, size=n).astype(np.int32),
        "flags": flags,
        "dense": None if dim is None else rng.standard_normal((n, dim)).astype(np.float32),
    }


def shard_sizes(num_rows: int, shard_size: int = SHARD) -> list[int]:
    full, rest = divmod(num_rows, shard_size)
    return [shard_size] * full + ([rest] if rest else [])


def write(writer: S.StoreWriter, shard: int, n: int, dim: int | None = DIM):
    d = shard_data(shard, n, dim)
    return writer.write_shard(shard, d["ids"], d["token_ids"], d["token_weights"], d["lengths"],
                              d["flags"], d["dense"], counters={"tokens": int(d["lengths"].sum())})


def create(path, dim=DIM, settings=SETTINGS, shard_size=SHARD):
    return S.StoreWriter.create_or_resume(path, settings, k=K, vocab_size=VOCAB, dim=dim,
                                          shard_size=shard_size)


def write_all(path, sizes, dim=DIM):
    w = create(path, dim)
    for s, n in enumerate(sizes):
        if s not in w.done_shards():
            write(w, s, n, dim)
    w.finalize(len(sizes))
    return w


def array_files(path: Path) -> dict[str, bytes]:
    """Every file of the zarr arrays and ids (tensorstore's lock files and temporaries aside)."""
    out = {}
    for sub in ARRAY_NAMES + ("ids",):
        d = path / sub
        if d.is_dir():
            for p in sorted(d.iterdir()):
                if p.name.endswith(".__lock") or p.name.endswith(".tmp"):
                    continue
                out[f"{sub}/{p.name}"] = p.read_bytes()
    return out


def assert_stores_equal(a: Path, b: Path):
    sa, sb = S.open(a), S.open(b)
    assert len(sa) == len(sb)
    assert sa.ids == sb.ids
    for name in ARRAY_NAMES:
        xa, xb = getattr(sa, name), getattr(sb, name)
        assert (xa is None) == (xb is None), name
        if xa is not None:
            np.testing.assert_array_equal(xa.read().result(), xb.read().result(), err_msg=name)
    assert [r["sha256"] for r in sa.shard_records()] == [r["sha256"] for r in sb.shard_records()]
    fa, fb = array_files(a), array_files(b)
    assert fa.keys() == fb.keys()
    for key in fa:
        assert fa[key] == fb[key], f"{key} differs byte-wise"
    sa.verify()
    sb.verify()


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory):
    """An uninterrupted run: 5 shards of 8 rows and a short last shard of 3."""
    path = tmp_path_factory.mktemp("clean") / "store"
    write_all(path, shard_sizes(43))
    return path


# ----------------------------------------------------------------------------- round trip

@pytest.mark.parametrize("dim", [DIM, None])
def test_round_trip(tmp_path, dim):
    sizes = shard_sizes(21)  # 8, 8, 5
    w = write_all(tmp_path / "s", sizes, dim)
    assert w.done_shards() == {0, 1, 2}
    st = S.open(tmp_path / "s")
    assert len(st) == 21 and st.num_shards == 3
    m = st.manifest
    assert m["format_version"] == S.FORMAT_VERSION and m["complete"] is True
    assert m["num_rows"] == 21 and m["num_shards"] == 3
    assert m["settings"] == SETTINGS and m["k"] == K and m["dim"] == dim
    assert m["vocab_size"] == VOCAB and m["shard_size"] == SHARD
    assert m["keytok_jax_version"] and m["created"]

    parts = [shard_data(s, n, dim) for s, n in enumerate(sizes)]
    assert st.ids == [i for p in parts for i in p["ids"]]
    for name, dtype in [("token_ids", np.int32), ("token_weights", np.float32),
                        ("lengths", np.int32), ("flags", np.uint8)]:
        arr = getattr(st, name)
        assert isinstance(arr, ts.TensorStore)
        got = arr.read().result()
        assert got.dtype == dtype and got.shape[0] == 21
        np.testing.assert_array_equal(got, np.concatenate([p[name] for p in parts]).astype(dtype))
    if dim is None:
        assert st.dense is None
        assert not (tmp_path / "s" / "dense").exists()
    else:
        assert st.dense.shape == (21, dim)
        np.testing.assert_array_equal(st.dense.read().result(),
                                      np.concatenate([p["dense"] for p in parts]))
    # lazy slicing
    np.testing.assert_array_equal(st.token_ids[9:12].read().result(),
                                  parts[1]["token_ids"][1:4].astype(np.int32))

    recs = st.shard_records()
    assert [(r["shard"], r["row_start"], r["row_stop"], r["num_rows"]) for r in recs] == \
        [(0, 0, 8, 8), (1, 8, 16, 8), (2, 16, 21, 5)]
    flags = np.concatenate([p["flags"] for p in parts])
    c = recs[0]["counters"]
    assert c["docs"] == 8 and c["tokens"] == int(parts[0]["lengths"].sum())
    assert c["truncated"] == int(np.count_nonzero(parts[0]["flags"] & S.FLAG_TRUNCATED))
    assert m["counters"]["docs"] == 21
    assert m["counters"]["empty"] == int(np.count_nonzero(flags & S.FLAG_EMPTY))
    assert m["counters"]["replaced"] == int(np.count_nonzero(flags & S.FLAG_REPLACED))
    assert st.verify() == 3


def test_ids_file_is_plain_jsonl(tmp_path):
    write_all(tmp_path / "s", [SHARD, 2])
    data = shard_data(0, SHARD)
    raw = (tmp_path / "s" / "ids" / "shard-000000.jsonl").read_bytes()
    text = raw.decode("utf-8")
    # one line per id whatever the splitter: quotes, newlines, U+2028, NEL are all escaped
    assert len(text.splitlines()) == SHARD and text.count("\n") == SHARD
    with open(tmp_path / "s" / "ids" / "shard-000000.jsonl", encoding="utf-8") as f:
        assert [json.loads(line) for line in f] == data["ids"]
    assert "日本語" in text and "🙂" in text  # readable UTF-8, not \u escapes
    assert S.open(tmp_path / "s").ids[: SHARD] == data["ids"]


def test_arrays_open_with_plain_tensorstore(clean_store):
    st = S.open(clean_store)
    for name in ARRAY_NAMES:
        arr = ts.open({"driver": "zarr",
                       "kvstore": {"driver": "file", "path": str(clean_store / name)}}).result()
        assert arr.shape[0] == 43
        np.testing.assert_array_equal(arr.read().result(), getattr(st, name).read().result())
    meta = json.loads((clean_store / "token_ids" / ".zarray").read_text())
    assert meta["zarr_format"] == 2 and meta["chunks"] == [SHARD, K] and meta["shape"] == [43, K]
    assert json.loads((clean_store / "dense" / ".zarray").read_text())["chunks"] == [SHARD, DIM]
    assert json.loads((clean_store / "flags" / ".zarray").read_text())["dtype"] == "|u1"


def test_open_as_package_attribute(clean_store):
    import keytok_jax.store

    assert keytok_jax.store.open is S.open
    assert len(keytok_jax.store.open(clean_store)) == 43


# ----------------------------------------------------------------------------- resume

def test_resume_skips_recorded_shards(tmp_path, clean_store, monkeypatch):
    path = tmp_path / "s"
    sizes = shard_sizes(43)
    w = create(path)
    write(w, 0, sizes[0])
    write(w, 1, sizes[1])
    del w
    w = create(path)  # resume
    assert w.done_shards() == {0, 1}
    written = []
    orig = S.StoreWriter.write_shard
    monkeypatch.setattr(S.StoreWriter, "write_shard",
                        lambda self, s, *a, **kw: written.append(s) or orig(self, s, *a, **kw))
    for s, n in enumerate(sizes):
        if s not in w.done_shards():
            write(w, s, n)
    assert written == [2, 3, 4, 5]
    w.finalize(len(sizes))
    assert_stores_equal(path, clean_store)


def test_rewriting_a_recorded_shard_is_an_error(tmp_path):
    w = create(tmp_path / "s")
    write(w, 0, SHARD)
    with pytest.raises(S.ShardExistsError, match="shard 0"):
        write(w, 0, SHARD)


def test_partial_shard_is_redone(tmp_path, clean_store):
    """Data (garbage, half a chunk) and a torn ids file but no record: the shard is redone."""
    path = tmp_path / "s"
    sizes = shard_sizes(43)
    w = create(path)
    for s in (0, 1):
        write(w, s, sizes[s])
    for shard in (2, 5):  # a middle shard and the short last one
        start = shard * SHARD
        for name in ARRAY_NAMES:
            arr = ts.open({"driver": "zarr", "kvstore": {"driver": "file",
                                                          "path": str(path / name)}}).result()
            garbage = np.full((SHARD,) + tuple(arr.shape[1:]), 7, dtype=arr.dtype.numpy_dtype)
            arr[start:start + SHARD].write(garbage).result()  # past the last shard's rows too
        (path / "ids" / f"shard-{shard:06d}.jsonl").write_bytes(b'"torn id"\n"half')
        (path / "ids" / f".shard-{shard:06d}.jsonl.123.abcd.tmp").write_bytes(b"stale")
    w = create(path)
    assert w.done_shards() == {0, 1}
    with pytest.raises(S.StoreIncompleteError):
        S.open(path)
    for s, n in enumerate(sizes):
        if s not in w.done_shards():
            write(w, s, n)
    w.finalize(len(sizes))
    assert not list((path / "ids").glob(".*.tmp"))
    assert_stores_equal(path, clean_store)


class _Crash(BaseException):
    pass


@pytest.mark.parametrize("crash_at", ["arrays", "ids", "record_tmp", "record_replace"])
def test_crash_inside_write_shard_then_resume(tmp_path, clean_store, monkeypatch, crash_at):
    """Interrupt write_shard of shard 3 at each step; a resumed run redoes it exactly."""
    path = tmp_path / "s"
    sizes = shard_sizes(43)
    w = create(path)
    for s in range(3):
        write(w, s, sizes[s])

    real_atomic, real_write_tmp, real_replace = fileio.atomic_write, fileio.write_tmp, os.replace
    if crash_at == "arrays":
        def write_tmp(p, data):
            raise _Crash  # arrays are written; the ids file is never started
        monkeypatch.setattr(fileio, "write_tmp", write_tmp)
    elif crash_at == "ids":
        def atomic(p, data):
            if p.parent.name == "shards":
                raise _Crash  # ids written, record not
            real_atomic(p, data)
        monkeypatch.setattr(fileio, "atomic_write", atomic)
    elif crash_at == "record_tmp":
        def write_tmp(p, data):
            if p.parent.name == "shards":
                tmp = real_write_tmp(p, data[: len(data) // 2])  # torn temporary file
                raise _Crash(tmp)
            return real_write_tmp(p, data)
        monkeypatch.setattr(fileio, "write_tmp", write_tmp)
    else:
        def replace(src, dst):
            if Path(dst).parent.name == "shards":
                raise _Crash  # complete temporary record, never renamed
            real_replace(src, dst)
        monkeypatch.setattr(fileio.os, "replace", replace)
    with pytest.raises(_Crash):
        write(w, 3, sizes[3])
    monkeypatch.undo()

    assert create(path).done_shards() == {0, 1, 2}
    assert len(S.open(path, allow_incomplete=True)) == 3 * SHARD
    write_all(path, sizes)
    assert_stores_equal(path, clean_store)


def _writer_main(path: str, num_rows: int) -> None:
    """Subprocess body of the kill test: an uninterrupted run, as fast as it goes."""
    sizes = shard_sizes(num_rows)
    w = create(path)
    print("started", flush=True)
    for s, n in enumerate(sizes):
        if s not in w.done_shards():
            write(w, s, n)
    w.finalize(len(sizes))
    print("finished", flush=True)


def test_sigkill_then_resume(tmp_path):
    num_rows = 8 * 59 + 3
    path = tmp_path / "killed"
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, __file__, "--write", str(path), str(num_rows)],
                            cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            shards = path / "shards"
            if shards.is_dir() and sum(1 for p in shards.iterdir() if p.suffix == ".json") >= 5:
                break
            time.sleep(0.002)
        assert proc.poll() is None, f"writer ended before the kill: {proc.communicate()}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    done = create(path).done_shards()
    assert 5 <= len(done) < 60
    with pytest.raises(S.StoreIncompleteError):
        S.open(path)
    write_all(path, shard_sizes(num_rows))  # resume: redoes the unrecorded shards

    clean = tmp_path / "clean"
    write_all(clean, shard_sizes(num_rows))
    assert_stores_equal(path, clean)


def test_two_writers_own_different_shards(tmp_path, clean_store):
    """Writers of one store share no file while writing shards: manifest and .zarray untouched."""
    path = tmp_path / "s"
    sizes = shard_sizes(43)
    a, b = create(path), create(path)  # the second create is a no-op resume
    shared = [path / "manifest.json"] + [path / n / ".zarray" for n in ARRAY_NAMES]
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in shared}
    for s, n in enumerate(sizes):
        write(a if s % 2 else b, s, n)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in shared} == before
    assert a.done_shards() == b.done_shards() == set(range(len(sizes)))
    a.finalize(len(sizes))
    assert_stores_equal(path, clean_store)


# ----------------------------------------------------------------------------- errors

def test_settings_mismatch_names_each_setting(tmp_path):
    path = tmp_path / "s"
    create(path)
    new = dict(SETTINGS, model="other-model", prompt="query: ")
    del new["weighting"]
    new["extra"] = 1
    with pytest.raises(S.StoreMismatchError) as e:
        S.StoreWriter.create_or_resume(path, new, k=K, vocab_size=VOCAB, dim=None, shard_size=16)
    msg = str(e.value)
    for part in ["'model'", "'tiny'", "'other-model'", "'prompt'", "'query: '", "'weighting'",
                 "'softmax'", "<absent>", "'extra'", "dim", str(DIM), "None", "shard_size",
                 "16"]:
        assert part in msg, (part, msg)
    assert "max_length" not in msg and "pooling" not in msg  # unchanged settings are not named
    # the same settings (a fresh, equal dict) resume fine
    create(path, settings=dict(SETTINGS))


def test_finalize_with_missing_shard(tmp_path):
    path = tmp_path / "s"
    w = create(path)
    write(w, 0, SHARD)
    write(w, 2, 3)
    with pytest.raises(S.StoreError, match=r"1 of 3 shards have no record: 1"):
        w.finalize(3)
    with pytest.raises(S.StoreError, match="recorded too"):
        w.finalize(1)
    with pytest.raises(S.StoreIncompleteError):
        S.open(path)
    partial = S.open(path, allow_incomplete=True)  # leading recorded shards only
    assert len(partial) == SHARD and partial.num_shards == 1
    assert partial.token_ids.shape == (SHARD, K)
    assert partial.ids == shard_data(0, SHARD)["ids"]
    write(w, 1, SHARD)
    assert w.finalize(3)["num_rows"] == 2 * SHARD + 3
    assert w.finalize(3)["num_rows"] == 2 * SHARD + 3  # idempotent
    with pytest.raises(S.StoreError, match="finalized"):
        write(w, 3, 1)


def test_short_shard_must_be_last(tmp_path):
    w = create(tmp_path / "s")
    write(w, 0, 3)
    write(w, 1, SHARD)
    with pytest.raises(S.StoreError, match="only the last shard"):
        w.finalize(2)


def test_write_shard_validates_inputs(tmp_path):
    w = create(tmp_path / "s")
    d = shard_data(0, 4)
    args = [d["ids"], d["token_ids"], d["token_weights"], d["lengths"], d["flags"], d["dense"]]

    def call(i, value, exc, match):
        bad = list(args)
        bad[i] = value
        with pytest.raises(exc, match=match):
            w.write_shard(0, *bad)

    call(1, d["token_ids"][:, :2], ValueError, "token_ids has shape")
    call(1, np.full((4, K), VOCAB), ValueError, "token_ids out of range")
    call(2, np.full((4, K), np.nan), ValueError, "NaN")
    call(4, np.full(4, 8), ValueError, "unknown bits")
    call(5, None, ValueError, "dense is required")
    call(0, d["ids"] + ["x"], ValueError, "shape")
    call(0, [1, 2, 3, 4], TypeError, "not str")
    with pytest.raises(ValueError, match="1 to 8 rows"):
        w.write_shard(0, [], *[a[:0] for a in args[1:]])
    assert w.done_shards() == set()
    w2 = create(tmp_path / "nodense", dim=None)
    with pytest.raises(ValueError, match="without dense"):
        w2.write_shard(0, *args)


def test_interrupted_finalize_resumes(tmp_path, clean_store, monkeypatch):
    """Arrays resized but manifest not yet rewritten: resume and finalize again."""
    path = tmp_path / "s"
    sizes = shard_sizes(43)
    w = create(path)
    for s, n in enumerate(sizes[:-1]):
        write(w, s, n)
    real_atomic = fileio.atomic_write

    def atomic(p, data):
        if p.name == "manifest.json":
            raise _Crash
        real_atomic(p, data)

    monkeypatch.setattr(fileio, "atomic_write", atomic)
    write(w, len(sizes) - 1, sizes[-1])
    with pytest.raises(_Crash):
        w.finalize(len(sizes))
    monkeypatch.undo()
    w = create(path)
    assert w._arrays["token_ids"].shape[0] == S.MAX_ROWS
    w.finalize(len(sizes))
    assert_stores_equal(path, clean_store)


def test_not_a_store(tmp_path):
    (tmp_path / "other.txt").write_text("x")
    with pytest.raises(S.StoreError, match="not a keytok_jax store"):
        create(tmp_path)
    with pytest.raises(S.StoreError, match="not a keytok_jax store"):
        S.open(tmp_path)


# ----------------------------------------------------------------------------- input identity

def texts_of(shard: int, n: int) -> list[str]:
    return [f"text {shard}-{j}" for j in range(n)]


def fingerprint(ids, texts, flags=None):
    return S.input_fingerprint(ids, texts, flags if flags is not None else [0] * len(ids))


def write_with_input(writer, shard, n):
    d = shard_data(shard, n)
    fp = fingerprint(d["ids"], texts_of(shard, n))
    return writer.write_shard(shard, d["ids"], d["token_ids"], d["token_weights"], d["lengths"],
                              d["flags"], d["dense"], input=fp)


def test_input_fingerprint_is_recorded_and_compared(tmp_path):
    w = create(tmp_path / "s")
    rec = write_with_input(w, 0, SHARD)
    ids, texts = shard_data(0, SHARD)["ids"], texts_of(0, SHARD)
    assert rec["input_sha256"] == fingerprint(ids, texts)["input_sha256"]
    assert len(rec["input_rows"]) == 8 * SHARD
    saved = json.loads((tmp_path / "s" / "shards" / "shard-000000.json").read_text())
    assert saved["input_rows"] == rec["input_rows"]
    assert w.reuse_problems(0, ids, fingerprint(ids, texts)) == []

    def first_change(new_ids, new_texts, flags=None):
        (problem,) = w.reuse_problems(0, new_ids, fingerprint(new_ids, new_texts, flags))
        assert problem.kind == "changed" and problem.shard == 0
        return problem

    p = first_change(ids[:3] + ["other"] + ids[4:], texts)
    assert p.row == 3 and "row 3" in p.text and "'other'" in p.text and repr(ids[3]) in p.text
    p = first_change(ids, texts[:5] + ["edited"] + texts[6:])
    assert p.row == 5 and "text" in p.text and repr(ids[5]) in p.text
    p = first_change(ids, texts, [0] * 6 + [S.FLAG_REPLACED, 0])
    assert p.row == 6
    p = first_change(ids[:4], texts[:4])
    assert p.row == 4 and "ends the shard after 4 rows" in p.text
    w2 = create(tmp_path / "short")
    write_with_input(w2, 0, 3)
    d = shard_data(0, 3)
    (p,) = w2.reuse_problems(0, d["ids"] + ["more"], fingerprint(d["ids"] + ["more"],
                                                                 texts_of(0, 3) + ["x"]))
    assert p.row == 3 and "'more'" in p.text and "past the 3 rows" in p.text


def test_record_without_fingerprint_is_unverifiable(tmp_path):
    w = create(tmp_path / "s")
    write(w, 0, SHARD)  # no input= (as stores written before fingerprints)
    d = shard_data(0, SHARD)
    (p,) = w.reuse_problems(0, d["ids"], fingerprint(d["ids"], texts_of(0, SHARD)))
    assert p.kind == "unverifiable" and "no fingerprint" in p.text


def test_reuse_checks_the_files_against_the_record(tmp_path):
    path = tmp_path / "s"
    w = create(path)
    for s in range(3):
        write_with_input(w, s, SHARD)
    ids = {s: shard_data(s, SHARD)["ids"] for s in range(3)}
    fps = {s: fingerprint(ids[s], texts_of(s, SHARD)) for s in range(3)}
    (path / "token_ids" / "1.0").write_bytes(b"not blosc" * 8)            # unreadable
    (path / "lengths" / "2").write_bytes((path / "lengths" / "0").read_bytes())  # other rows
    assert w.reuse_problems(0, ids[0], fps[0]) == []
    (p,) = w.reuse_problems(1, ids[1], fps[1])
    assert p.kind == "damaged" and "token_ids" in p.text and "token_ids/1.0" in p.text
    assert "unreadable" in p.text
    (p,) = w.reuse_problems(2, ids[2], fps[2])
    assert "lengths" in p.text and "checksum" in p.text
    (path / "dense" / "0.0").unlink()
    (p,) = w.reuse_problems(0, ids[0], fps[0])
    assert "dense" in p.text and "missing" in p.text


def test_verify_reports_every_problem_as_store_errors(tmp_path, clean_store):
    import shutil

    path = tmp_path / "s"
    shutil.copytree(clean_store, path)
    assert S.open(path).problems() == []
    (path / "token_ids" / "1.0").write_bytes(b"\x00garbage" * 5)           # unreadable chunk
    (path / "lengths" / "2").write_bytes((path / "lengths" / "0").read_bytes())  # wrong rows
    (path / "dense" / "3.0").unlink()                                     # missing chunk
    (path / "ids" / "shard-000004.jsonl").unlink()                        # missing ids file
    (path / "shards" / "shard-000005.json").write_text("{torn")            # unreadable record
    st = S.open(path)
    with pytest.raises(S.StoreDamagedError) as e:
        st.verify()
    assert isinstance(e.value, S.StoreError)
    problems = e.value.problems
    assert [(p.shard, p.kind) for p in problems] == [(1, "damaged"), (2, "damaged"),
                                                      (3, "damaged"), (4, "damaged"),
                                                      (5, "damaged")]
    msg = str(e.value)
    for part in ["5 problems", "shard 1: token_ids: chunk token_ids/1.0 is unreadable",
                 "shard 2: lengths: rows [16, 24) in chunk lengths/2 do not match",
                 "shard 3: dense: chunk dense/3.0 is missing",
                 "shard 4: ids file ids/shard-000004.jsonl is missing",
                 "shard 5:", "unreadable shard record"]:
        assert part in msg, (part, msg)
    assert [str(p) for p in st.problems()] == [str(p) for p in problems]


def test_discard_reopens_a_finished_store_and_the_redo_is_exact(tmp_path, clean_store):
    import shutil

    path = tmp_path / "s"
    shutil.copytree(clean_store, path)
    sizes = shard_sizes(43)
    w = create(path)
    assert w.complete
    (path / "token_weights" / "2.0").write_bytes(b"damaged")
    w.discard_shard(2)
    assert not w.complete and w.done_shards() == set(range(len(sizes))) - {2}
    with pytest.raises(S.StoreIncompleteError):
        S.open(path)
    assert create(path)._arrays["token_ids"].shape[0] == S.MAX_ROWS
    write(w, 2, sizes[2])
    w.finalize(len(sizes))
    assert_stores_equal(path, clean_store)
    assert json.loads((path / "manifest.json").read_text())["counters"] == \
        json.loads((clean_store / "manifest.json").read_text())["counters"]


def test_drop_shards_past_a_shrunk_input(tmp_path):
    path = tmp_path / "s"
    write_all(path, shard_sizes(43))
    w = create(path)
    assert w.drop_shards_from(3) == [3, 4, 5]
    assert not w.complete and w.done_shards() == {0, 1, 2}
    # a killed earlier run also left data of an unrecorded shard past the end
    arr = ts.open({"driver": "zarr", "kvstore": {"driver": "file",
                                                  "path": str(path / "token_ids")}}).result()
    arr[6 * SHARD: 7 * SHARD].write(np.ones((SHARD, K), np.int32)).result()
    (path / "ids" / "shard-000006.jsonl").write_bytes(b'"left"\n')
    w.finalize(3)
    clean = tmp_path / "clean"
    write_all(clean, [SHARD] * 3)
    assert_stores_equal(path, clean)   # no ids file or chunk of shards 3.. is left


# ----------------------------------------------------------------------------- one writer

def _hold_lock(path: Path) -> subprocess.Popen:
    code = ("import sys, time; from keytok_jax.store import StoreLock; "
            "StoreLock.acquire(sys.argv[1]); print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lock_names_its_holder_and_a_dead_holder_is_taken_over(tmp_path):
    path = tmp_path / "s"
    proc = _hold_lock(path)
    try:
        with pytest.raises(S.StoreLockedError) as e:
            S.StoreLock.acquire(path)
        msg = str(e.value)
        assert f"process {proc.pid} on host" in msg and "another job" in msg and "--output" in msg
        assert e.value.holder["pid"] == proc.pid
    finally:
        proc.kill()
        proc.wait()
    assert (path / ".lock").exists()   # a killed holder leaves its lock file
    with S.StoreLock.acquire(path) as lock:
        assert lock.taken_over["pid"] == proc.pid
        assert f"process {proc.pid}" in lock.taken_over_message()
        assert "no longer running" in lock.taken_over_message()
        assert json.loads((path / ".lock").read_text())["pid"] == os.getpid()
        create(path)   # the lock file is not a foreign file
    assert not (path / ".lock").exists()
    S.StoreLock.acquire(path).release()   # free again


def test_lock_of_another_host_is_refused_until_deleted(tmp_path):
    path = tmp_path / "s"
    path.mkdir()
    (path / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere",
                                            "started": "2026-01-01T00:00:00+00:00"}))
    with pytest.raises(S.StoreLockedError) as e:
        S.StoreLock.acquire(path)
    assert "host elsewhere" in str(e.value) and f"delete {path / '.lock'}" in str(e.value)
    assert (path / ".lock").exists()
    (path / ".lock").unlink()
    S.StoreLock.acquire(path).release()


def test_lock_alone_leaves_no_directory(tmp_path):
    path = tmp_path / "new" / "store"
    S.StoreLock.acquire(path).release()
    assert not path.exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(S.StoreError, match="not a directory"):
        S.StoreLock.acquire(tmp_path / "file")


def test_incomplete_store_message_says_how_to_finish(tmp_path):
    path = tmp_path / "s"
    w = create(path)
    write(w, 0, SHARD)
    with pytest.raises(S.StoreIncompleteError) as e:
        S.open(path)
    msg = str(e.value)
    assert "1 shards are recorded" in msg and "was stopped" in msg
    assert "Rerun the same `python -m keytok_jax.embed` command" in msg
    assert "keytok_jax.store.open(path, allow_incomplete=True)" in msg
    with S.StoreLock.acquire(path):
        with pytest.raises(S.StoreIncompleteError, match=f"a job is writing it \\(process {os.getpid()}"):
            S.open(path)


def test_missing_store_is_a_store_error(tmp_path):
    with pytest.raises(S.StoreError, match="no such store"):
        S.open(tmp_path / "nowhere")
    (tmp_path / "f").write_text("x")
    with pytest.raises(S.StoreError, match="not a directory"):
        S.open(tmp_path / "f")


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--write":
    _writer_main(sys.argv[2], int(sys.argv[3]))
