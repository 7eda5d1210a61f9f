"""FLOPs per document and per query, analytic (keytok_jax.flops) and cross-checked against XLA.

For each model and length T the table lists, per document / query of T tokens:

- ``dense doc``: the forward pass (the dense embedding);
- ``sparse doc``: the forward pass plus the LM-head projection of the pooled vector (top-k);
- ``query tokens``: an inference-free query (its token ids are the sparse vector): 0;
- ``query encode``: an encoded query: forward pass plus projection.

Each row shows the ``useful`` count (causal pairs only: what MFU is measured against), the
``implemented`` count (blocked attention as layers.attend computes it, the chunked LM head, plus
XLA-convention elementwise work), and XLA's own count of the compiled real program:

- dense doc: the jitted forward (``module.apply``, as ``KeytokModel.hidden_states`` runs it);
- sparse doc: the embedder's jitted step (``Embedder.executable``: forward, pooling, top-k).

XLA's ``cost_analysis()['flops']`` counts a ``while`` body once, so the raw number covers one of
the scanned layers and one vocabulary chunk. The corrected number adds ``num_layers - 1`` layers
(one layer as compiled inside the loop: raw minus the raw count of the same model with 0 layers)
and ``chunks - 1`` compiled one-chunk projections. The relative difference
``implemented / xla_corrected - 1`` must stay within 5% (exit status 1 otherwise).

    python benchmarks/flops.py --output out/flops.json                    # SmolLM2 + tiny config
    python benchmarks/flops.py --model tiny --lengths 64,128 --rows 2     # seconds
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax
import jax.numpy as jnp

from keytok_jax import flops as F
from keytok_jax.models import DecoderConfig, RopeConfig, build_module

TOLERANCE = 0.05


def tiny_config(**kw) -> DecoderConfig:
    """A tiny Llama-type config (GQA, SwiGLU, rotary): compiles in about a second."""
    base = {"family": "llama", "model_type": "llama", "vocab_size": 1024, "hidden_size": 64,
            "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "head_dim": 16,
            "intermediate_size": 128, "norm_eps": 1e-5, "activation": "silu",
            "rope": RopeConfig(theta=10000.0, rotary_dim=16)}
    base.update(kw)
    return DecoderConfig(**base)


class StubTokenizer:
    """Just enough of a tokenizer for the Embedder's constructor (cost analysis needs no text)."""
    bos_token_id, eos_token_id = 1, 2

    def __call__(self, text, add_special_tokens=True, **kw):
        if isinstance(text, list):
            return {"input_ids": [[3] * max(1, len(t.split())) for t in text]}
        return {"input_ids": ([1] if add_special_tokens else []) + [3] * len(text.split())}


def model_config(name: str) -> tuple[DecoderConfig, object]:
    """(config, tokenizer) of a model without reading its weights; ``tiny`` is :func:`tiny_config`."""
    if name == "tiny":
        return tiny_config(), StubTokenizer()
    from keytok_jax.loading import _gguf_file, _hf_config, load_tokenizer, resolve
    from keytok_jax.loading.gguf_file import hf_config_dict, open_reader
    from keytok_jax.models import config_from_hf

    path = resolve(name)
    gguf = _gguf_file(path)
    hf = _hf_config(hf_config_dict(open_reader(gguf), gguf)) if gguf is not None else _hf_config(path)
    return config_from_hf(hf), load_tokenizer(name)


def xla_flops(compiled) -> float:
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0]
    return float(ca["flops"])


def _abstract(cfg: DecoderConfig):
    from keytok_jax.loading.convert import abstract_params

    return abstract_params(cfg, jnp.float32)


def xla_topk_chunk(cfg: DecoderConfig, rows: int, chunk: int, k: int, weighting: str) -> float:
    """XLA FLOPs of one vocabulary chunk of the top-k: the projection scan's body."""
    from keytok_jax.projection import topk_projection

    c = min(chunk, cfg.vocab_size)
    pooled = jax.ShapeDtypeStruct((rows, cfg.output_dim), jnp.float32)
    head = jax.ShapeDtypeStruct((c, cfg.output_dim), jnp.float32)
    f = jax.jit(lambda p, h: topk_projection(p, h, min(k, c), chunk=c, weighting=weighting))
    return xla_flops(f.lower(pooled, head).compile())


def _raw_forward(cfg: DecoderConfig, rows: int, seq: int, causal: bool, params=None) -> float:
    from keytok_jax.model import _apply_hidden

    module = build_module(cfg, jnp.float32, causal=causal)
    spec = jax.ShapeDtypeStruct((rows, seq), jnp.int32)
    return xla_flops(_apply_hidden.lower(module, params or _abstract(cfg), spec, spec).compile())


def xla_forward(cfg: DecoderConfig, rows: int, seq: int, causal: bool = True) -> dict:
    """XLA FLOPs of the jitted forward on ``[rows, seq]``: ``raw`` (layer loop counted once),
    ``layer`` (raw minus the same model with 0 layers: one layer as compiled inside the loop) and
    ``corrected`` (raw + (num_layers - 1) layers)."""
    raw = _raw_forward(cfg, rows, seq, causal)
    layer = raw - _raw_forward(cfg.replace(num_layers=0, layer_windows=()), rows, seq, causal)
    return {"raw": raw, "layer": layer, "corrected": raw + (cfg.num_layers - 1) * layer}


def make_embedder(cfg: DecoderConfig, tokenizer, *, params=None, vocab_chunk: int = 4096,
                  **settings):
    from keytok_jax import Embedder, EmbedSettings, KeytokModel

    model = KeytokModel(config=cfg, params=params or _abstract(cfg), tokenizer=tokenizer)
    settings = {"pooling": "last", "prompt": "prompteol", "top_k": min(64, cfg.vocab_size), **settings}
    return Embedder(model, EmbedSettings(**settings), vocab_chunk=vocab_chunk)


def xla_step(embedder, rows: int, seq: int, layer: float | None = None) -> dict:
    """XLA FLOPs of the embedder's real jitted step on ``[rows, seq]``: ``raw``, and ``corrected``
    with the layer loop (``layer``: from :func:`xla_forward`) and the vocabulary-chunk loop counted
    trip-count times."""
    cfg, s = embedder.model.config, embedder.settings
    raw = xla_flops(embedder.executable(rows, seq))
    if layer is None:
        layer = xla_forward(cfg, rows, seq, s.attention == "causal")["layer"]
    c = min(embedder.vocab_chunk, cfg.vocab_size)
    chunks = -(-cfg.vocab_size // c)
    chunk = xla_topk_chunk(cfg, rows, c, s.top_k, s.weighting)
    return {"raw": raw, "layer": layer, "chunk": chunk,
            "corrected": raw + (cfg.num_layers - 1) * layer + (chunks - 1) * chunk}


def rows_of(cfg: DecoderConfig, lengths, rows: int, tokenizer=None, vocab_chunk: int = 4096,
            check: bool = True) -> list[dict]:
    """Table rows for one model: per length, the four modes, with the XLA cross-check."""
    out = []
    embedder = make_embedder(cfg, tokenizer or StubTokenizer(), vocab_chunk=vocab_chunk,
                             max_length=max(lengths)) if check else None
    for T in lengths:
        per = {
            "dense doc": F.doc_flops(cfg, T, "dense", count="useful"),
            "sparse doc": F.doc_flops(cfg, T, "sparse", count="useful"),
            "query tokens": F.query_flops(cfg, T, "tokens"),
            "query encode": F.query_flops(cfg, T, "encode", count="useful"),
        }
        impl = {
            "dense doc": F.forward_flops(cfg, T, count="implemented"),
            "sparse doc": F.doc_flops(cfg, T, "sparse", count="implemented", vocab_chunk=vocab_chunk),
            "query tokens": F.Flops(),
            "query encode": F.query_flops(cfg, T, "encode", count="implemented", vocab_chunk=vocab_chunk),
        }
        xla = {}
        if check:
            t0 = time.perf_counter()
            fwd = xla_forward(cfg, rows, T)
            step = xla_step(embedder, rows, T, fwd["layer"])
            xla = {"dense doc": {k: v / rows for k, v in fwd.items()},
                   "sparse doc": {k: v / rows for k, v in step.items()},
                   "query encode": {k: v / rows for k, v in step.items()}}
            print(f"  T={T}: XLA cost analysis in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        for mode, useful in per.items():
            row = {"T": T, "mode": mode, "useful": useful.model, "useful_breakdown": useful.as_dict(),
                   "implemented": impl[mode].total, "implemented_breakdown": impl[mode].as_dict(),
                   "useful_per_token": useful.model / T}
            if mode in xla:
                row["xla_raw"] = xla[mode]["raw"]
                row["xla_corrected"] = xla[mode]["corrected"]
                ref = xla[mode]["corrected"]
                row["rel_diff"] = (impl[mode].total / ref - 1.0) if ref else 0.0
            out.append(row)
    return out


def markdown(results: dict) -> str:
    lines = ["| model | T | mode | useful | per token | implemented | XLA raw | XLA corrected | impl/XLA-1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, rows in results["models"].items():
        for r in rows:
            rel = f"{r['rel_diff'] * 100:+.2f}%" if "rel_diff" in r else "-"
            xla = [F.human(r[k]) if k in r else "-" for k in ("xla_raw", "xla_corrected")]
            lines.append(f"| {name} | {r['T']} | {r['mode']} | {F.human(r['useful'])} | "
                         f"{F.human(r['useful_per_token'])} | {F.human(r['implemented'])} | "
                         f"{xla[0]} | {xla[1]} | {rel} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append",
                   help="model alias / folder / .gguf, or 'tiny' (repeatable; default: smollm2-135m and tiny)")
    p.add_argument("--lengths", default="64,128,256,512", help="document / query lengths in tokens")
    p.add_argument("--rows", type=int, default=2, help="batch rows of the compiled programs (counts are per row)")
    p.add_argument("--vocab-chunk", type=int, default=4096, help="top-k vocabulary chunk (as the embedder)")
    p.add_argument("--no-xla", action="store_true", help="analytic counts only (no compilation)")
    p.add_argument("--output", help="write the results as JSON here")
    args = p.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",")]
    results = {"lengths": lengths, "rows": args.rows, "tolerance": TOLERANCE,
               "notes": ("useful: causal pairs only, LM head 2*dim*vocab once per document; implemented: "
                         "blocked attention as layers.attend computes it, chunked LM head, XLA-convention "
                         "elementwise estimate; xla_corrected: cost_analysis of the compiled program with "
                         "while bodies (layers, vocabulary chunks) counted trip-count times; all per document"),
               "models": {}}
    failed = False
    for name in args.model or ["smollm2-135m", "tiny"]:
        print(f"{name}:", file=sys.stderr)
        cfg, tok = model_config(name)
        rows = rows_of(cfg, lengths, args.rows, tok, args.vocab_chunk, check=not args.no_xla)
        results["models"][name] = rows
        failed |= any(abs(r.get("rel_diff", 0.0)) > TOLERANCE for r in rows)
    results["within_tolerance"] = not failed
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=2))
    print(markdown(results))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
