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


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--write":
    _writer_main(sys.argv[2], int(sys.argv[3]))
