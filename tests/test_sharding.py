"""Sharding over a device mesh: equality with the single-device run, and the rules' specs.

The mesh runs need 8 devices; this process has one CPU device (conftest), so
``tests/sharding_check.py`` runs once in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` and reports JSON that the tests below check.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SMOLLM2_DIR, shared_or_skip

import jax
from jax.sharding import AbstractMesh, PartitionSpec

from keytok_jax import sharding
from keytok_jax.loading.convert import abstract_variables
from keytok_jax.models import DecoderConfig, RopeConfig

HERE = Path(__file__).resolve().parent
MESHES = ["data=8,model=1", "data=4,model=2", "data=2,model=4", "data=1,model=8"]

# Hand-written expectation (independent of sharding.RULES): parameter → (dimension split over
# `model`, how many whole units it has: heads, KV heads, MLP units or vocabulary rows). Every other
# parameter (norms, o/fc_out biases: the residual width) is replicated.
EXPECTED = {
    "llama": {   # 4 heads, 2 KV heads, mlp 64, vocab 49152, untied
        "embed/embedding": (0, 49152), "lm_head/embedding": (0, 49152),
        "layers/attn/q/kernel": (2, 4), "layers/attn/o/kernel": (1, 4),
        "layers/attn/k/kernel": (2, 2), "layers/attn/v/kernel": (2, 2),
        "layers/mlp/gate/kernel": (2, 64), "layers/mlp/up/kernel": (2, 64),
        "layers/mlp/down/kernel": (1, 64),
        "layers/attn_norm/scale": None, "layers/mlp_norm/scale": None, "final_norm/scale": None,
    },
    "gpt_neox": {   # 8 heads (MHA), mlp 128, vocab 49155 (no model axis divides it), tied
        "embed/embedding": (0, 49155),
        **{f"layers/attn/{p}/kernel": (2, 8) for p in "qkv"},
        **{f"layers/attn/{p}/bias": (1, 8) for p in "qkv"},
        "layers/attn/o/kernel": (1, 8), "layers/attn/o/bias": None,
        "layers/mlp/fc_in/kernel": (2, 128), "layers/mlp/fc_in/bias": (1, 128),
        "layers/mlp/fc_out/kernel": (1, 128), "layers/mlp/fc_out/bias": None,
        **{f"layers/{n}/{p}": None for n in ("attn_norm", "mlp_norm") for p in ("scale", "bias")},
        "final_norm/scale": None, "final_norm/bias": None,
    },
}


# Qwen3 (per-head q/k norms, head_dim 16 != hidden 32 / 4 heads): 4 heads, 2 KV heads, mlp 48,
# vocab 96, untied, q/k/v/o biases. Checked on abstract meshes (the specs need only the mesh shape).
QWEN3 = {
    "embed/embedding": (0, 96), "lm_head/embedding": (0, 96),
    "layers/attn/q/kernel": (2, 4), "layers/attn/q/bias": (1, 4), "layers/attn/o/kernel": (1, 4),
    **{f"layers/attn/{p}/kernel": (2, 2) for p in "kv"}, **{f"layers/attn/{p}/bias": (1, 2) for p in "kv"},
    "layers/attn/o/bias": None, "layers/attn/q_norm/scale": None, "layers/attn/k_norm/scale": None,
    "layers/mlp/gate/kernel": (2, 48), "layers/mlp/up/kernel": (2, 48), "layers/mlp/down/kernel": (1, 48),
    "layers/attn_norm/scale": None, "layers/mlp_norm/scale": None, "final_norm/scale": None,
}


@pytest.mark.parametrize("mesh", MESHES)
def test_qwen3_parameter_specs_follow_the_rules(mesh):
    cfg = DecoderConfig(family="qwen3", model_type="qwen3", vocab_size=96, hidden_size=32, num_layers=2,
                        num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=48, norm_eps=1e-6,
                        activation="silu", tie_word_embeddings=False, qkv_bias=True, out_bias=True,
                        rope=RopeConfig(theta=1e6, rotary_dim=16))
    data, m = (int(part.split("=")[1]) for part in mesh.split(","))
    notes = []
    specs = sharding.param_specs(abstract_variables(cfg, jax.numpy.float32),
                                 AbstractMesh((data, m), ("data", "model")), cfg, notes)
    flat = jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))[0]
    specs = {"/".join(k.key for k in path): list(spec) for path, spec in flat}
    assert set(specs) == set(QWEN3)
    for path, rule in QWEN3.items():
        want = [None] * 3
        if rule is not None and rule[1] % m == 0:
            want[rule[0]] = "model"
        got = specs[path] + [None] * (3 - len(specs[path]))
        assert got == want, f"{path}: {specs[path]} != {want}"
    noted = {p.strip() for note in notes for p in note.split("replicating ")[1].split(",")}
    assert noted == {p for p, rule in QWEN3.items() if rule is not None and rule[1] % m}


@pytest.fixture(scope="module")
def mesh_results(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    shared_or_skip(SMOLLM2_DIR)
    work = tmp_path_factory.mktemp("sharding")
    out = work / "results.json"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(HERE / "sharding_check.py"), str(SMOLLM2_DIR), str(work), str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"sharding_check.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(out.read_text())


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.slow
def test_mesh_matches_single_device(mesh_results, family, mesh):
    r = mesh_results[family][mesh]
    print(f"{family} {mesh}: max relative L2 error {r['max_rel_err']:.3g}, ids equal {r['ids_equal']}, "
          f"max weight diff {r['max_weight_diff']:.3g}, {r['seconds']} s")
    assert r["from_cache"], "the second load should restore the orbax cache onto the mesh"
    assert r["max_rel_err"] <= 1e-5, r["max_rel_err"]
    assert r["ids_equal"]
    assert r["max_weight_diff"] <= 1e-4
    assert r["lengths_equal"]
    data = int(mesh.split(",")[0].split("=")[1])
    assert all(rows % data == 0 for rows, _ in r["shapes"]), r["shapes"]


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
@pytest.mark.parametrize("mesh", MESHES)
def test_parameter_specs_follow_the_rules(mesh_results, family, mesh):
    r = mesh_results[family][mesh]
    m = int(mesh.split(",")[1].split("=")[1])
    assert r["cache_equals_convert"]
    for key in ("specs_cache", "specs_convert"):
        specs = r[key]
        assert set(specs) == set(EXPECTED[family]), key
        for path, rule in EXPECTED[family].items():
            want = [None] * len(specs[path])
            if rule is not None and rule[1] % m == 0:
                want[rule[0]] = "model"
            assert specs[path] == want, f"{key} {path}: {specs[path]} != {want}"
    replicated_for_divisibility = {p for p, rule in EXPECTED[family].items()
                                   if rule is not None and rule[1] % m}
    noted = {p.strip() for note in r["notes"] for p in note.split("replicating ")[1].split(",")}
    assert noted == replicated_for_divisibility


@pytest.mark.parametrize("mesh", MESHES)
def test_loading_reads_device_slices_from_the_file(mesh_results, mesh):
    """Loading onto a mesh reads each device's slice of a safetensors tensor straight from the file
    (placed values equal the cache path's, asserted above). Tiny Llama: every parameter's hook is
    none or a transpose, so nothing is read whole; a tensor split over ``model`` is read in
    1/M pieces; devices that hold the same slice share one read (each tensor read exactly once)."""
    reads = mesh_results["llama"][mesh]["file_reads"]
    m = int(mesh.split(",")[1].split("=")[1])
    assert reads and not [n for n in reads if n.startswith("get:")]
    for name, fractions in reads.items():
        assert sum(fractions) == pytest.approx(1.0), (name, fractions)
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.0.mlp.up_proj.weight"):
        assert max(reads[name]) == pytest.approx(1 / m), (name, reads[name])
    # GPT-NeoX's fused query_key_value is split by a hook: read whole, then sliced (the fallback).
    neox = mesh_results["gpt_neox"][mesh]["file_reads"]
    assert "get:gpt_neox.layers.0.attention.query_key_value.weight" in neox
    assert max(neox["gpt_neox.embed_in.weight"]) == pytest.approx(1.0)   # 49155 rows: not split


@pytest.mark.parametrize("devices", ["2", "8"])
def test_dense_index_over_devices_matches_one_device(mesh_results, devices):
    r = mesh_results["dense_index"][devices]
    assert r["ids_equal"] and r["max_score_diff"] <= 1e-5, r
    assert r["tie_order"] == [3, 17]


def test_parse_mesh_rules():
    assert sharding.parse_mesh_spec("data=4,model=2") == {"data": 4, "model": 2}
    assert sharding.parse_mesh_spec("model=2") == {"data": 1, "model": 2}
    assert sharding.parse_mesh_spec({"data": 2}) == {"data": 2, "model": 1}
    for bad in ("data=4,foo=2", "data=0", "data=-1,model=-1", "data", "data=2,data=2"):
        with pytest.raises(ValueError):
            sharding.parse_mesh_spec(bad)
    one = sharding.parse_mesh("data=-1")          # this process has one CPU device
    assert dict(one.shape) == {"data": 1, "model": 1}
    with pytest.raises(ValueError, match="needs 2 devices"):
        sharding.parse_mesh("data=2")


def test_unknown_logical_axis_is_refused():
    with pytest.raises(ValueError, match="no rule"):
        sharding.logical_spec(("embed", "experts"))


def test_mesh_option_from_config_and_flag(tmp_path):
    from keytok_jax.cli.embed import build_parser, resolve_options

    cfg = tmp_path / "c.yaml"
    cfg.write_text("mesh: data=4,model=2\n")
    base = ["--input", "x.jsonl", "--output", "s"]
    assert resolve_options(base)["mesh"] is None
    assert resolve_options(base + ["--config", str(cfg)])["mesh"] == "data=4,model=2"
    assert resolve_options(base + ["--config", str(cfg), "--mesh", "model=8"])["mesh"] == "model=8"
    assert "data=D,model=M" in build_parser().format_help()
