"""Controls for the first-component finding: each variant's vector against numpy, the
content-token filter on hand-built cases, the metrics through the official path, and the
``spectral controls`` command on a tiny model."""
import json

import numpy as np
import pytest

import keytok_jax
from keytok_jax import spectral as sp
from keytok_jax.analysis.alignment import alignment_metrics, evaluate_alignment, text_token_lists
from keytok_jax.analysis.controls import (content_filter, content_mask, control_variants,
                                          score_variants)
from keytok_jax.analysis.source import Batch


def _pair(n=60, d=12, seed=0):
    rng = np.random.default_rng(seed)
    b = rng.standard_normal((n, d)) * np.geomspace(3, 0.1, d) + 4 * rng.standard_normal(d)
    e = b + rng.standard_normal(d) + 0.1 * rng.standard_normal((n, d))
    return b, e


def _eig(x, centered):
    a = x - x.mean(0) if centered else x
    w, v = np.linalg.eigh(a.T @ a)
    v = v[:, ::-1]
    return v * np.sign(x.mean(0) @ v)


def test_variant_vectors_follow_the_formulas():
    b, e = _pair()
    variants, facts = control_variants(b, e, seeds=2, scales=(0.5, 2.0))
    v = {x.name: x for x in variants}
    V, C = _eig(b, False), _eig(b, True)
    diff = e.mean(0) - b.mean(0)
    lam = diff @ V[:, 0]                                   # official λ = diff_1
    assert facts["lambda"] == pytest.approx(lam, rel=1e-9)
    np.testing.assert_allclose(v["v1 shift"].vector, lam * V[:, 0], atol=1e-9)
    np.testing.assert_allclose(v["v1 shift ×2"].vector, 2 * lam * V[:, 0], atol=1e-9)
    np.testing.assert_allclose(v["v2 shift"].vector, lam * V[:, 1], atol=1e-9)
    np.testing.assert_allclose(v["centred v1 shift"].vector, lam * C[:, 0], atol=1e-8)
    np.testing.assert_allclose(v["mean difference"].vector, diff, atol=1e-12)
    np.testing.assert_allclose(v["mean difference − v1"].vector + v["v1 shift"].vector, diff, atol=1e-12)
    np.testing.assert_allclose(v["remove"].vector, -(b.mean(0) @ V[:, 0]) * V[:, 0], atol=1e-9)
    assert v["embedder − λ·v1"].role == "embedder"
    np.testing.assert_allclose(v["embedder − λ·v1"].vector, -lam * V[:, 0], atol=1e-9)
    for name in ("random shift #1", "random shift #2", "v2 shift", "centred v1 shift"):
        assert np.linalg.norm(v[name].vector) == pytest.approx(abs(lam))      # the same step size
        assert np.sign(b.mean(0) @ v[name].vector) == np.sign(lam)          # oriented as v1
    assert not np.allclose(v["random shift #1"].vector, v["random shift #2"].vector)
    assert facts["first_share"] == pytest.approx(lam ** 2 / (diff @ diff))


def test_content_filter_hand_built():
    mask = np.array([False, True, True, False, True, True])
    lists, tops = content_filter([[0, 1, 3, 1], [0, 3], [4]], np.array([[0, 1, 2, 4], [3, 5, 0, 2], [0, 3, 1, 0]]),
                                 mask, 2)
    assert lists == [[1, 1], [], [4]]
    np.testing.assert_array_equal(tops, [[1, 2], [5, 2], [1, -1]])
    r = alignment_metrics(lists, tops, 2)
    assert r["valid"] == 2 and r["empty"] == 1            # a text of stop words only is skipped
    assert r["hit@2"] == pytest.approx(0.5) and r["global_alignment"] == pytest.approx(0.5)


@pytest.fixture(scope="module")
def tiny(tiny_folder):
    return keytok_jax.load_model(str(tiny_folder))


TEXTS = ["YMCA in South Australia", "A man is playing a flute.", "The cat sat on the mat, the cat did.",
         "Aspirin lowers the risk of heart attacks.", "Vitamin D deficiency is common in winter.",
         "economists are not against companies using luxury to promote products", "the , . and of"]


def test_content_mask_on_a_real_tokenizer(tiny):
    mask = content_mask(tiny.tokenizer, int(tiny.lm_head.shape[0]))
    tok = tiny.tokenizer
    for word, keep in ((" the", False), (",", False), (".", False), (" and", False), ("\n", False),
                       (" Australia", True), (" cat", True), ("7", True)):
        ids = tok.encode(word, add_special_tokens=False)
        assert len(ids) == 1 and mask[ids[0]] == keep, word


def test_variants_score_as_the_official_path(tiny):
    """Backbone = the model's vectors; the embedder = them moved exactly along v1: then the v1 shift
    and the mean difference score as the embedder, the reverse shift as the backbone, and the
    shifted backbone as ``evaluate_alignment`` (the official metric path) scores it."""
    emb = keytok_jax.Embedder(tiny, keytok_jax.EmbedSettings(pooling="weighted_mean", prompt="none", max_length=64))
    b = np.asarray(emb.encode(TEXTS), np.float64)
    V = _eig(b, False)
    e = b + 3.0 * V[:, 0]
    variants, facts = control_variants(b, e, seeds=1, scales=(2.0,))
    assert facts["lambda"] == pytest.approx(3.0) and facts["first_share"] == pytest.approx(1.0)
    mask = content_mask(tiny.tokenizer, int(tiny.lm_head.shape[0]))
    s = score_variants(variants, {"backbone": b, "embedder": e}, TEXTS, tiny, k=5, mask=mask)
    for view in ("official", "content"):
        for metric in ("hit@5", "local_alignment", "global_alignment"):
            assert s["v1 shift"][view][metric] == pytest.approx(s["embedder"][view][metric], abs=1e-9)
            assert s["mean difference"][view][metric] == pytest.approx(s["embedder"][view][metric], abs=1e-9)
            assert s["embedder − λ·v1"][view][metric] == pytest.approx(s["backbone"][view][metric], abs=1e-9)
    assert s["backbone"]["content"]["empty"] == 1                    # "the , . and of"
    ref = evaluate_alignment([Batch(list(range(len(TEXTS))), TEXTS, b.astype(np.float32))], tiny, k=5,
                             shift_vec=np.float32(6.0) * V[:, 0].astype(np.float32))
    for metric in ("hit@5", "local_alignment", "global_alignment"):
        assert s["v1 shift ×2"]["official"][metric] == pytest.approx(ref["after"][metric], abs=1e-9)
        assert s["backbone"]["official"][metric] == pytest.approx(ref["before"][metric], abs=1e-9)
    lists = text_token_lists(tiny.tokenizer, TEXTS)
    assert s["backbone"]["official"]["valid"] == sum(1 for x in lists if x)


def test_cli_controls_on_stores(tiny_folder, tmp_path):
    from keytok_jax.embed import main as embed_main

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS * 2) + "\n")
    stores = {}
    for role, pooling in (("backbone", "weighted_mean"), ("embedder", "last")):
        stores[role] = tmp_path / role
        assert embed_main(["--input", str(texts), "--output", str(stores[role]), "--model", str(tiny_folder),
                           "--pooling", pooling, "--prompt", "none", "--max-length", "64", "--dense",
                           "--correction", "none", "--no-progress"]) == 0
    assert sp.main(["controls", "--backbone-store", str(stores["backbone"]), "--embedder-store",
                    str(stores["embedder"]), "--output", str(tmp_path / "c"), "--k", "5", "--seeds", "2",
                    "--batch-rows", "5"]) == 0
    rep = json.loads((tmp_path / "c" / "controls.json").read_text())
    assert sp.main(["variation", "--backbone-store", str(stores["backbone"]), "--embedder-store",
                    str(stores["embedder"]), "--output", str(tmp_path / "v"), "--no-plots",
                    "--shift-out", str(tmp_path / "v" / "shift.json")]) == 0
    var = json.loads((tmp_path / "v" / "variation.json").read_text())
    assert rep["rows"] == 2 * len(TEXTS) and rep["lambda"] == pytest.approx(var["lambda"], rel=1e-4)
    assert sp.main(["align", "--store", str(stores["backbone"]), "--shift", str(tmp_path / "v" / "shift.json"),
                    "--output", str(tmp_path / "a"), "--k", "5", "--no-plots"]) == 0
    al = json.loads((tmp_path / "a" / "align.json").read_text())
    for metric in ("hit@5", "local_alignment", "global_alignment"):
        assert rep["variants"]["v1 shift"]["official"][metric] == pytest.approx(al["after"][metric], abs=1e-6)
        assert rep["variants"]["backbone"]["official"][metric] == pytest.approx(al["before"][metric], abs=1e-9)
    rows = (tmp_path / "c" / "controls.csv").read_text().splitlines()
    assert len(rows) == 1 + len(rep["variants"]) and rows[0].startswith("variant,what,step_norm,official hit@5")
