"""Throughput of keytok's corpus step on an accelerator (issue 21), for models of real shapes.

Random weights (throughput does not depend on them) of SmolLM2-135M, Qwen3-0.6B, Qwen3-1.7B and
Llama-3.2-1B (their published config.json shapes, below) in ``--dtype`` (default ``auto``:
bfloat16 on GPU/TPU, float32 on CPU), the attention kernel of ``--attention-impl`` (default
``fused`` on GPU: cuDNN through ``jax.nn.dot_product_attention``), documents of random token ids
with lengths drawn from a fixed seeded distribution shaped like SciFact's under SmolLM2's
tokenizer (lognormal, median 300 tokens, cut at ``--max-length``). Per model:

- the device's measured matmul peak in that dtype (jitted square products, best of 3) beside
  the nominal one given by ``--peak-tflops`` (H200 bf16 dense: 989 TFLOP/s, NVIDIA's datasheet);
- every batch shape compiled before the clock starts (``Embedder.precompile``: compile seconds
  reported apart), then one timed pass of ``Embedder.embed_tokenized`` (the job's path: length
  buckets, in-flight batches, the LM-head top-k) — real tokens/s, padding, and MFU = useful
  FLOPs (``keytok_jax.flops``: matmuls, causal attention pairs, the LM head once per document,
  over real tokens) / seconds / peak.

    python benchmarks/accelerator.py --output out/accelerator.json              # on a GPU
    python benchmarks/accelerator.py --models tiny --docs 32 --max-length 128   # CPU smoke run
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from keytok_jax import flops as F  # noqa: E402
from keytok_jax.loading import _hf_config, resolve_dtype  # noqa: E402
from keytok_jax.model import KeytokModel  # noqa: E402
from keytok_jax.models import config_from_hf  # noqa: E402
from keytok_jax.models.layers import resolve_attention_impl  # noqa: E402
from keytok_jax.pipeline import Embedder, RunStats  # noqa: E402
from keytok_jax.records import EmbedOutput, TokenizedDoc  # noqa: E402
from keytok_jax.settings import EmbedSettings  # noqa: E402
from throughput import agreement  # noqa: E402  (the side-by-side benchmark's output check)

_LLAMA = {"model_type": "llama", "hidden_act": "silu", "tie_word_embeddings": True, "rms_norm_eps": 1e-5,
          "attention_bias": False, "mlp_bias": False, "bos_token_id": 1, "eos_token_id": 2}
_QWEN3 = {"model_type": "qwen3", "hidden_act": "silu", "tie_word_embeddings": True, "rms_norm_eps": 1e-6,
          "attention_bias": False, "rope_theta": 1_000_000.0, "vocab_size": 151936,
          "max_position_embeddings": 40960, "head_dim": 128, "num_attention_heads": 16, "num_key_value_heads": 8,
          "num_hidden_layers": 28, "use_sliding_window": False, "bos_token_id": 151643, "eos_token_id": 151645}
# The shapes of each model's published config.json (Hugging Face hub).
CONFIGS = {
    "tiny": {**_LLAMA, "vocab_size": 4096, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048},
    "smollm2-135m": {**_LLAMA, "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
                     "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                     "rope_theta": 100000.0, "max_position_embeddings": 8192},
    "qwen3-0.6b": {**_QWEN3, "hidden_size": 1024, "intermediate_size": 3072},
    "qwen3-1.7b": {**_QWEN3, "hidden_size": 2048, "intermediate_size": 6144},
    "llama-3.2-1b": {**_LLAMA, "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
                     "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
                     "head_dim": 64, "rope_theta": 500000.0, "max_position_embeddings": 131072,
                     "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                     "bos_token_id": 128000, "eos_token_id": 128001},
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def word_tokenizer(vocab_size: int):
    """A stand-in tokenizer (the step never sees text here: documents are token ids)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def random_model(name: str, dtype: str, seed: int = 0) -> KeytokModel:
    """``name``'s shapes with normal(0, 0.02) weights (norm scales 1) made on the device."""
    cfg = config_from_hf(_hf_config(CONFIGS[name]))
    shell = KeytokModel(config=cfg, params=None, dtype=dtype)
    ids = np.zeros((1, 4), np.int32)
    import flax.linen as nn

    abstract = nn.unbox(jax.eval_shape(shell.module().init, jax.random.PRNGKey(0), ids, np.ones_like(ids))["params"])
    leaves, tree = jax.tree.flatten_with_path(abstract)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))

    def init(path, leaf, key):
        if "scale" in jax.tree_util.keystr(path) or leaf.ndim == 1 and "bias" not in jax.tree_util.keystr(path):
            return jnp.ones(leaf.shape, leaf.dtype)
        return (0.02 * jax.random.normal(key, leaf.shape, jnp.float32)).astype(leaf.dtype)

    params = jax.tree.unflatten(tree, [init(p, leaf, k) for (p, leaf), k in zip(leaves, keys)])
    return KeytokModel(config=cfg, params=params, tokenizer=word_tokenizer(cfg.vocab_size), dtype=dtype,
                       source=f"random {name}")


def doc_lengths(n: int, max_length: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.lognormal(np.log(300), 0.45, n)), 16, max_length).astype(np.int32)


def random_docs(lengths: np.ndarray, vocab: int, seed: int = 0) -> list[TokenizedDoc]:
    rng = np.random.default_rng(seed)
    return [TokenizedDoc(rng.integers(3, vocab, int(t)).astype(np.int32), 0, 0) for t in lengths]


def matmul_peak(dtype: str, size: int, reps: int = 3, chain: int = 10) -> float:
    """Best FLOP/s of ``chain`` jitted ``[size, size] @ [size, size]`` products in ``dtype``,
    dispatched back to back and timed to the last one's end (one product alone is ~1 ms on a
    GPU, where the dispatch would count)."""
    a = jax.random.normal(jax.random.PRNGKey(1), (size, size), jnp.float32).astype(dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        outs = [f(a) for _ in range(chain)]
        outs[-1].block_until_ready()
        best = min(best, (time.perf_counter() - t0) / chain)
    return 2 * size ** 3 / best


def bench_settings(max_length: int) -> EmbedSettings:
    """Last-token pooling of the raw ids (no prompt, no correction), top-64 of the whole vocabulary."""
    return EmbedSettings(pooling="last", prompt="none", max_length=max_length, top_k=64,
                         correction="none", doc_tokens="aligned")


def timed_pass(model: KeytokModel, impl: str, docs, lengths, args) -> tuple[dict, EmbedOutput]:
    """Precompile every shape of the plan, run the programs once untimed, then time one pass."""
    emb = Embedder(model, bench_settings(args.max_length), batch_tokens=args.batch_tokens, vocab_chunk=args.vocab_chunk,
                   attention_impl=impl)
    pre = emb.precompile(lengths)
    emb.embed_tokenized(docs[: min(len(docs), 8)])          # first runs of the programs, untimed
    emb.stats = RunStats()
    t0 = time.perf_counter()
    out = emb.embed_tokenized(docs)
    seconds = time.perf_counter() - t0
    st = emb.stats
    return {"attention_impl": impl, "real_tokens": st.real_tokens, "padding_fraction": st.padding_fraction,
            **pre, "run_compiles": st.compiles, "seconds": seconds}, out


def measure(name: str, args, peaks: dict) -> list[dict]:
    """One row per attention implementation run for ``name`` (the default one, and with
    ``--compare-impls`` the other one too, with the two outputs' agreement)."""
    dtype = resolve_dtype(args.dtype)
    impls = [resolve_attention_impl(args.attention_impl or "auto", dtype, jax.devices()[0])]
    if args.compare_impls:
        impls.append("xla" if impls[0] == "fused" else "fused")
    model = random_model(name, dtype)
    lengths = doc_lengths(args.docs, args.max_length)
    docs = random_docs(lengths, model.config.vocab_size)
    useful = F.corpus_flops(model.config, lengths, "sparse").model
    if dtype not in peaks:
        peaks[dtype] = matmul_peak(dtype, args.peak_size)
    peak = peaks[dtype]
    rows, outs = [], []
    for impl in impls:
        try:
            timing, out = timed_pass(model, impl, docs, lengths, args)
        except Exception as e:                  # a kernel the device refuses: recorded, not fatal
            log(f"{name} {impl}: {type(e).__name__}: {e}")
            rows.append({"model": name, "dtype": dtype, "attention_impl": impl,
                         "error": f"{type(e).__name__}: {str(e)[:2000]}"})
            if len(impls) == 1:                 # still measure the model, with the other kernel
                impls.append("xla" if impl == "fused" else "fused")
            continue
        seconds = timing["seconds"]
        row = {"model": name, "dtype": dtype, "device": str(jax.devices()[0].device_kind),
               "jax": jax.__version__, "params": int(sum(np.prod(a.shape) for a in jax.tree.leaves(model.params))),
               "docs": len(docs), "mean_length": float(lengths.mean()), **timing,
               "tokens_per_s": timing["real_tokens"] / seconds, "docs_per_s": len(docs) / seconds,
               "useful_tflops_per_s": useful / seconds / 1e12, "measured_peak_tflops": peak / 1e12,
               "mfu_measured_peak": useful / seconds / peak}
        if args.peak_tflops:
            row["mfu_nominal_peak"] = useful / seconds / (args.peak_tflops * 1e12)
        if outs:                                # the same documents through the other kernel
            valid = outs[0].lengths > 0
            row["agreement_with_" + rows[0]["attention_impl"]] = agreement(
                outs[0].dense, outs[0].token_ids, out.dense, out.token_ids, valid)
        rows.append(row)
        outs.append(out)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| model | params | dtype | attention | tokens/s | docs/s | padding | precompile s (shapes) | "
           "TFLOP/s | MFU (measured peak) | MFU (nominal) | agreement |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r or "skipped" in r:
            out.append(f"| {r['model']} | | {r.get('dtype', '')} | {r.get('attention_impl', '')} | "
                       f"{r.get('error') or r['skipped']} |||||||")
            continue
        nominal = f"{r['mfu_nominal_peak']:.1%}" if "mfu_nominal_peak" in r else "—"
        ag = next((f"vs {k[len('agreement_with_'):]}: cosine min {v['cosine_min']:.5f}, top-k overlap "
                   f"{v['topk_overlap_mean']:.3f}" for k, v in r.items() if k.startswith("agreement_with_")), "")
        out.append(f"| {r['model']} | {r['params'] / 1e6:.0f}M | {r['dtype']} | {r['attention_impl']} | "
                   f"{r['tokens_per_s']:,.0f} | {r['docs_per_s']:,.1f} | {r['padding_fraction']:.1%} | "
                   f"{r['precompile_seconds']:.1f} ({r['precompiled']}) | {r['useful_tflops_per_s']:.1f} | "
                   f"{r['mfu_measured_peak']:.1%} of {r['measured_peak_tflops']:.0f} | {nominal} | {ag} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=list(CONFIGS),
                   default=["smollm2-135m", "qwen3-0.6b", "llama-3.2-1b", "qwen3-1.7b"],
                   help="model shapes, run in this order (default: %(default)s)")
    p.add_argument("--docs", type=int, default=4096, help="documents per model (default: %(default)s)")
    p.add_argument("--max-length", type=int, default=512, help="tokens per document (default: %(default)s)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                   help="parameter dtype (default: auto, bfloat16 on GPU/TPU)")
    p.add_argument("--attention-impl", choices=("xla", "fused"),
                   help="attention kernel (default: the jobs' auto, fused on an NVIDIA GPU in half precision, else xla)")
    p.add_argument("--compare-impls", action="store_true",
                   help="also run the other attention kernel on the same documents: its speed and the "
                        "agreement of the two outputs (dense cosine, top-k overlap)")
    p.add_argument("--batch-tokens", type=int, default=65536, help="padded tokens per batch (default: %(default)s)")
    p.add_argument("--vocab-chunk", type=int, default=16384, help="LM-head vocabulary chunk (default: %(default)s)")
    p.add_argument("--peak-size", type=int, default=8192, help="matmul size of the measured peak (default: %(default)s)")
    p.add_argument("--peak-tflops", type=float, help="the device's nominal dense peak in this dtype, for a "
                                                     "second MFU (H200 bf16: 989)")
    p.add_argument("--budget-seconds", type=float,
                   help="start no model after this many seconds (the rest are recorded as skipped)")
    p.add_argument("--output", help="write the rows as JSON here after every model (and the table beside it as .md)")
    args = p.parse_args(argv)
    log(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    rows, peaks, t0 = [], {}, time.perf_counter()
    for name in args.models:
        if args.budget_seconds and time.perf_counter() - t0 > args.budget_seconds:
            rows.append({"model": name, "skipped": f"over --budget-seconds {args.budget_seconds:g}"})
            continue
        log(f"{name} ... ({time.perf_counter() - t0:.0f} s in)")
        rows += measure(name, args, peaks)
        log(json.dumps(rows[-1]))
        if args.output:
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            Path(args.output).write_text(json.dumps(rows, indent=1))
            Path(args.output).with_suffix(".md").write_text(table(rows) + "\n")
    print(table(rows))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
