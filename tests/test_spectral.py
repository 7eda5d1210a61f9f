"""Spectral analysis: SVD / eigh / power iteration against numpy float64, streaming = in memory,
the official alignment metrics on hand-built cases, the CLI end to end on a tiny model (texts and
store), and on SmolLM2 + STS-B: the uncentered first-component shift raises local alignment."""
import csv
import json

import numpy as np
import pytest
from conftest import SHARED, SMOLLM2_GGUF, shared_or_skip

import keytok_jax
from keytok_jax import spectral as sp
from keytok_jax import Embedder, EmbedSettings, Shift


def _data(n=240, d=20, seed=0, offset=5.0):
    """Rows with decaying variances around a common offset (a dominant uncentered direction)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) * np.geomspace(4, 0.05, d) + offset * rng.standard_normal(d)).astype(np.float32)


def _same_directions(a, b, r, tol):
    """Columns equal up to sign."""
    dots = np.abs(np.sum(a[:, :r] * b[:, :r], axis=0) / np.linalg.norm(a[:, :r], axis=0)
                  / np.linalg.norm(b[:, :r], axis=0))
    assert np.all(np.abs(dots - 1) <= tol), dots


# ------------------------------------------------------------------ linear algebra

@pytest.mark.parametrize("precision,tol", [("float32", 2e-5), ("float64", 1e-12)])
def test_batched_svd_matches_numpy_float64(precision, tol):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 30, 12)) * np.geomspace(3, 0.1, 12)
    u, s, vt = sp.batched_svd(x, precision)
    assert u.shape == (3, 30, 12) and s.shape == (3, 12) and vt.shape == (3, 12, 12)
    for g in range(3):
        _, s_ref, vt_ref = np.linalg.svd(x[g].astype(np.float64), full_matrices=False)
        np.testing.assert_allclose(s[g], s_ref, rtol=tol * 10, atol=tol * s_ref[0])
        _same_directions(vt[g].T, vt_ref.T, 12, tol * 100)
        np.testing.assert_allclose(u[g] * s[g] @ vt[g], x[g], atol=tol * 10 * s_ref[0])


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("precision,tol", [("float32", 1e-5), ("float64", 1e-11)])
def test_components_streaming_equals_in_memory_and_numpy(centered, precision, tol):
    x = _data()
    x64 = x.astype(np.float64)
    a = x64 - x64.mean(0) if centered else x64
    w_ref, v_ref = np.linalg.eigh(a.T @ a)
    w_ref, v_ref = w_ref[::-1], v_ref[:, ::-1]

    mem = sp.svd_components(x, centered, precision)
    acc = sp.StreamingMoments(x.shape[1], precision)
    for lo, hi in [(0, 1), (1, 38), (38, 100), (100, 101), (101, 240)]:   # uneven, incl. 1 row
        acc.update(x[lo:hi])
    stream = acc.components(centered)
    assert stream.count == mem.count == 240 and stream.centered == centered
    for comp in (mem, stream):
        np.testing.assert_allclose(comp.eigenvalues, w_ref, rtol=tol * 10, atol=tol * w_ref[0])
        _same_directions(comp.directions, v_ref, 10, tol * 10)   # well-separated leading ones
        assert comp.total == pytest.approx(np.trace(a.T @ a), rel=tol * 10)
        np.testing.assert_allclose(comp.mean, x64.mean(0), rtol=tol * 10, atol=tol)
        assert np.all(comp.mean @ comp.directions[:, :10] > 0)    # sign convention
    np.testing.assert_allclose(stream.directions[:, :10], mem.directions[:, :10], atol=tol * 100)
    np.testing.assert_allclose(acc.gram(centered), a.T @ a, rtol=tol * 10, atol=tol * w_ref[0])
    # two accumulators merged (e.g. two processes or devices) = one
    left, right = sp.StreamingMoments(20, precision), sp.StreamingMoments(20, precision)
    left.update(x[:77])
    right.update(x[77:])
    np.testing.assert_allclose(left.merge(right).gram(centered), acc.gram(centered), rtol=tol * 10,
                               atol=tol * w_ref[0])


def test_streaming_float32_centered_survives_a_large_mean():
    """Chan's merge keeps the centred scatter accurate in float32 when |mean| >> spread, where
    XᵀX - n μμᵀ would cancel (the SmolLM2 situation: norms ~50 around a common direction)."""
    rng = np.random.default_rng(2)
    x = (300.0 + rng.standard_normal((4000, 8)) * np.geomspace(1, 0.1, 8)).astype(np.float32)
    acc = sp.StreamingMoments(8, "float32")
    for lo in range(0, 4000, 300):
        acc.update(x[lo: lo + 300])
    ref = np.cov(x.astype(np.float64).T, bias=True) * 4000
    np.testing.assert_allclose(acc.gram(True), ref, rtol=1e-3, atol=1e-3 * ref[0, 0])
    naive = (x.T @ x).astype(np.float64) - 4000 * np.outer(x.mean(0), x.mean(0))
    assert np.abs(naive - ref).max() > 100 * np.abs(acc.gram(True) - ref).max()


@pytest.mark.parametrize("centered", [False, True])
def test_power_iteration_matches_eigh(centered):
    x = _data(seed=3)
    comp = sp.svd_components(x, centered, "float64")
    v, lam, _iters = sp.power_iteration_data(x, centered, tol=1e-10, max_iter=5000, precision="float64")
    assert abs(abs(v @ comp.first) - 1) < 1e-9 and lam == pytest.approx(comp.eigenvalues[0], rel=1e-9)
    acc = sp.StreamingMoments(x.shape[1], "float32").update(x)
    pw = acc.components(centered, method="power")
    assert pw.method == "power" and pw.directions.shape == (20, 1) and pw.extra["iterations"] >= 1
    assert abs(pw.first @ comp.first - 1) < 1e-5            # same orientation (mean·v > 0)
    assert pw.eigenvalues[0] == pytest.approx(comp.eigenvalues[0], rel=1e-5)
    v2, lam2, _ = sp.power_iteration(acc.gram(centered), tol=1e-7)
    assert abs(abs(v2 @ comp.first) - 1) < 1e-5 and lam2 == pytest.approx(comp.eigenvalues[0], rel=1e-5)


def test_components_save_load_roundtrip(tmp_path):
    comp = sp.svd_components(_data(n=30, d=6), centered=True)
    comp.save(tmp_path / "c.npz")
    back = sp.Components.load(tmp_path / "c.npz")
    np.testing.assert_array_equal(back.directions, comp.directions)
    np.testing.assert_array_equal(back.eigenvalues, comp.eigenvalues)
    assert (back.count, back.centered, back.total, back.method) == (30, True, comp.total, "svd")
    assert back.explained.sum() == pytest.approx(1.0)


# ------------------------------------------------------------------ analyses

def test_variation_equals_the_official_formula_and_shift_lambda():
    rng = np.random.default_rng(4)
    backbone = _data(n=50, d=10, seed=4)
    embedder = backbone + np.outer(np.ones(50), rng.standard_normal(10)) + 0.1 * rng.standard_normal((50, 10))
    comp = sp.svd_components(backbone)
    var = sp.variation(comp, embedder.mean(0))
    V = comp.directions
    official = (embedder @ V - backbone @ V).mean(axis=0)      # before_after_variation
    np.testing.assert_allclose(var["diff"], official, rtol=1e-5, atol=1e-5)
    assert var["share"].sum() == pytest.approx(1.0) and var["lambda"] == pytest.approx(official[0], rel=1e-5)
    assert sp.shift_lambda(comp, "variation", var) == pytest.approx(var["lambda"])
    assert sp.shift_lambda(comp, 3.5) == 3.5
    lam = sp.shift_lambda(comp, "remove")
    shifted = backbone + lam * comp.first
    assert abs(shifted.mean(0) @ comp.first) < 1e-4         # the mean loses its v1 part
    assert sp.shift_lambda(comp, "remove", scale=0.5) == pytest.approx(lam / 2)


def test_contribution_splits_logits_and_top_tokens_match():
    rng = np.random.default_rng(5)
    head = rng.standard_normal((300, 16)).astype(np.float32)
    e = rng.standard_normal(16).astype(np.float32)
    v = rng.standard_normal(16)
    c = sp.contribution(e, v, head, k=7)
    np.testing.assert_array_equal(c["ids"], np.argsort(-(head @ e), kind="stable")[:7])
    np.testing.assert_allclose(c["first"] + c["residual"], c["total"], atol=1e-5)
    np.testing.assert_allclose(c["first"], head[c["ids"]] @ (v / np.linalg.norm(v)) * c["coefficient"], rtol=1e-5)
    ids, logits = sp.top_tokens(np.stack([e, 2 * e, -e]), head, 7, shift_vec=np.zeros(16))
    np.testing.assert_array_equal(ids[0], c["ids"])
    np.testing.assert_array_equal(ids[1], c["ids"])
    np.testing.assert_allclose(logits[0], c["total"], rtol=1e-5)


# ------------------------------------------------------------------ metrics (official calculate_metric)

def _official(token_lists, topk_indices, k):
    """A transcription of the official calculate_metric (aligned_token.py), for cross-checking."""
    avg_hit_k, avg_local_align, valid_num = 0, 0, 0
    total_match, total_exist = set(), set()
    for token_list, topk_idxs in zip(token_lists, topk_indices):
        if len(token_list) == 0:
            continue
        valid_num += 1
        avg_hit_k += int(len(set(topk_idxs[:k]) & set(token_list)) > 0)
        avg_local_align += len(set(topk_idxs[:len(token_list)]) & set(token_list)) / len(set(token_list))
        total_match |= set(topk_idxs[:len(token_list)]) & set(token_list)
        total_exist |= set(token_list)
    return avg_hit_k / valid_num, avg_local_align / valid_num, len(total_match) / len(total_exist)


def test_metrics_hand_built_cases():
    top = np.array([[5, 6, 7, 8],     # text [5, 5, 9]: duplicates; len(L) = 3 slices [5, 6, 7]; |T| = 2
                    [1, 2, 3, 4],     # empty text: skipped, counted
                    [9, 1, 2, 3],     # text [3]: len(L) = 1 → only [9] counts for local; hit@4 sees 3
                    [2, 7, 3, 4]])    # text [7, 2]: k = 4 > |T| = 2, both matched
    lists = [[5, 5, 9], [], [3], [7, 2]]
    r = sp.alignment_metrics(lists, top, k=4)
    assert (r["texts"], r["valid"], r["empty"]) == (4, 3, 1)
    assert r["hit@4"] == pytest.approx(1.0)
    assert r["local_alignment"] == pytest.approx((1 / 2 + 0 + 1) / 3)
    assert r["global_alignment"] == pytest.approx(3 / 5)      # matched {5, 7, 2} of {5, 9, 3, 7, 2}
    assert (r["hit@4"], r["local_alignment"], r["global_alignment"]) == pytest.approx(_official(lists, top, 4))
    r1 = sp.alignment_metrics(lists, top, k=1)
    assert r1["hit@1"] == pytest.approx(2 / 3)
    # official depth "k": the top list holds only k ids, so a long text sees only the top k
    lists_long = [[5, 6, 7, 8, 1, 2]]
    top_long = np.array([[9, 5, 6, 7, 8, 1]])
    assert sp.alignment_metrics(lists_long, top_long, k=2)["local_alignment"] == pytest.approx(1 / 6)
    assert sp.alignment_metrics(lists_long, top_long, k=2, depth="T")["local_alignment"] == pytest.approx(5 / 6)
    # streaming in pieces = at once; all-empty gives NaN, not an error
    acc = sp.AlignmentAccumulator(4)
    acc.update(lists[:2], top[:2])
    acc.update(lists[2:], top[2:])
    assert acc.result() == r
    assert np.isnan(sp.alignment_metrics([[]], top[:1], k=2)["local_alignment"])
    with pytest.raises(ValueError):
        sp.alignment_metrics([[1]], np.array([[1, 2]]), k=3)


def test_metrics_match_official_on_random_cases():
    rng = np.random.default_rng(6)
    lists = [list(rng.integers(0, 30, rng.integers(0, 15))) for _ in range(200)]
    top = np.stack([rng.permutation(30)[:10] for _ in range(200)])
    for k in (1, 5, 10):
        r = sp.alignment_metrics(lists, top[:, :k], k=k)
        assert (r[f"hit@{k}"], r["local_alignment"], r["global_alignment"]) == pytest.approx(
            _official(lists, top[:, :k].tolist(), k))


def test_read_texts_sts_and_stsb(tmp_path):
    (tmp_path / "STS.input.x.txt").write_text("a cat sat .\ta cat sits ?\nno\tyes\nhi .\tho\n")
    (tmp_path / "STS.gs.x.txt").write_text("4.5\n3.0\n5\n")
    got = list(sp.read_texts(tmp_path / "STS.input.x.txt", min_score=4))
    assert got == [("1a", "a cat sat"), ("3a", "hi"), ("1b", "a cat sits"), ("3b", "ho")]
    raw = list(sp.read_texts(tmp_path / "STS.input.x.txt", sts_cleanup=False, limit=4))
    assert [t for _, t in raw] == ["a cat sat .", "no", "hi .", "a cat sits ?"]
    (tmp_path / "sts-dev.csv").write_text("g\tf\ty\t1\t5.0\ta b, c\td e\ng\tf\ty\t2\t1.0\tx\ty\n")
    assert [t for _, t in sp.read_texts(tmp_path / "sts-dev.csv", min_score=4)] == ["a b, c", "d e"]
    (tmp_path / "t.txt").write_text("one\n\nthree\n")
    assert list(sp.read_texts(tmp_path / "t.txt")) == [("1", "one"), ("2", ""), ("3", "three")]


# ------------------------------------------------------------------ tiny model: shift artifact + CLI



TEXTS = ["YMCA in South Australia", "A man is playing a flute.", "", "The cat sat on the mat, the cat did.",
         "Aspirin lowers the risk of heart attacks.", "   ", "Vitamin D deficiency is common in winter.",
         "economists are not against companies using luxury to promote products"] * 3


def test_shift_file_is_what_embed_applies(tiny_folder, tmp_path):
    model = keytok_jax.load_model(str(tiny_folder))
    emb = Embedder(model, EmbedSettings(pooling="mean", top_k=5, max_length=64))
    dense = emb.encode(TEXTS)
    comp = sp.svd_components(dense)
    shift = sp.make_shift(comp, sp.shift_lambda(comp, "remove"), model)
    assert shift.model_hash == sp.model_hash(model) and len(shift.model_hash) == 16
    shift.save(tmp_path / "shift.json")
    loaded = Shift.load(tmp_path / "shift.json")
    shifted = Embedder(model, EmbedSettings(pooling="mean", top_k=5, max_length=64), shift=loaded)
    out = shifted.encode(TEXTS, output_value=None)
    ids, _ = sp.top_tokens(dense, model.lm_head, 5, shift_vec=loaded.lam * loaded.direction)
    keep = (out.flags & 2) == 0                       # empty texts have no tokens in the embedder
    np.testing.assert_array_equal(out.token_ids[keep], ids[keep])


def _run(argv):
    assert sp.main(argv) == 0


def test_cli_from_texts_and_from_store(tiny_folder, tmp_path):
    pytest.importorskip("matplotlib")
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    common = ["--texts", str(texts), "--model", str(tiny_folder), "--max-length", "64", "--batch-rows", "7"]
    _run(["components", *common, "--output", str(tmp_path / "comp")])
    rep = json.loads((tmp_path / "comp" / "components.json").read_text())
    assert rep["rows"] == len(TEXTS) and rep["peak_rss_mb"] > 0
    comp = sp.Components.load(tmp_path / "comp" / "components-uncentered.npz")
    assert comp.count == len(TEXTS) and not comp.centered
    with open(tmp_path / "comp" / "components-centered.csv", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0][0] == "component" and len(rows) == 11
    assert (tmp_path / "comp" / "components-uncentered.png").stat().st_size > 0

    _run(["shift", *common, "--output", str(tmp_path / "shift"), "--k", "5", "--examples", "2",
          "--plot-examples", "1"])
    rep = json.loads((tmp_path / "shift" / "shift-report.json").read_text())
    shift = Shift.load(tmp_path / "shift" / "shift.json")
    assert rep["lambda"] == pytest.approx(shift.lam) and rep["lambda_from"] == "remove"
    np.testing.assert_allclose(shift.direction, comp.first, atol=1e-5)
    assert rep["before"]["texts"] == len(TEXTS) and rep["before"]["empty"] == 3   # "" ×3 ("   " encodes)
    assert len(rep["examples"]) == 2 and len(rep["examples"][0]["top_after"]) == 5
    assert (tmp_path / "shift" / "shift-example1.png").exists()
    assert not list((tmp_path / "shift").glob("keytok-spill-*"))       # the spill is cleaned up
    with open(tmp_path / "shift" / "shift.csv", encoding="utf-8") as f:
        assert sum(1 for _ in f) == len(TEXTS) + 1

    # a store written by the embed job (dense kept), then align with the shift: the same numbers
    from keytok_jax.embed import main as embed_main

    store = tmp_path / "store"
    assert embed_main(["--input", str(texts), "--output", str(store), "--model", str(tiny_folder),
                       "--pooling", "weighted_mean", "--prompt", "none", "--max-length", "64",
                       "--shard-size", "5", "--dense", "--no-progress"]) == 0
    _run(["align", "--store", str(store), "--output", str(tmp_path / "align"), "--k", "5",
          "--shift", str(tmp_path / "shift" / "shift.json"), "--batch-rows", "3"])
    al = json.loads((tmp_path / "align" / "align.json").read_text())
    for side in ("before", "after"):
        for key in ("hit@5", "local_alignment", "global_alignment", "valid", "empty"):
            assert al[side][key] == pytest.approx(rep[side][key], abs=1e-9), (side, key)
    # the store's batches end at its shards (5 rows), the texts' at --batch-rows 7: the same texts
    # all the same, and with the same model and settings the variation is zero
    _run(["variation", "--backbone-store", str(store), "--texts", str(texts), "--embedder-model",
          str(tiny_folder), "--embedder-pooling", "weighted_mean", "--embedder-prompt", "none",
          "--embedder-max-length", "64", "--batch-rows", "7", "--output", str(tmp_path / "var"),
          "--no-plots"])
    var = json.loads((tmp_path / "var" / "variation.json").read_text())
    assert abs(var["lambda"]) < 1e-4
    _run(["components", "--store", str(store), "--output", str(tmp_path / "comp-store"), "--no-plots",
          "--batch-rows", "4", "--precision", "float64"])
    comp_store = sp.Components.load(tmp_path / "comp-store" / "components-uncentered.npz")
    np.testing.assert_allclose(comp_store.eigenvalues[:5], comp.eigenvalues[:5], rtol=1e-4)

    # variation: backbone = weighted mean, embedder = last token; contribution of one text
    _run(["variation", *common, "--backbone-pooling", "weighted_mean", "--embedder-pooling", "last",
          "--output", str(tmp_path / "var"), "--shift-out", str(tmp_path / "var" / "shift.json")])
    var = json.loads((tmp_path / "var" / "variation.json").read_text())
    assert var["rows"] == len(TEXTS) and len(var["components"]) == 32
    assert sum(c["share"] for c in var["components"]) == pytest.approx(1.0)
    assert Shift.load(tmp_path / "var" / "shift.json").lam == pytest.approx(var["lambda"])
    _run(["shift", *common, "--output", str(tmp_path / "shift-var"), "--lambda",
          str(tmp_path / "var" / "variation.json"), "--components",
          str(tmp_path / "var" / "components-backbone.npz"), "--no-plots"])
    assert json.loads((tmp_path / "shift-var" / "shift-report.json").read_text())["lambda"] == pytest.approx(var["lambda"])
    _run(["contribution", "--text", "YMCA in South Australia", "--model", str(tiny_folder),
          "--direction", str(tmp_path / "shift" / "shift.json"), "--output", str(tmp_path / "contrib"), "--k", "6"])
    c = json.loads((tmp_path / "contrib" / "contribution.json").read_text())["texts"][0]
    np.testing.assert_allclose(np.add(c["first"], c["residual"]), c["total"], atol=1e-4)
    assert (tmp_path / "contrib" / "contribution-1.png").exists()


def test_cli_refuses_store_without_dense(tiny_folder, tmp_path, capsys):
    from keytok_jax.embed import main as embed_main

    texts = tmp_path / "t.txt"
    texts.write_text("one\ntwo\n")
    assert embed_main(["--input", str(texts), "--output", str(tmp_path / "s"), "--model", str(tiny_folder),
                       "--max-length", "64", "--no-progress"]) == 0
    assert sp.main(["components", "--store", str(tmp_path / "s"), "--output", str(tmp_path / "o")]) == 2
    assert "--dense" in capsys.readouterr().err


# ------------------------------------------------------------------ SmolLM2 on STS-B

def _stsb_sentences(n):
    """The official STS-B selection (data.py get_sts_data('sts-b')): train pairs with score > 4,
    first sentences."""
    path = shared_or_skip(SHARED / "data" / "sts" / "STSBenchmark" / "sts-train.csv")
    with open(path, encoding="utf-8") as f:
        rows = [r for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if float(r[4]) > 4]
    return [r[5] for r in rows[:n]]


def _embed_tight(model, texts, pooling="weighted_mean", max_length=64, rows=60):
    """Pooled hidden states with tight padding (multiples of 16 rather than the embedder's 64-token
    buckets): STS-B sentences are ~12 tokens, so this is ~4x less compute on a 2-core CPU."""
    from keytok_jax.pooling import pool

    ids_all = [model.tokenizer.encode(t)[:max_length] for t in texts]
    order = np.argsort([len(i) for i in ids_all], kind="stable")
    out = np.zeros((len(texts), model.config.output_dim), np.float32)
    for lo in range(0, len(texts), rows):
        idx = order[lo: lo + rows]
        width = -(-max(len(ids_all[i]) for i in idx) // 16) * 16
        ids = np.zeros((rows, width), np.int32)
        mask = np.zeros((rows, width), np.int32)
        for j, i in enumerate(idx):
            ids[j, : len(ids_all[i])] = ids_all[i]
            mask[j, : len(ids_all[i])] = 1
        out[idx] = np.asarray(pool(model.hidden_states(ids, mask), mask, pooling))[: len(idx)]
    return out


def test_smollm2_first_component_shift_raises_local_alignment():
    texts = _stsb_sentences(120)
    model = keytok_jax.load_model(str(shared_or_skip(SMOLLM2_GGUF)))
    dense = _embed_tight(model, texts)
    comp = sp.StreamingMoments(dense.shape[1]).update(dense[:80]).update(dense[80:]).components(centered=False)
    assert comp.explained[0] > 0.5                    # one dominant uncentered direction
    lists = sp.text_token_lists(model.tokenizer, texts)
    ids0, _ = sp.top_tokens(dense, model.lm_head, 10)
    before = sp.alignment_metrics(lists, ids0, k=10)
    after = {}
    for scale in (1.0, 0.5):
        lam = sp.shift_lambda(comp, "remove", scale=scale)
        ids1, _ = sp.top_tokens(dense, model.lm_head, 10, shift_vec=lam * comp.first)
        after[scale] = sp.alignment_metrics(lists, ids1, k=10)
    print(f"SmolLM2 STS-B ({len(texts)} sentences, weighted mean): local {before['local_alignment']:.3f} → "
          f"{after[1.0]['local_alignment']:.3f} (λ = -μ·v1), {after[0.5]['local_alignment']:.3f} (λ/2); "
          f"global {before['global_alignment']:.3f} → {after[1.0]['global_alignment']:.3f}")
    for scale in (1.0, 0.5):
        assert after[scale]["local_alignment"] > before["local_alignment"]
        assert after[scale]["global_alignment"] > before["global_alignment"]
