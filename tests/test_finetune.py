"""Contrastive fine-tuning: data readers, loss, trainable sets, training, resume, export."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import SHARED, shared_or_skip
from keytok_jax.errors import CorpusError, SettingsError
from keytok_jax.train import data
from keytok_jax.train.checkpoint import read_log
from keytok_jax.train.objectives import (Adapter, combine, frozen_part, info_nce, init_trainable,
                                         merge_lora)

WORDS = ("red blue green cat dog bird runs sleeps eats the a big small old new house tree car river "
         "song").split()


def _sentence(rng, n):
    return " ".join(rng.choice(WORDS, n))


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    with open(path, "w") as f:
        for _ in range(32):
            a = _sentence(rng, 6)
            f.write(json.dumps({"anchor": a, "positive": a + " " + _sentence(rng, 2),
                                "negative": _sentence(rng, 6)}) + "\n")
    return path


# ------------------------------------------------------------------ data

def test_jsonl_examples_and_errors(tmp_path):
    good = tmp_path / "t.jsonl"
    good.write_text('{"anchor": "a", "positive": "b", "negative": "c"}\n\n{"anchor": "d", "positive": "e"}\n')
    assert data.read_examples(good) == [data.Example("a", "b", "c"), data.Example("d", "e", None)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"anchor": "a", "positive": "b"}\n{"anchor": "a"\n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl:2: malformed JSON"):
        data.read_examples(bad)
    bad.write_text('{"anchor": "a", "positive": ""}\n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl:1: field 'positive'"):
        data.read_examples(bad)


def test_nli_senteval_groups_premises(tmp_path):
    (tmp_path / "s1.dev").write_text("p1\np1\np1\np2\np2\n")
    (tmp_path / "s2.dev").write_text("neutral one\nentailed one\ncontradicting one\nentailed two\nneutral two\n")
    (tmp_path / "labels.dev").write_text("neutral\nentailment\ncontradiction\nentailment\nneutral\n")
    assert data.read_examples(tmp_path) == [data.Example("p1", "entailed one", "contradicting one"),
                                            data.Example("p2", "entailed two", None)]
    (tmp_path / "labels.dev").write_text("neutral\nentailment\nmaybe\nentailment\nneutral\n")
    with pytest.raises(CorpusError, match=r"labels\.dev:3: unknown label 'maybe'"):
        data.read_examples(tmp_path)


def test_simcse_csv(tmp_path):
    path = tmp_path / "nli_for_simcse.csv"
    path.write_text('sent0,sent1,hard_neg\n"a, b",c,d\n')
    assert data.read_examples(path) == [data.Example("a, b", "c", "d")]


def test_beir_train_pairs(tmp_path):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "title": "T", "text": "one"}\n'
                                           '{"_id": "d2", "title": "", "text": "two"}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "query one"}\n')
    (tmp_path / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\n")
    assert data.read_examples(tmp_path) == [data.Example("query one", "T one")]


def test_real_nli_and_scifact_train():
    nli = data.read_examples(shared_or_skip(SHARED / "data" / "nli" / "snli_senteval"))
    assert len(nli) > 6000 and sum(e.negative is not None for e in nli) > 0.9 * len(nli)
    scifact = data.read_examples(shared_or_skip(SHARED / "data" / "scifact"))
    assert len(scifact) >= 800 and all(e.negative is None for e in scifact)


# ------------------------------------------------------------------ loss and trainable sets

def test_info_nce_matches_numpy():
    rng = np.random.default_rng(0)
    a, p, n = (rng.standard_normal((4, 8)).astype(np.float32) for _ in range(3))
    loss, acc = info_nce(a, p, n, temperature=0.1)

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    logits = unit(a) @ np.concatenate([unit(p), unit(n)]).T / 0.1
    ref = np.mean(np.log(np.exp(logits).sum(1)) - np.diag(logits))
    assert float(loss) == pytest.approx(ref, rel=1e-5)
    assert float(acc) == np.mean(logits.argmax(1) == np.arange(4))
    # Perfect pairs far apart: loss near 0, accuracy 1.
    eye = np.eye(4, 8, dtype=np.float32)
    loss, acc = info_nce(eye, eye, None, temperature=0.01)
    assert float(loss) < 1e-6 and float(acc) == 1.0


@pytest.fixture(scope="module")
def tiny_model(tiny_folder):
    from keytok_jax.loading import load_model

    return load_model(str(tiny_folder), cache=False)


def test_lora_starts_at_backbone_and_merges_exactly(tiny_model):
    adapter = Adapter("lora", rank=4, alpha=8.0, targets=("attn", "mlp"))
    trainable = init_trainable(tiny_model.params, adapter, jax.random.PRNGKey(0))
    assert set(trainable["layers"]["attn"]) == {"q", "k", "v", "o"}
    frozen = frozen_part(tiny_model.params, adapter)
    module = tiny_model.module()
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 1000, (2, 12)), jnp.int32)
    mask = jnp.ones_like(ids).at[1, 8:].set(0)
    base = module.apply({"params": tiny_model.params}, ids, mask)
    np.testing.assert_array_equal(module.apply({"params": combine(frozen, trainable, adapter)}, ids, mask), base)
    # Nonzero B: the side path and the merged kernels give the same model.
    trainable = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(1), x.shape), trainable)
    side = combine(frozen, trainable, adapter)
    merged = merge_lora(side)
    assert "lora_a" not in merged["layers"]["attn"]["q"]
    out_side = module.apply({"params": side}, ids, mask)
    out_merged = module.apply({"params": merged}, ids, mask)
    assert float(jnp.max(jnp.abs(out_side - base))) > 1e-3
    np.testing.assert_allclose(out_side, out_merged, atol=1e-5)


def test_bias_mode_needs_biases(tiny_model):
    with pytest.raises(ValueError, match="no bias parameters"):
        init_trainable(tiny_model.params, Adapter("bias"), jax.random.PRNGKey(0))
    params = {"layers": {"attn": {"q": {"kernel": jnp.ones((2, 3, 3)), "bias": jnp.zeros((2, 3))}}}}
    trainable = init_trainable(params, Adapter("bias"), jax.random.PRNGKey(0))
    assert jax.tree.map(jnp.shape, trainable) == {"layers": {"attn": {"q": {"bias": (2, 3)}}}}
    new = combine(params, jax.tree.map(lambda x: x + 1, trainable), Adapter("bias"))
    assert float(new["layers"]["attn"]["q"]["bias"].sum()) == 6 and float(new["layers"]["attn"]["q"]["kernel"].sum()) == 18


# ------------------------------------------------------------------ training, resume, export

def _opts(folder, data_path, output, **kw):
    from keytok_jax.finetune import build_parser

    argv = ["--model", str(folder), "--data", str(data_path), "--output", str(output),
            "--batch-size", "16", "--max-steps", "6", "--save-every", "2", "--lr", "1e-2",
            "--warmup", "1", "--rank", "4", "--no-progress"]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    return vars(build_parser().parse_args(argv))


@pytest.fixture(scope="module")
def full_run(tiny_folder, pairs_file, tmp_path_factory):
    from keytok_jax.finetune import train

    out = tmp_path_factory.mktemp("run-full")
    return out, train(_opts(tiny_folder, pairs_file, out))


@pytest.mark.slow
def test_training_reduces_loss(full_run):
    out, summary = full_run
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert summary["hard_negatives"] and summary["examples"] == 32 and summary["micro_batches_per_epoch"] == 2
    # 2 micro-batches per epoch: the same 32 examples in epochs 1 and 3.
    first, last = np.mean([r["loss"] for r in log[:2]]), np.mean([r["loss"] for r in log[-2:]])
    assert last < 0.8 * first, (first, last)


@pytest.mark.slow
def test_resume_continues_at_same_step_and_state(full_run, tiny_folder, pairs_file, tmp_path):
    from keytok_jax.finetune import train

    _, reference = full_run
    opts = _opts(tiny_folder, pairs_file, tmp_path)
    partial = train(opts, stop_after=3)          # checkpoint at step 2; step 3 is lost, as in a kill
    assert partial["steps"] == 3 and not (tmp_path / "model").exists()
    resumed = train(opts)
    assert resumed["resumed_at"] == 2 and resumed["steps_this_run"] == 4 and resumed["steps"] == 6
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 resumed["final_params"], reference["final_params"])
    log = [json.loads(line)["step"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4, 5, 6]
    # A rerun with other settings is refused, naming them.
    with pytest.raises(SettingsError, match="lr"):
        train({**opts, "lr": 1e-3})


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun(tiny_folder, pairs_file, tmp_path):
    """The CLI killed with SIGKILL after its step-50 checkpoint, rerun with the same command: it
    resumes from the checkpoint and ends with the parameters of an uninterrupted run, every step
    logged once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from keytok_jax.finetune import train
    from keytok_jax.loading import load_model

    flags = dict(max_steps=200, save_every=50)
    out = tmp_path / "killed"
    argv = [sys.executable, "-m", "keytok_jax.finetune", "--model", str(tiny_folder), "--data", str(pairs_file),
            "--output", str(out), "--batch-size", "16", "--max-steps", "200", "--save-every", "50",
            "--lr", "1e-2", "--warmup", "1", "--rank", "4", "--no-progress"]
    env = {**os.environ, "KEYTOK_JAX_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = out / "train_log.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 60:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it was killed"
    logged = len(log.read_text().splitlines())
    assert 60 <= logged < 200 and not (out / "model").exists()

    rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout[rerun.stdout.index("{"):])
    last = 50 * (logged // 50)   # the last checkpoint, unless the kill landed while it was written
    assert summary["resumed_at"] in {last, last - 50} and summary["resumed_at"] >= 50
    assert summary["steps"] == 200 and summary["steps_this_run"] == 200 - summary["resumed_at"]
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == list(range(1, 201))

    reference = train(_opts(tiny_folder, pairs_file, tmp_path / "reference", **flags))
    resumed = load_model(str(out / "model"), cache=False)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 resumed.params, reference["final_params"])


def test_export_loads_in_keytok_and_transformers(full_run):
    torch = pytest.importorskip("torch")
    import transformers

    from keytok_jax.loading import load_model

    out, summary = full_run
    folder = out / "model"
    model = load_model(str(folder), cache=False)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 model.params, summary["final_params"])
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    ids, mask = model.tokenize(["the red cat runs", "a big old house by the river"])
    ours = np.asarray(model.hidden_states(ids, mask))
    with torch.inference_mode():
        theirs = hf(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                    output_hidden_states=True).hidden_states[-1].numpy()
    valid = mask.astype(bool)
    assert np.max(np.abs(ours[valid] - theirs[valid])) <= 1e-4
    preset = (folder / "keytok.yaml").read_text()
    assert "pooling: weighted_mean" in preset and str(folder.resolve()) in preset


def test_cli_help_and_bad_data(tmp_path, capsys):
    from keytok_jax.finetune import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "--accumulate" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    assert main(["--data", str(bad), "--output", str(tmp_path / "o"), "--model", "/nonexistent/x"]) == 2


# ------------------------------------------------------------------ STS

def test_sts_spearman_of_known_vectors(tmp_path):
    from keytok_jax.sts import evaluate_sts

    path = tmp_path / "sts-test.csv"
    rows = [("a", "b", 5.0), ("c", "d", 1.0), ("e", "f", 3.0)]
    path.write_text("".join(f"g\tx\ty\t{i}\t{s}\t{a}\t{b}\n" for i, (a, b, s) in enumerate(rows)))
    vec = {"a": [1, 0], "b": [1, 0.1], "c": [1, 0], "d": [0, 1], "e": [1, 0], "f": [1, 1]}

    class Fake:
        def encode(self, texts):
            return np.asarray([vec[t] for t in texts], np.float32)

    result = evaluate_sts(Fake(), path)
    assert result["pairs"] == 3 and result["spearman"] == pytest.approx(100.0)


def test_read_real_stsb():
    from keytok_jax.sts import read_sts_pairs

    pairs = read_sts_pairs(shared_or_skip(SHARED / "data" / "sts" / "STSBenchmark" / "sts-test.csv"))
    assert len(pairs) == 1379 and all(0 <= s <= 5 for _, _, s in pairs)


def test_log_of_a_run_killed_before_its_first_checkpoint_starts_over(tmp_path):
    """Steps logged by a run killed before any checkpoint are dropped on the rerun (which starts at
    step 1 again), so no step is logged twice; with a checkpoint, the steps after it are dropped."""
    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3)))
    assert read_log(log, None) == [] and log.read_text() == ""
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3)))
    assert [h["step"] for h in read_log(log, 2)] == [1, 2]
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2]
