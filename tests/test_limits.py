"""Limits (issue 19, items 3 and 6): the model's position limit refused at start, unusable device
outputs turned into an error naming the texts, texts cut by characters before tokenizing (same
tokens, bounded memory on a 20 MB line), standard input, and input encodings through the CLI."""
from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, SMOLLM2_DIR, one_error, shared_or_skip
from keytok_jax import store as store_lib
from keytok_jax.embed import main as embed_main
from keytok_jax.errors import SettingsError
from keytok_jax.loading import load_model
from keytok_jax.models import config_from_hf
from keytok_jax.pipeline.embedder import Embedder, EmbedError, check_outputs, position_limit
from keytok_jax.pipeline.tokenize import DocTokenizer, longest_entry
from keytok_jax.records import FLAG_TRUNCATED
from keytok_jax.settings import EmbedSettings, Template

DOCS = [("a", "hello world"), ("b", "a much longer text that is cut at sixteen tokens, surely, yes"),
        ("c", "the zebra sat on the mat")]


def write_corpus(path: Path, docs=DOCS) -> Path:
    path.write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in docs))
    return path


def stored(path) -> tuple:
    s = store_lib.open(path)
    s.verify()
    return (s.ids, np.asarray(s.token_ids.read().result()), np.asarray(s.token_weights.read().result()),
            np.asarray(s.lengths.read().result()))


def tiny_hf_folder(folder: Path, config, model_cls, poison_token: int | None = None) -> Path:
    """A tiny random model with SmolLM2's tokenizer; ``poison_token``'s input embedding is inf."""
    torch = pytest.importorskip("torch")
    shared_or_skip(SMOLLM2_DIR)
    torch.manual_seed(0)
    model = model_cls(config)
    if poison_token is not None:
        with torch.no_grad():
            model.get_input_embeddings().weight[poison_token] = float("inf")
    model.save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(SMOLLM2_DIR / f, folder / f)
    return folder


@pytest.fixture(scope="module")
def gpt2_16(tmp_path_factory):
    """The issue's case: a small GPT-2 with 16 learned positions."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=49152, n_embd=32, n_layer=2, n_head=4, n_positions=16,
                                  bos_token_id=1, eos_token_id=2)
    return tiny_hf_folder(tmp_path_factory.mktemp("gpt2-16"), cfg, transformers.GPT2LMHeadModel)


@pytest.fixture(scope="module")
def smol_tokenizer():
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(shared_or_skip(SMOLLM2_DIR))


# ------------------------------------------------------------------ item 3: model limits

LIMIT_MESSAGE = ("--max-length 64 exceeds the model's 16 positions (n_positions); "
                 "use --max-length 16 or less")


def test_max_length_over_positions_refused_by_the_cli(gpt2_16, tmp_path, capsys):
    corpus = write_corpus(tmp_path / "c.jsonl")
    out = tmp_path / "store"
    args = ["--model", str(gpt2_16), "--input", str(corpus), "--output", str(out), "--top-k", "4",
            "--no-progress"]
    assert embed_main(args + ["--max-length", "64"]) == 2
    assert one_error(capsys, LIMIT_MESSAGE) == f"error: {LIMIT_MESSAGE}"
    assert not out.exists()   # refused before the store is created
    # The limit itself works: a store of finite vectors and in-range ids, texts truncated.
    assert embed_main(args + ["--max-length", "16", "--dense"]) == 0
    ids, tok, w, lengths = stored(out)
    assert ids == ["a", "b", "c"] and (lengths <= 16).all() and lengths[1] == 16
    assert ((tok >= 0) & (tok < 49152)).all() and np.isfinite(w).all()
    assert np.isfinite(np.asarray(store_lib.open(out).dense.read().result())).all()


def test_max_length_over_positions_refused_by_the_api(gpt2_16):
    model = load_model(str(gpt2_16))
    with pytest.raises(SettingsError) as e:
        Embedder(model, EmbedSettings(max_length=64))
    assert str(e.value) == LIMIT_MESSAGE
    with pytest.raises(SettingsError, match="exceeds the model's 16 positions"):
        Embedder.from_pretrained(model, max_length=17)
    emb = Embedder(model, EmbedSettings(max_length=16, top_k=8))
    out = emb.encode(["word " * 200, "short"], output_value=None)
    assert np.isfinite(out.dense).all() and np.isfinite(out.token_weights).all()
    assert ((out.token_ids >= 0) & (out.token_ids < 49152)).all()
    assert out.lengths.tolist() == [16, 1] and out.flags[0] & FLAG_TRUNCATED


def test_position_limit_by_family():
    transformers = pytest.importorskip("transformers")
    learned = [(transformers.GPT2Config(n_positions=40), 40),
               (transformers.GPTNeoConfig(max_position_embeddings=48, num_layers=2,
                                          attention_types=[[["global"], 2]]), 48),
               (transformers.OPTConfig(max_position_embeddings=56), 56)]
    for hf, limit in learned:
        assert position_limit(config_from_hf(hf)) == limit, hf.model_type
    rotary = [transformers.LlamaConfig(max_position_embeddings=64),
              transformers.GPTNeoXConfig(max_position_embeddings=64)]
    for hf in rotary:
        assert position_limit(config_from_hf(hf)) is None, hf.model_type


def test_rotary_model_accepts_max_length_beyond_its_trained_context(tiny_folder):
    # tiny_folder is a Llama with max_position_embeddings=512: rotary positions have no table.
    emb = Embedder(load_model(str(tiny_folder)), EmbedSettings(max_length=640, top_k=4))
    out = emb.encode(["word " * 1000], output_value=None)
    assert out.lengths.tolist() == [640] and np.isfinite(out.dense).all()
    assert ((out.token_ids >= 0) & (out.token_ids < 49152)).all()


def test_check_outputs_names_rows():
    dense = np.zeros((4, 3), np.float32)
    ids = np.zeros((4, 2), np.int32)
    w = np.zeros((4, 2), np.float32)
    rows = np.array([7, 2, 9, 4])
    check_outputs(dense, ids, w, 10, rows)  # all fine
    ids[3] = -1                             # -1 (no token) is in range
    check_outputs(dense, ids, w, 10, rows)
    dense[1, 2], w[2, 0], ids[0, 1], ids[2, 0] = np.nan, np.inf, 10, -2
    with pytest.raises(EmbedError) as e:
        check_outputs(dense, ids, w, 10, rows)
    err = e.value
    assert err.problems == {"non-finite dense values (NaN/inf)": [2],
                            "non-finite token weights (NaN/inf)": [9],
                            "token ids outside [-1, 10)": [7, 9]}
    assert err.rows == [2, 7, 9]
    assert ("non-finite dense values (NaN/inf) for texts 2; non-finite token weights (NaN/inf) "
            "for texts 9; token ids outside [-1, 10) for texts 7, 9") in str(err)
    named = err.named({2: "c.jsonl:3", 7: "c.jsonl:8", 9: "c.jsonl:10"})
    assert "for texts c.jsonl:8, c.jsonl:10" in str(named) and named.rows == err.rows
    many = EmbedError({"bad": list(range(12))})
    assert "for texts 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ... (12 texts)" in str(many)


def _poisoned(model, token: int):
    params = dict(model.params)
    params["embed"] = {**params["embed"],
                       "embedding": jnp.asarray(params["embed"]["embedding"]).at[token].set(jnp.inf)}
    return dataclasses.replace(model, params=params)


def test_nan_outputs_raise_naming_the_texts(tiny_folder):
    model = load_model(str(tiny_folder))
    zebra = model.tokenizer(" zebra", add_special_tokens=False)["input_ids"][0]
    emb = Embedder(_poisoned(model, zebra), EmbedSettings(max_length=32, top_k=4))
    texts = ["a fine text", "the zebra sat", "also fine", "one more zebra", "fine"]
    with pytest.raises(EmbedError) as e:
        emb.encode(texts)
    assert e.value.rows == [1, 3]
    assert "non-finite dense values (NaN/inf) for texts 1, 3" in str(e.value)
    with pytest.raises(EmbedError) as e:   # windows of 2: indices are still encode's
        emb.encode(["fine", "also fine", "and this", "one more zebra", "zebra"], window=2)
    assert e.value.rows == [3]
    clean = emb.encode([t for t in texts if "zebra" not in t], output_value=None)
    assert np.isfinite(clean.dense).all()


def test_nan_outputs_through_the_cli_write_nothing(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(shared_or_skip(SMOLLM2_DIR))
    zebra = tok(" zebra", add_special_tokens=False)["input_ids"][0]
    cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=512, bos_token_id=1, eos_token_id=2)
    folder = tiny_hf_folder(tmp_path / "poisoned", cfg, transformers.LlamaForCausalLM, zebra)
    capsys.readouterr()   # transformers' progress bar while saving
    corpus = write_corpus(tmp_path / "c.jsonl")
    out = tmp_path / "store"
    rc = embed_main(["--model", str(folder), "--input", str(corpus), "--output", str(out),
                     "--max-length", "32", "--top-k", "4", "--no-progress"])
    assert rc == 2
    # the job names the texts by FILE:LINE (the third document of the corpus)
    one_error(capsys, "the model gave unusable outputs",
              "non-finite dense values (NaN/inf) for texts ", f"{corpus.name}:3 (")
    # Nothing was recorded: the store (if created) holds no shard and is not complete.
    assert not list(out.glob("shards/*.json"))
    with pytest.raises(store_lib.StoreError):
        store_lib.open(out)


# ------------------------------------------------------------------ item 6: the character cut

def _texts() -> dict[str, str]:
    rnd = random.Random(1)
    words = "the quick brown fox jumps over the lazy dog, and 1234 élan naïve 東京 🙂 e\u0301 \t\n".split(" ")
    return {
        "natural": " ".join(rnd.choice(words) for _ in range(40000)),
        "one word": "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(200000)),
        "a run": "a" * 200000,
        "hashes": "#" * 200000,
        "spaces": " " * 200000 + "x",
        "newlines": "\n" * 200000,
        "digits": "1234567890" * 20000,
        "cjk": "東京都" * 70000,
        "emoji": "🙂👍🏽" * 70000,
        "combining": "e" + "\u0301" * 200000,
        "pieces": "".join(rnd.choice(["ab", "cd", " ", "..", "é", "\n", "ZZ", "0"]) for _ in range(100000)),
    }


def _uncut(dt: DocTokenizer) -> DocTokenizer:
    ref = DocTokenizer(dt.tokenizer, dt.template, dt.max_length)
    ref.window_chars = None   # today's path: every text tokenized whole
    return ref


@pytest.mark.parametrize("max_length,prompt", [(16, "none"), (64, "prompteol"), (512, "none")])
def test_cut_texts_tokenize_as_the_whole_text(smol_tokenizer, max_length, prompt):
    dt = DocTokenizer(smol_tokenizer, EmbedSettings(max_length=max_length, prompt=prompt).template(),
                      max_length)
    assert longest_entry(smol_tokenizer) == 81
    assert dt.cut_chars == 2 * (dt.text_budget + 1) * 81
    texts = _texts()
    for name, text in texts.items():
        assert len(text) > dt.cut_chars, name
        assert dt.cut_ids(text, dt.text_budget + 1) is not None, name   # the cut was used
    short = ["hello world", "x" * (dt.cut_chars - 1), "", "word " * (dt.cut_chars // 5)]
    batch = short[:2] + list(texts.values()) + short[2:]
    got, ref = dt(batch), _uncut(dt)(batch)
    for text, g, r in zip(batch, got, ref):
        assert g.ids.tolist() == r.ids.tolist() and g.flags == r.flags, text[:40]
        assert g.pool_start == r.pool_start
    assert all(g.flags & FLAG_TRUNCATED for g in got[2:-2])


def test_cut_falls_back_to_the_whole_text_when_not_provable():
    """A tokenizer whose NFC normalizer composes 3 characters (decomposed Hangul) into one, with
    vocabulary entries of at most 2 characters: n tokens cover more than n * L characters, so the
    cut is not provably exact and the whole text is tokenized."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    rnd = random.Random(0)
    syllables = "한국어텍스트입니다"
    tok = tokenizers.Tokenizer(tokenizers.models.Unigram())
    tok.normalizer = tokenizers.normalizers.NFC()
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
    tok.train_from_iterator(
        ["".join(rnd.choice(syllables) for _ in range(60)) for _ in range(300)],
        tokenizers.trainers.UnigramTrainer(vocab_size=60, special_tokens=["u"], unk_token="u",
                                           max_piece_length=2))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="u")
    assert longest_entry(fast) == 2
    dt = DocTokenizer(fast, Template(), 32)
    decomposed = unicodedata.normalize("NFD", "".join(rnd.choice(syllables) for _ in range(30000)))
    composed = "".join(rnd.choice(syllables) for _ in range(30000))
    assert len(decomposed) > dt.cut_chars and len(composed) > dt.cut_chars
    assert dt.cut_ids(decomposed, dt.text_budget + 1) is None      # falls back
    assert dt.cut_ids(composed, dt.text_budget + 1) is not None    # cut
    got, ref = dt([decomposed, composed]), _uncut(dt)([decomposed, composed])
    assert [g.ids.tolist() for g in got] == [r.ids.tolist() for r in ref]


HUGE_LINE_SCRIPT = r"""
import json, sys
from transformers import AutoTokenizer
from keytok_jax.pipeline.read import read_corpus
from keytok_jax.pipeline.tokenize import DocTokenizer
from keytok_jax.settings import EmbedSettings

folder, path, reference = sys.argv[1], sys.argv[2], sys.argv[3]

def peak():
    # VmHWM: the peak resident set size, reset by writing 5 to clear_refs (Linux >= 4.0)
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM"))

dt = DocTokenizer(AutoTokenizer.from_pretrained(folder), EmbedSettings(max_length=512).template(), 512)
dt(["warm up the tokenizer"])
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = peak()
(doc,) = read_corpus(path)
(got,) = dt([doc.text])
used = peak() - base
whole = DocTokenizer(dt.tokenizer, dt.template, dt.max_length)
whole.window_chars = None
text = doc.text if reference == "whole" else doc.text[: int(reference)]
(ref,) = whole([text])
print(json.dumps({"used": used, "chars": len(doc.text), "ids": got.ids.tolist(),
                  "flags": got.flags, "ref": ref.ids.tolist(), "ref_flags": ref.flags}))
"""


def _huge_line(tmp_path: Path) -> Path:
    rnd = random.Random(2)
    words = "the quick brown fox jumps over the lazy dog and élan naïve 1234 , .".split()
    block = " ".join(rnd.choice(words) for _ in range(200_000))   # ~1 MB
    text = " ".join(block for _ in range(23))
    path = tmp_path / "huge.jsonl"
    path.write_text(json.dumps({"_id": "huge", "text": text}, ensure_ascii=False) + "\n")
    assert path.stat().st_size > 20_000_000
    return path


def _run_huge(tiny_folder, path: Path, reference: str) -> dict:
    env = _subprocess_env()
    proc = subprocess.run([sys.executable, "-c", HUGE_LINE_SCRIPT, str(tiny_folder), str(path), reference],
                          capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_huge_line_costs_memory_of_max_length_not_of_the_line(tiny_folder, tmp_path):
    """A 20 MB line: reading it and tokenizing it at max_length 512 raises the peak RSS by less
    than 250 MB (the line itself is held as bytes and as a string, ~60 MB); tokenized whole it took
    ~3 GB. Its tokens equal those of its first million characters tokenized whole (12 times the
    cut); the slow test compares with the whole line."""
    r = _run_huge(tiny_folder, _huge_line(tmp_path), "1000000")
    assert r["chars"] > 20_000_000, r["chars"]
    print("peak RSS growth", r["used"] // 2**20, "MiB")
    assert r["used"] < 250 * 2**20, r["used"]
    assert r["ids"] == r["ref"] and len(r["ids"]) == 512 and r["flags"] == r["ref_flags"] == FLAG_TRUNCATED


@pytest.mark.slow
def test_huge_line_tokens_equal_the_whole_line_prefix(tiny_folder, tmp_path):
    """The same 20 MB line against the whole line tokenized uncut (~30 s, ~3 GB in a subprocess)."""
    r = _run_huge(tiny_folder, _huge_line(tmp_path), "whole")
    assert r["used"] < 250 * 2**20, r["used"]
    assert r["ids"] == r["ref"] and len(r["ids"]) == 512 and r["flags"] == r["ref_flags"]


# ------------------------------------------------------------------ item 6: input through the CLI

@pytest.fixture(scope="module")
def tiny_args(tiny_folder):
    return ["--model", str(tiny_folder), "--max-length", "32", "--top-k", "4", "--no-progress"]


def _subprocess_env() -> dict:
    """The test process's environment, with its jit cache (so the child compiles nothing new)."""
    import jax
    return {**os.environ, "JAX_PLATFORMS": "cpu",
            "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5"}


@pytest.fixture(scope="module")
def from_file(tiny_args, tmp_path_factory):
    """The store of DOCS read from a file: what standard input must give too."""
    d = tmp_path_factory.mktemp("from-file")
    assert embed_main(tiny_args + ["--input", str(write_corpus(d / "c.jsonl")),
                                   "--output", str(d / "store")]) == 0
    return stored(d / "store")


def _same_store(path, want) -> None:
    got = stored(path)
    assert got[0] == want[0] == ["a", "b", "c"]
    for g, w in zip(got[1:], want[1:]):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("fmt,data", [
    (None, "".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in DOCS)),
    ("tsv", "".join(f"{i}\t{t}\n" for i, t in DOCS)),
    ("txt", "".join(f"{t}\n" for _, t in DOCS)),
], ids=["jsonl", "tsv", "txt"])
def test_stdin_input_in_process(tiny_args, from_file, tmp_path, monkeypatch, fmt, data):
    import io
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data.encode())))
    out = tmp_path / "store"
    assert embed_main(tiny_args + ["--input", "-", "--output", str(out)]
                      + (["--format", fmt] if fmt else [])) == 0
    if fmt == "txt":   # ids are line numbers
        assert stored(out)[0] == ["1", "2", "3"]
        np.testing.assert_array_equal(stored(out)[1], from_file[1])
    else:
        _same_store(out, from_file)


@pytest.mark.slow
def test_stdin_piped_through_the_cli(tiny_args, from_file, tmp_path):
    """``--input -`` with the corpus piped into ``python -m keytok_jax.embed`` (~15 s: a fresh
    interpreter imports jax and loads the model)."""
    corpus = write_corpus(tmp_path / "c.jsonl")
    out = tmp_path / "store"
    proc = subprocess.run([sys.executable, "-m", "keytok_jax.embed", *tiny_args, "--input", "-",
                           "--output", str(out)], input=corpus.read_bytes(), capture_output=True,
                          env=_subprocess_env(), timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    _same_store(out, from_file)
    # A bad line from standard input is named <stdin>:LINE; nothing is recorded for it.
    bad = tmp_path / "bad"
    proc = subprocess.run([sys.executable, "-m", "keytok_jax.embed", *tiny_args, "--input", "-",
                           "--output", str(bad)], input=b'{"_id": "a", "text": "x"}\n{"_id": \n',
                          capture_output=True, env=_subprocess_env(), timeout=600, cwd=ROOT)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert [l for l in err.splitlines() if l.strip()][-1].startswith("error: <stdin>:2: malformed JSON")
    assert not list(bad.glob("shards/*.json"))


def test_utf16_input_through_the_cli(tiny_args, tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    text = "".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in DOCS)
    corpus.write_bytes(text.encode("utf-16"))
    out = tmp_path / "store"
    args = tiny_args + ["--input", str(corpus), "--output", str(out)]
    assert embed_main(args) == 2
    one_error(capsys, f"{corpus}:1: ", "looks like UTF-16",
              f"convert it to UTF-8, e.g. iconv -f UTF-16 -t UTF-8 {corpus} > {corpus}.utf8")
    assert not list(out.glob("shards/*.json"))
    corpus.write_text(text)   # converted as the message says: the same command now completes
    assert embed_main(args) == 0
    assert stored(out)[0] == ["a", "b", "c"]


def test_id_with_invalid_bytes_through_the_cli(tiny_args, tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(b'{"_id": "a", "text": "fine"}\n{"_id": "b\xff", "text": "bad id"}\n'
                       b'{"_id": "c", "text": "caf\xe9 text"}\n')
    out = tmp_path / "store"
    args = tiny_args + ["--input", str(corpus), "--output", str(out)]
    assert embed_main(args) == 2
    one_error(capsys, f"{corpus}:2: id 'b\ufffd' holds invalid UTF-8 bytes")
    assert not list(out.glob("shards/*.json"))
    rejects = tmp_path / "rejects.jsonl"
    skip = tmp_path / "skip"
    assert embed_main(tiny_args + ["--input", str(corpus), "--output", str(skip), "--on-error", "skip",
                                   "--rejects", str(rejects)]) == 0
    assert stored(skip)[0] == ["a", "c"]
    (r,) = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert r["source"] == f"{corpus}:2" and "invalid UTF-8 bytes" in r["error"]
    s = store_lib.open(skip)
    assert np.asarray(s.flags.read().result()).tolist()[1] & store_lib.FLAG_REPLACED  # text policy kept
