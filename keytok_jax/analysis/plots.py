"""PNG plots of the analyses (matplotlib, Agg backend). matplotlib is optional: it is imported
on the first plot (:func:`pyplot`, which raises ImportError without it).

- :func:`plot_variation`: mean coefficient difference (embedder − backbone) per principal component;
- :func:`plot_explained`: each component's share of the (un)centered second moment;
- :func:`plot_contribution`: a text's top tokens with the logits of the whole embedding, of its
  first-component part and of the residual (three bar rows, as the paper's figure);
- :func:`plot_before_after`: the top-k tokens and logits before and after the first-component shift.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["plot_before_after", "plot_contribution", "plot_explained", "plot_variation", "pyplot",
           "token_label"]


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def token_label(token: str) -> str:
    """A readable tick label: tokens with leading/trailing whitespace (or none) shown as repr."""
    return token if token and token.strip() == token else repr(token)


def _save(fig, path) -> Path:
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing glyphs for CJK/emoji tokens
        fig.savefig(path, dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    return path


def plot_variation(diff: Sequence[float], path, title: str = "variation per component", max_components: int | None = None):
    d = np.asarray(diff, np.float64)
    if max_components:
        d = d[:max_components]
    fig, ax = pyplot().subplots(figsize=(7, 4))
    ax.plot(np.arange(1, len(d) + 1), d, lw=1)
    ax.scatter([1], [d[0]], color="C3", zorder=3, label=f"v1: {d[0]:.3g}")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("principal component i (backbone)")
    ax.set_ylabel("mean coefficient difference (embedder − backbone)")
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def plot_explained(explained: Sequence[float], path, title: str = "explained share", n: int = 50):
    e = np.asarray(explained, np.float64)[:n]
    fig, ax = pyplot().subplots(figsize=(7, 4))
    ax.bar(np.arange(1, len(e) + 1), e, color="C0")
    ax.set_yscale("log")
    ax.set_xlabel("component")
    ax.set_ylabel("share of the trace")
    ax.set_title(title)
    return _save(fig, path)


def _bars(ax, labels, values, ylabel):
    values = np.asarray(values, np.float64)
    colors = ["C3" if v < 0 else "C0" for v in values]
    ax.bar(range(len(values)), values, color=colors)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(range(len(values)))
    ax.set_xticklabels([token_label(t) for t in labels], rotation=45, ha="right")
    ax.set_ylabel(ylabel)


def plot_contribution(tokens: Sequence[str], total, first, residual, path, title: str = ""):
    fig, axes = pyplot().subplots(3, 1, figsize=(max(6, 0.7 * len(tokens)), 8), sharex=True)
    for ax, vals, name in zip(axes, (total, first, residual), ("total", "first component", "residual")):
        _bars(ax, tokens, vals, name)
    axes[0].set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_before_after(tokens_before, logits_before, tokens_after, logits_after, path, title: str = ""):
    fig, axes = pyplot().subplots(2, 1, figsize=(max(6, 0.7 * len(tokens_before)), 6))
    _bars(axes[0], tokens_before, logits_before, "logit, no shift")
    _bars(axes[1], tokens_after, logits_after, "logit, shifted")
    axes[0].set_title(title)
    fig.tight_layout()
    return _save(fig, path)
