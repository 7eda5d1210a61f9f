"""The embedding job: Embedder API, CLI end to end, resume after SIGKILL, bad inputs."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED, SMOLLM2_GGUF, shared_or_skip

import keytok_jax
from keytok_jax import store as store_lib
from keytok_jax.cli.embed import main as embed_main, resolve_options
from keytok_jax.pipeline import CorrectionFit, EmbedSettings, Embedder, Shift, seq_buckets

SCIFACT = SHARED / "data" / "scifact"


@pytest.fixture(scope="module")
def smollm2():
    return keytok_jax.load_model(str(shared_or_skip(SMOLLM2_GGUF)))




def assert_same_vectors(got, want, tol=1e-5):
    """Batch shape changes XLA:CPU's GEMM blocking, so float32 sums reassociate: the contract is a
    relative L2 error per vector (SmolLM2 last-token vectors reach |x| ~ 50)."""
    got, want = np.atleast_2d(got), np.atleast_2d(want)
    rel = np.linalg.norm(got - want, axis=-1) / np.maximum(np.linalg.norm(want, axis=-1), 1e-12)
    assert rel.max() <= tol, f"relative error {rel.max():.3g} > {tol}"


def _read_store(path):
    s = store_lib.open(path)
    arrays = {name: np.asarray(getattr(s, name).read().result())
              for name in ("token_ids", "token_weights", "lengths", "flags")}
    if s.dense is not None:
        arrays["dense"] = np.asarray(s.dense.read().result())
    return s, arrays


# ------------------------------------------------------------------ Embedder API

@pytest.mark.slow
def test_text_outputs_do_not_depend_on_batch_or_bucket(smollm2):
    texts = ["Aspirin lowers the risk of heart attacks.",
             "A much longer sentence about the mitochondria, which are the powerhouse of the cell, "
             "and about how they produce ATP through oxidative phosphorylation in eukaryotes.",
             "Short.", "Vitamin D deficiency is common in northern countries during winter."]
    emb = Embedder(smollm2, EmbedSettings(pooling="mean", top_k=16, max_length=64), batch_tokens=512)
    alone = emb.encode(texts[:1], output_value=None)
    together = emb.encode(texts, output_value=None)
    assert_same_vectors(together.dense[0], alone.dense[0])
    np.testing.assert_array_equal(together.token_ids[0], alone.token_ids[0])
    # the same text forced into a bigger bucket (more padding, another compiled shape)
    doc = emb.tokenize(texts[:1])[0]
    seq, rows = 128, 3
    ids = np.zeros((rows, seq), np.int32); mask = np.zeros_like(ids)
    ids[1, : len(doc.ids)], mask[1, : len(doc.ids)] = doc.ids, 1
    dense, _, tok, _ = emb.executable(rows, seq)(smollm2.params, (ids, mask, mask), emb.step.correction)
    assert_same_vectors(np.asarray(dense)[1], alone.dense[0])
    np.testing.assert_array_equal(np.asarray(tok)[1], alone.token_ids[0])


@pytest.mark.slow
def test_compile_count_is_bounded(smollm2):
    rng = np.random.default_rng(0)
    words = "the cell protein gene cancer risk trial dose patients effect".split()
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 150))) for _ in range(60)]
    emb = Embedder(smollm2, EmbedSettings(top_k=8, max_length=256), batch_tokens=1024)
    emb.encode(texts)
    first = emb.stats.compiles
    assert first <= 3 * len(seq_buckets(256, emb.bucket_step)), emb.stats.shapes
    emb.encode(list(reversed(texts)))
    assert emb.stats.compiles == first  # nothing new to compile


def test_sentence_transformers_convention_and_options(smollm2):
    emb = Embedder.from_pretrained(smollm2, pooling="weighted_mean", normalize=True, matryoshka_dim=64,
                                   top_k=4, weighting="log1p_relu")
    dense = emb.encode(["one text", "another text"], batch_size=2)
    assert isinstance(dense, np.ndarray) and dense.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(dense, axis=1), 1.0, rtol=1e-5)
    assert emb.encode("single").shape == (64,)
    out = emb.encode(["", "text"], output_value=None)
    assert (out.token_ids[0] == -1).all() and out.flags[0] & store_lib.FLAG_EMPTY
    assert (out.token_weights[1] >= 0).all()


def test_prompteol_last_token_gives_key_tokens(smollm2):
    emb = Embedder(smollm2, EmbedSettings(pooling="last", prompt="prompteol", top_k=10))
    out = emb.encode(["Photosynthesis lets plants turn sunlight into sugar."], output_value=None)
    tokens = {smollm2.tokenizer.decode([int(t)]).strip().lower() for t in out.token_ids[0]}
    assert tokens & {"photosynthesis", "sugar", "plant", "sun", "solar"}, tokens


def test_shift_changes_projection_not_dense(smollm2, tmp_path):
    texts = ["The stock market fell sharply on Monday.", "Plants need sunlight."]
    base = Embedder(smollm2, EmbedSettings(pooling="mean", top_k=8)).encode(texts, output_value=None)
    direction = -base.dense.mean(0)
    Shift(direction / np.linalg.norm(direction), float(np.linalg.norm(direction)), "test").save(tmp_path / "s.json")
    shifted = Embedder.from_pretrained(smollm2, shift=str(tmp_path / "s.json"), pooling="mean", top_k=8)
    out = shifted.encode(texts, output_value=None)
    np.testing.assert_allclose(out.dense, base.dense, atol=1e-6)
    assert not np.array_equal(out.token_ids, base.token_ids)


# ------------------------------------------------------------------ CLI

@pytest.mark.slow
def test_cli_end_to_end_on_scifact(smollm2, tmp_path, capsys):
    shared_or_skip(SCIFACT)
    out = tmp_path / "store"
    rc = embed_main(["--input", str(SCIFACT), "--output", str(out), "--limit", "256", "--max-length", "64",
                     "--shard-size", "64", "--dense", "--top-k", "16", "--no-progress",
                     "--summary-json", str(tmp_path / "summary.json")])
    assert rc == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rows"] == 256 and summary["shards"] == 4 and summary["truncated"] > 0
    s, arrays = _read_store(out)
    corpus = [json.loads(line) for line in open(SCIFACT / "corpus.jsonl", encoding="utf-8")][:256]
    assert s.ids == [d["_id"] for d in corpus]
    assert arrays["token_ids"].shape == (256, 16) and arrays["dense"].shape == (256, 576)
    assert s.manifest["settings"]["pooling"] == "last" and s.manifest["complete"]
    # the rows equal the API on the same texts, with the store's correction fit
    assert s.manifest["settings"]["correction"] == "pc1"
    assert s.manifest["settings"]["doc_tokens"] == "literal"
    emb = Embedder(smollm2, EmbedSettings(pooling="last", prompt="prompteol", max_length=64, top_k=16,
                                          correction="pc1", doc_tokens="literal"),
                   correction_fit=CorrectionFit.load(out / "correction_fit.json"))
    texts = [" ".join(x for x in (d["title"], d["text"]) if x) for d in corpus[:5]]
    api = emb.encode(texts, output_value=None)
    np.testing.assert_array_equal(api.token_ids, arrays["token_ids"][:5])
    assert_same_vectors(api.dense, arrays["dense"][:5])
    # readable with plain tensorstore, no keytok_jax involved
    import tensorstore as ts

    plain = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(out / "token_ids")}}).result()
    np.testing.assert_array_equal(plain.read().result(), arrays["token_ids"])
    # rerun: everything reused, nothing recomputed
    rc = embed_main(["--input", str(SCIFACT), "--output", str(out), "--limit", "256", "--max-length", "64",
                     "--shard-size", "64", "--dense", "--top-k", "16", "--no-progress", "--resume",
                     "--summary-json", str(tmp_path / "again.json")])
    again = json.loads((tmp_path / "again.json").read_text())
    assert rc == 0 and again["shards_reused"] == 4 and again["docs_embedded"] == 0
    # a different setting is refused, naming it
    rc = embed_main(["--input", str(SCIFACT), "--output", str(out), "--limit", "256", "--max-length", "64",
                     "--shard-size", "64", "--dense", "--top-k", "16", "--no-progress", "--pooling", "mean"])
    assert rc == 2 and "pooling" in capsys.readouterr().err


def _cli(folder, corpus, out, *extra):
    return [sys.executable, "-m", "keytok_jax.embed", "--model", str(folder), "--input", str(corpus),
            "--output", str(out), "--max-length", "64", "--top-k", "8", "--shard-size", "8",
            "--no-progress", "--dense", *extra]


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tiny_folder, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    rng = np.random.default_rng(1)
    words = "alpha beta gamma delta protein cell risk dose trial effect".split()
    with open(corpus, "w") as f:
        for i in range(480):
            f.write(json.dumps({"_id": f"d{i}", "text": " ".join(rng.choice(words, rng.integers(1, 60)))}) + "\n")
    env = {**os.environ, "KEYTOK_JAX_CACHE": str(tmp_path / "cache")}
    clean = tmp_path / "clean"
    subprocess.run(_cli(tiny_folder, corpus, clean), check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(tiny_folder, corpus, killed), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        shards = killed / "shards"
        if shards.exists() and len(list(shards.glob("*.json"))) >= 3:
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    recorded = len(list((killed / "shards").glob("*.json")))
    assert 3 <= recorded < 60, f"kill landed at {recorded} of 60 shards"
    subprocess.run(_cli(tiny_folder, corpus, killed), check=True, env=env, capture_output=True)
    a, arrays_a = _read_store(clean)
    b, arrays_b = _read_store(killed)
    assert a.ids == b.ids and len(b) == 480
    for name in arrays_a:
        np.testing.assert_array_equal(arrays_a[name], arrays_b[name], err_msg=name)


# ------------------------------------------------------------------ bad input

def _write_lines(path, lines: list[bytes]):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_bad_inputs(tiny_folder, tmp_path, capsys):
    ok = [json.dumps({"_id": "a", "text": "fine text"}).encode(),
          json.dumps({"_id": "b", "text": "   "}).encode(),                      # empty: kept, flagged
          b'{"_id": "c", "text": "caf\xe9 bad utf8"}',                          # replaced, flagged
          json.dumps({"_id": "d", "text": "word " * 200}).encode()]             # truncated, flagged
    bad_json = _write_lines(tmp_path / "bad.jsonl", ok + [b'{"_id": "e", "text": '])
    base = ["--model", str(tiny_folder), "--max-length", "64", "--top-k", "4", "--no-progress"]
    rc = embed_main(base + ["--input", str(bad_json), "--output", str(tmp_path / "s1")])
    err = capsys.readouterr().err
    assert rc == 2 and "bad.jsonl:5" in err
    rc = embed_main(base + ["--input", str(bad_json), "--output", str(tmp_path / "s2"), "--on-error", "skip",
                            "--summary-json", str(tmp_path / "sum.json")])
    summary = json.loads((tmp_path / "sum.json").read_text())
    assert rc == 0 and summary["rejected"] == 1 and summary["rows"] == 4
    assert summary["empty"] == 1 and summary["replaced_utf8"] == 1 and summary["truncated"] == 1
    rejects = [json.loads(x) for x in open(str(tmp_path / "s2") + ".rejects.jsonl")]
    assert rejects[0]["source"].endswith("bad.jsonl:5")
    s, arrays = _read_store(tmp_path / "s2")
    assert arrays["flags"][1] & store_lib.FLAG_EMPTY and (arrays["token_ids"][1] == -1).all()
    assert arrays["flags"][2] & store_lib.FLAG_REPLACED and arrays["flags"][3] & store_lib.FLAG_TRUNCATED
    missing = _write_lines(tmp_path / "missing.jsonl", ok[:1] + [json.dumps({"_id": "x", "body": "t"}).encode()])
    rc = embed_main(base + ["--input", str(missing), "--output", str(tmp_path / "s3")])
    assert rc == 2 and "missing.jsonl:2" in capsys.readouterr().err
    dup = _write_lines(tmp_path / "dup.jsonl", ok[:1] + ok[:1])
    rc = embed_main(base + ["--input", str(dup), "--output", str(tmp_path / "s4"), "--on-error", "skip"])
    err = capsys.readouterr().err
    assert rc == 2 and "dup.jsonl:1" in err and "dup.jsonl:2" in err


def test_text_and_tsv_inputs(tiny_folder, tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_text("first line\n\nthird line\n")
    base = ["--model", str(tiny_folder), "--max-length", "64", "--top-k", "4", "--no-progress"]
    assert embed_main(base + ["--input", str(txt), "--output", str(tmp_path / "t")]) == 0
    s = store_lib.open(tmp_path / "t")
    assert s.ids == ["1", "2", "3"]
    tsv = tmp_path / "c.tsv"
    tsv.write_text("id\ttext\nx1\thello there\nx2\tgeneral kenobi\n")
    assert embed_main(base + ["--input", str(tsv), "--output", str(tmp_path / "v")]) == 0
    assert store_lib.open(tmp_path / "v").ids == ["x1", "x2"]


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        embed_main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--input", "--output", "--config", "--top-k", "--pooling", "--max-length", "--limit",
                 "--on-error", "--shift", "--dense", "--resume", "--batch-tokens"):
        assert flag in text


def test_config_presets_parse():
    for preset in sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")):
        opts = resolve_options(["--input", "x", "--output", "y", "--config", str(preset)])
        EmbedSettings(**{k: opts[k] for k in EmbedSettings().as_dict()})
