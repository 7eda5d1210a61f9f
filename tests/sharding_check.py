"""Helper of tests/test_sharding.py, run in a subprocess with 8 fake CPU devices:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharding_check.py SMOLLM2_DIR WORK OUT.json

Builds a tiny Llama (GQA, untied) and a tiny GPT-NeoX (tied embeddings, a vocabulary that no
model axis divides) with transformers, attaches SmolLM2's tokenizer, embeds the same texts on
one device and on meshes (8,1), (4,2), (2,4), (1,8), and writes per model and mesh: the max
relative L2 error of the dense vectors, whether the top-k ids are identical, the max weight
difference, each parameter's PartitionSpec (from the orbax cache path and from the convert path),
the fallback notes and what the convert path read from the safetensors file (per tensor, the
fraction read by each read call); and the dense search index split over 2 and 8 devices against one
device. The main pytest process has one CPU device, hence the subprocess.
"""
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

MESHES = [(8, 1), (4, 2), (2, 4), (1, 8)]
TEXTS = [
    "Aspirin lowers the risk of heart attacks.",
    "A much longer sentence about the mitochondria, which are the powerhouse of the cell, and about "
    "how they produce ATP through oxidative phosphorylation in eukaryotes.",
    "Short.",
    "Vitamin D deficiency is common in northern countries during winter.",
    "",
    "The stock market fell sharply on Monday after the central bank raised rates.",
    "Plants need sunlight.",
    "Neural networks learn representations of text from large corpora of documents.",
    "Cats sleep most of the day.",
]


def build_models(smollm2_dir: Path, work: Path) -> dict:
    import transformers
    from parity import make_hf_model, save

    configs = {
        # GQA: 4 query heads, 2 KV heads -> kv_heads replicated on model=4 and 8, heads on model=8.
        "llama": transformers.LlamaConfig(
            vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False),
        # 8 heads, tied embeddings, vocabulary 49155 = 3 * 5 * 29 * 113: no model axis divides it.
        "gpt_neox": transformers.GPTNeoXConfig(
            vocab_size=49155, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=8, max_position_embeddings=128, rotary_pct=0.5,
            bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True),
    }
    folders = {}
    for name, cfg in configs.items():
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        save(make_hf_model(cfg, seed=3), folder)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(smollm2_dir / f, folder / f)
        folders[name] = folder
    return folders


SETTINGS = {
    "llama": dict(pooling="mean", top_k=16, max_length=64, weighting="relu"),
    "gpt_neox": dict(pooling="last", top_k=16, max_length=64, weighting="logit"),
}


def specs_of(params) -> dict:
    from flax.traverse_util import flatten_dict

    out = {}
    for path, a in flatten_dict(params).items():
        spec = list(a.sharding.spec) + [None] * (a.ndim - len(a.sharding.spec))
        out["/".join(path)] = [s if s is None or isinstance(s, str) else list(s) for s in spec]
    return out


# Fraction of each safetensors tensor read per read call while loading onto a mesh: slices read
# straight from the file (get_slice) and whole-tensor reads (get, recorded as 1.0 under "get:NAME").
reads: dict = {}


def count_reads() -> None:
    from keytok_jax.loading import sources

    cls = sources.SafetensorsSource
    get, get_slice = cls.get, cls.get_slice

    def counted_slice(self, name, index):
        value = get_slice(self, name, index)
        reads.setdefault(name, []).append(value.size / int(np.prod(self.shape(name))))
        return value

    def counted_get(self, name):
        reads.setdefault(f"get:{name}", []).append(1.0)
        return get(self, name)

    cls.get_slice, cls.get = counted_slice, counted_get


def main(smollm2_dir: str, work: str, out_path: str) -> None:
    count_reads()
    import keytok_jax
    from keytok_jax import sharding
    from keytok_jax.pipeline import EmbedSettings, Embedder

    assert jax.device_count() == 8, f"expected 8 fake CPU devices, got {jax.devices()}"
    work = Path(work)
    os.environ["KEYTOK_JAX_CACHE"] = str(work / "cache")
    folders = build_models(Path(smollm2_dir), work)
    results = {}
    for name, folder in folders.items():
        settings = EmbedSettings(**SETTINGS[name])
        single = keytok_jax.load_model(str(folder))          # writes the orbax cache
        ref = Embedder(single, settings, batch_tokens=512).encode(TEXTS, output_value=None)
        per_mesh = {}
        for d, m in MESHES:
            t0 = time.perf_counter()
            notes: list = []
            spec = f"data={d},model={m}"
            mesh = sharding.parse_mesh(spec)
            model = keytok_jax.load_model(str(folder), mesh=mesh)   # from the cache, restored sharded
            reads.clear()
            converted = keytok_jax.load_model(str(folder), mesh=mesh, cache=False)
            file_reads = {n: [round(f, 6) for f in v] for n, v in reads.items()}
            from keytok_jax.loading.convert import abstract_variables
            import jax.numpy as jnp

            sharding.param_specs(abstract_variables(model.config, jnp.float32), mesh, model.config, notes)
            same_values = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
                              zip(jax.tree.leaves(model.params), jax.tree.leaves(converted.params)))
            emb = Embedder(model, settings, batch_tokens=512)
            got = emb.encode(TEXTS, output_value=None)
            rel = (np.linalg.norm(got.dense - ref.dense, axis=-1)
                   / np.maximum(np.linalg.norm(ref.dense, axis=-1), 1e-12))
            per_mesh[spec] = {
                "from_cache": model.load_info["from_cache"],
                "max_rel_err": float(rel.max()),
                "ids_equal": bool(np.array_equal(got.token_ids, ref.token_ids)),
                "max_weight_diff": float(np.abs(got.token_weights - ref.token_weights).max()),
                "lengths_equal": bool(np.array_equal(got.lengths, ref.lengths)
                                      and np.array_equal(got.flags, ref.flags)),
                "shapes": sorted([list(s) for s in emb.stats.shapes]),
                "specs_cache": specs_of(model.params),
                "specs_convert": specs_of(converted.params),
                "cache_equals_convert": same_values,
                "file_reads": file_reads,
                "notes": notes,
                "seconds": round(time.perf_counter() - t0, 2),
            }
        results[name] = per_mesh
    results["dense_index"] = dense_index_check()
    Path(out_path).write_text(json.dumps(results, indent=1))


def dense_index_check() -> dict:
    """DenseIndex split over 8 devices (1,003 documents: not a multiple of 8, so padded) against
    the single-device index: ids and cosines per device count."""
    from keytok_jax.search import DenseIndex

    rng = np.random.default_rng(0)
    docs = rng.normal(size=(1003, 16)).astype(np.float32)
    docs[17] = docs[3]                       # an exact tie: the lower row must come first
    queries = np.concatenate([rng.normal(size=(5, 16)), docs[3:4]]).astype(np.float32)
    ids = [str(i) for i in range(len(docs))]
    ref = DenseIndex(docs, ids, chunk=128).search(queries, k=20)
    out = {}
    for n in (2, 8):
        got = DenseIndex(docs, ids, mesh=n, chunk=128).search(queries, k=20)
        out[str(n)] = {"ids_equal": all(np.array_equal(a[0], b[0]) for a, b in zip(ref, got)),
                       "max_score_diff": float(max(np.abs(a[1] - b[1]).max() for a, b in zip(ref, got))),
                       "tie_order": [int(x) for x in got[-1][0][:2]]}
    return out


if __name__ == "__main__":
    main(*sys.argv[1:4])
