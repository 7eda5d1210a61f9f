"""What the analyses write: JSON reports, CSV tables with decoded tokens, and the tokens a
principal direction points to through the LM head."""
from __future__ import annotations

import csv
import json
import resource
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

from .components import Components
from .shift import top_tokens

__all__ = ["TokenDecoder", "peak_rss_mb", "json_default", "write_json", "write_csv",
           "direction_tokens", "components_table", "variation_table", "COMPONENT_HEADER",
           "VARIATION_HEADER", "ALIGN_HEADER", "ALIGN_HEADER_AFTER"]

COMPONENT_HEADER = ["component", "eigenvalue", "singular_value", "explained", "cumulative",
                    "mean_coefficient", "top_tokens_plus", "top_tokens_minus"]
VARIATION_HEADER = ["component", "diff", "share", "explained", "backbone_coeff", "embedder_coeff"]
ALIGN_HEADER = ["id", "text", "text_tokens", "hit_before", "local_before", "top_before"]
ALIGN_HEADER_AFTER = ["hit_after", "local_after", "top_after"]


class TokenDecoder:
    """Token id → string (``tokenizer.decode([id])``), cached."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._one = lru_cache(maxsize=None)(lambda i: tokenizer.decode([i]) if i >= 0 else "")

    def __call__(self, i) -> str:
        return self._one(int(i))

    def many(self, ids) -> list[str]:
        return [self(i) for i in ids]


def peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 / 1024 if sys.platform == "darwin" else r / 1024


def json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=json_default) + "\n",
                    encoding="utf-8")


def write_csv(path: Path, header: list, rows) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def direction_tokens(components: Components, lm_head, decoder: TokenDecoder, n: int, k: int = 8):
    """Top tokens of ``±v_i`` through the LM head, for the first ``n`` directions."""
    n = min(n, components.directions.shape[1])
    V = components.directions[:, :n].T.astype(np.float32)
    pos, _ = top_tokens(V, lm_head, k)
    neg, _ = top_tokens(-V, lm_head, k)
    return [(decoder.many(p), decoder.many(q)) for p, q in zip(pos, neg)]


def components_table(comp: Components, model, decoder: TokenDecoder, n: int) -> tuple[dict, list[list]]:
    """The summary of the first ``n`` components with their direction tokens, and their CSV rows
    (:data:`COMPONENT_HEADER`)."""
    dirs = direction_tokens(comp, model.lm_head, decoder, n)
    summary = comp.summary(n)
    rows = []
    cum = np.cumsum(comp.explained)
    for i, (pos, neg) in enumerate(dirs):
        rows.append([i + 1, f"{comp.eigenvalues[i]:.6g}", f"{comp.singular_values[i]:.6g}",
                     f"{comp.explained[i]:.6f}", f"{cum[i]:.6f}",
                     f"{float(comp.mean @ comp.directions[:, i]):.6g}", " | ".join(pos), " | ".join(neg)])
    summary["direction_tokens"] = [{"plus": p, "minus": m} for p, m in dirs]
    return summary, rows


def variation_table(var: dict, dirs: list) -> tuple[list[dict], list[list]]:
    """Per component of a :func:`~keytok_jax.analysis.shift.variation` report: the JSON entries
    (with the direction tokens of the first ``len(dirs)``) and the CSV rows
    (:data:`VARIATION_HEADER`)."""
    entries, rows = [], []
    for i in range(len(var["diff"])):
        entries.append({"component": i + 1, "diff": float(var["diff"][i]),
                        "share": float(var["share"][i]), "explained": float(var["explained"][i]),
                        "backbone_coeff": float(var["backbone_coeff"][i]),
                        "embedder_coeff": float(var["embedder_coeff"][i]),
                        **({"tokens_plus": dirs[i][0], "tokens_minus": dirs[i][1]} if i < len(dirs) else {})})
        rows.append([i + 1, f"{var['diff'][i]:.6g}", f"{var['share'][i]:.6f}", f"{var['explained'][i]:.6f}",
                     f"{var['backbone_coeff'][i]:.6g}", f"{var['embedder_coeff'][i]:.6g}"])
    return entries, rows
