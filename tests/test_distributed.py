"""Multi-process jobs: two processes on 127.0.0.1 (jax.distributed, gloo CPU collectives) write one
store identical to a one-process run; killing one mid-run and rerunning both completes it. With
--global-mesh (two fake CPU devices per process, one mesh over all four) the processes step in
lock-step, including a model axis that spans both processes."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest


from keytok_jax import store as store_lib

pytestmark = pytest.mark.slow  # several JAX processes




@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("dist-corpus") / "corpus.jsonl"
    rng = np.random.default_rng(2)
    words = "alpha beta gamma delta protein cell risk dose trial effect".split()
    with open(path, "w") as f:
        for i in range(240):
            f.write(json.dumps({"_id": f"d{i}", "text": " ".join(rng.choice(words, rng.integers(1, 50)))}) + "\n")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmd(folder, corpus, out, *extra):
    return [sys.executable, "-m", "keytok_jax.embed", "--input", str(corpus), "--output", str(out),
            "--model", str(folder), "--max-length", "64", "--shard-size", "8", "--batch-tokens", "512",
            "--dense", "--no-progress", *extra]


def _start_pair(folder, corpus, out, env, *extra):
    port = _free_port()
    return [subprocess.Popen(_cmd(folder, corpus, out, "--distributed", "--coordinator", f"127.0.0.1:{port}",
                                  "--num-processes", "2", "--process-id", str(i), *extra),
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i in range(2)]


def _finish(procs, timeout=300):
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0, out[-4000:]
        outs.append(out)
    return outs


def _arrays(path):
    s = store_lib.open(path)
    assert s.verify() == s.manifest["num_shards"]
    return s.ids, {n: np.asarray(getattr(s, n).read().result())
                   for n in ("token_ids", "token_weights", "lengths", "flags", "dense")}


@pytest.fixture(scope="module")
def clean_store(tiny_folder, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist-clean") / "store"
    env = {**os.environ, "KEYTOK_JAX_CACHE": str(out.parent / "cache")}
    subprocess.run(_cmd(tiny_folder, corpus, out), check=True, env=env, capture_output=True)
    return out


def _assert_same_store(a, b, atol=0.0):
    """Same rows in the same order; bit-identical, or floats within ``atol`` (a sharded model sums
    in another order) with identical token ids."""
    ids_a, arrays_a = _arrays(a)
    ids_b, arrays_b = _arrays(b)
    assert ids_a == ids_b and len(set(ids_b)) == len(ids_b) == 240
    for name in arrays_a:
        if atol and arrays_a[name].dtype.kind == "f":
            np.testing.assert_allclose(arrays_a[name], arrays_b[name], rtol=0, atol=atol, err_msg=name)
        else:
            np.testing.assert_array_equal(arrays_a[name], arrays_b[name], err_msg=name)


def _stat(out: str, key: str) -> int:
    return int(next(l for l in out.splitlines() if l.startswith(key)).split()[1])


def test_two_processes_write_the_same_store(tiny_folder, corpus, clean_store, tmp_path):
    out = tmp_path / "store"
    env = {**os.environ, "KEYTOK_JAX_CACHE": str(tmp_path / "cache")}
    outs = _finish(_start_pair(tiny_folder, corpus, out, env))
    assert "process            0 of 2" in outs[0] and "process            1 of 2" in outs[1]
    embedded = [int(next(l for l in o.splitlines() if l.startswith("docs_embedded")).split()[1]) for o in outs]
    assert embedded == [120, 120]   # 30 shards of 8 rows: process i embeds shards i, i+2, ...
    _assert_same_store(clean_store, out)


def test_kill_one_process_then_rerun_both(tiny_folder, corpus, clean_store, tmp_path):
    out = tmp_path / "store"
    env = {**os.environ, "KEYTOK_JAX_CACHE": str(tmp_path / "cache")}
    procs = _start_pair(tiny_folder, corpus, out, env)
    deadline = time.time() + 180
    shards = out / "shards"
    while time.time() < deadline:   # kill process 1 once it has recorded 2 of its (odd) shards
        if shards.exists() and len([p for p in shards.glob("*.json") if int(p.stem[-1]) % 2]) >= 2:
            break
        time.sleep(0.01)
    procs[1].send_signal(signal.SIGKILL)
    procs[1].wait()
    odd = {int(p.stem.split("-")[1]) for p in shards.glob("*.json")} - set(range(0, 30, 2))
    assert 2 <= len(odd) < 15, f"kill landed after {len(odd)} of process 1's 15 shards"
    # Process 0 finishes its own shards, then waits for process 1 at the barrier (JAX's heartbeat
    # would abort it after ~100 s); end it as a scheduler would end the job.
    while time.time() < deadline and len(list(shards.glob("*.json"))) < 15 + len(odd):
        time.sleep(0.05)
    procs[0].send_signal(signal.SIGKILL)
    procs[0].communicate()
    recorded = {int(p.stem.split("-")[1]) for p in shards.glob("*.json")}
    assert len(recorded) < 30 and not json.loads((out / "manifest.json").read_text())["complete"]
    outs = _finish(_start_pair(tiny_folder, corpus, out, env))
    reused = [int(next(l for l in o.splitlines() if l.startswith("shards_reused")).split()[1]) for o in outs]
    assert reused == [len(recorded & set(range(0, 30, 2))), len(recorded - set(range(0, 30, 2)))]
    _assert_same_store(clean_store, out)


# Two processes x two fake CPU devices, one mesh over all four.
LOCKSTEP_ENV = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}


@pytest.mark.parametrize("mesh, embedded", [
    ("data=1,model=4", [240, 240]),   # the model axis spans both processes: both embed every row
    ("data=2,model=2", [120, 120]),   # one data row per process: shards i = p (mod 2)
    ("data=4,model=1", [120, 120]),
])
def test_global_mesh_lockstep_matches_one_process(tiny_folder, corpus, clean_store, tmp_path, mesh, embedded):
    out = tmp_path / "store"
    env = {**os.environ, **LOCKSTEP_ENV, "KEYTOK_JAX_CACHE": str(tmp_path / "cache")}
    outs = _finish(_start_pair(tiny_folder, corpus, out, env, "--mesh", mesh, "--global-mesh"))
    assert all(f"mesh               {mesh}" in o for o in outs)
    assert [_stat(o, "docs_embedded") for o in outs] == embedded
    # Lock-step: both processes ran the same agreed batch shapes.
    assert _stat(outs[0], "padded_tokens") == _stat(outs[1], "padded_tokens")
    _assert_same_store(clean_store, out, atol=1e-5)


def test_global_mesh_kill_then_rerun(tiny_folder, corpus, clean_store, tmp_path):
    out = tmp_path / "store"
    env = {**os.environ, **LOCKSTEP_ENV, "KEYTOK_JAX_CACHE": str(tmp_path / "cache")}
    flags = ("--mesh", "data=2,model=2", "--global-mesh")
    procs = _start_pair(tiny_folder, corpus, out, env, *flags)
    deadline = time.time() + 180
    shards = out / "shards"
    while time.time() < deadline:
        if shards.exists() and len([p for p in shards.glob("*.json") if int(p.stem[-1]) % 2]) >= 2:
            break
        time.sleep(0.01)
    procs[1].send_signal(signal.SIGKILL)
    procs[1].wait()
    procs[0].send_signal(signal.SIGKILL)   # it waits in the next collective step for its peer
    procs[0].communicate()
    recorded = {int(p.stem.split("-")[1]) for p in shards.glob("*.json")}
    assert 2 <= len(recorded) < 30 and not json.loads((out / "manifest.json").read_text())["complete"]
    outs = _finish(_start_pair(tiny_folder, corpus, out, env, *flags))
    evens = set(range(0, 30, 2))
    assert [_stat(o, "shards_reused") for o in outs] == [len(recorded & evens), len(recorded - evens)]
    assert [_stat(o, "docs_embedded") for o in outs] == [8 * (15 - len(recorded & evens)),
                                                         8 * (15 - len(recorded - evens))]
    _assert_same_store(clean_store, out, atol=1e-5)
