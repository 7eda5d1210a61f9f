"""The correction applied to pooled vectors before the LM-head top-k, and the statistics it needs.

Every pooled vector of a decoder LM shares one large common direction (punctuation, `` the``,
newline tokens top every text's projection); the paper's finding (b) is that removing it brings
each text's key tokens up. The corpus job fits the statistics on a sample of the corpus
(:class:`Moments` → :class:`CorrectionFit`: the mean pooled vector and the first principal
direction, uncentred and centred), records them in the store, and the device step applies the
named correction (:data:`keytok_jax.projection.CORRECTIONS`) to documents and queries alike, as
the three vectors of :func:`keytok_jax.projection.correct` (:func:`correction_vectors`). The
first-component shift ``e + λ·v`` of ``python -m keytok_jax.spectral`` (:class:`Shift`) is the
same map with a fixed offset. Both name the model they were fitted for by a hash of the LM head
(:func:`model_hash`), so they are never applied to another model.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from ..errors import SettingsError
from ..projection import CORRECTIONS

__all__ = ["SHIFT_FORMAT", "FIT_FORMAT", "Shift", "Moments", "CorrectionFit", "model_hash",
           "correction_vectors", "CORRECTIONS"]

SHIFT_FORMAT = "keytok-shift/1"
FIT_FORMAT = "keytok-correction-fit/1"


def model_hash(model) -> str:
    """Content hash of a model's LM head (the matrix the shift is projected through): sha256 of
    its float32 bytes and shape, first 16 hex digits. A head laid out over several processes'
    devices is gathered first (a collective: every process of the job calls this together)."""
    head = model.lm_head
    if isinstance(head, jax.Array) and not head.is_fully_addressable:
        head = multihost_utils.process_allgather(head, tiled=True)
    head = np.asarray(head, np.float32)
    h = hashlib.sha256(str(head.shape).encode())
    h.update(np.ascontiguousarray(head).tobytes())
    return h.hexdigest()[:16]


def _digest(*arrays, extra: bytes = b"") -> str:
    h = hashlib.sha256(extra)
    for a in arrays:
        h.update(np.ascontiguousarray(a, np.float32).tobytes())
    return h.hexdigest()[:16]


def _check_model(expected: str | None, model, where) -> None:
    if expected and expected != model_hash(model):
        raise SettingsError(f"{where} was computed for another model (LM-head hash {expected}, "
                            f"this model's is {model_hash(model)})")


@dataclass(frozen=True)
class Shift:
    """First-component shift ``e + lam * direction`` applied to pooled vectors before projection."""
    direction: np.ndarray
    lam: float
    model_hash: str | None = None

    @classmethod
    def load(cls, path) -> "Shift":
        data = json.loads(Path(path).read_text())
        if data.get("format") != SHIFT_FORMAT:
            raise SettingsError(f"{path}: not a keytok shift file (format {data.get('format')!r}, "
                                f"expected {SHIFT_FORMAT!r})")
        return cls(np.asarray(data["direction"], np.float32), float(data["lambda"]), data.get("model_hash"))

    def save(self, path) -> None:
        Path(path).write_text(json.dumps({"format": SHIFT_FORMAT, "lambda": self.lam,
                                          "model_hash": self.model_hash,
                                          "direction": [float(x) for x in self.direction]}))

    def fingerprint(self) -> str:
        h = hashlib.sha256(np.asarray(self.direction, np.float32).tobytes())
        h.update(np.float64(self.lam).tobytes())
        return h.hexdigest()[:16]

    def check_model(self, model, where) -> None:
        """Refuse a shift fitted for another model (when the file names one)."""
        _check_model(self.model_hash, model, where)


class Moments:
    """Count, sum and uncentred scatter ``XᵀX`` of pooled vectors, accumulated in float64 on the
    host (a fit sample is a few thousand vectors; ``XᵀX - nμμᵀ`` in float64 keeps the centred
    scatter accurate despite norms ~50 around the common direction)."""

    def __init__(self, dim: int):
        self.n = 0
        self.total = np.zeros(dim, np.float64)
        self.scatter = np.zeros((dim, dim), np.float64)

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64)
        self.n += len(x)
        self.total += x.sum(axis=0)
        self.scatter += x.T @ x


def _first_direction(matrix: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """The top eigenvector of a symmetric matrix, oriented along ``mean`` (the sign is free)."""
    _, vectors = np.linalg.eigh(matrix)
    v = vectors[:, -1]
    return -v if float(v @ mean) < 0 else v


@dataclass(frozen=True)
class CorrectionFit:
    """Corpus statistics of pooled vectors: what every correction needs.

    ``mean`` (the corpus-mean pooled vector), ``pc1`` (first principal direction of the uncentred
    vectors, the paper's), ``pc1_centered`` (of the centred ones), each ``[D]`` float32; ``docs``
    the sample size; ``sample`` says what was sampled (e.g. ``"first 1024 documents of
    corpus.jsonl"``); ``input`` the fingerprint of the sampled rows (ids, texts, flags:
    ``store.input_fingerprint``) when fitted on a corpus, so a resumed job can tell that its
    input still holds them."""
    mean: np.ndarray
    pc1: np.ndarray
    pc1_centered: np.ndarray
    docs: int
    sample: str
    model_hash: str | None = None
    input: dict | None = None

    @classmethod
    def from_moments(cls, m: Moments, sample: str, model_hash: str | None = None) -> "CorrectionFit":
        if m.n < 2:
            raise SettingsError(f"a correction fit needs at least 2 non-empty texts, got {m.n}")
        mean = m.total / m.n
        second = m.scatter / m.n
        return cls(mean.astype(np.float32), _first_direction(second, mean).astype(np.float32),
                   _first_direction(second - np.outer(mean, mean), mean).astype(np.float32),
                   m.n, sample, model_hash)

    def fingerprint(self) -> str:
        return _digest(self.mean, self.pc1, self.pc1_centered, extra=str(self.docs).encode())

    def as_json(self) -> dict:
        return {"format": FIT_FORMAT, "docs": self.docs, "sample": self.sample,
                "model_hash": self.model_hash, "fingerprint": self.fingerprint(), "input": self.input,
                **{name: [float(x) for x in getattr(self, name)]
                   for name in ("mean", "pc1", "pc1_centered")}}

    @classmethod
    def from_json(cls, data: dict, where) -> "CorrectionFit":
        if not isinstance(data, dict) or data.get("format") != FIT_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise SettingsError(f"{where}: not a keytok correction fit (format {found!r}, "
                                f"expected {FIT_FORMAT!r})")
        try:
            arrays = [np.asarray(data[k], np.float32) for k in ("mean", "pc1", "pc1_centered")]
            fit = cls(*arrays, int(data["docs"]), str(data["sample"]), data.get("model_hash"),
                      data.get("input"))
        except (KeyError, TypeError, ValueError) as e:
            raise SettingsError(f"{where}: damaged correction fit ({type(e).__name__}: {e})") from None
        if data.get("fingerprint") not in (None, fit.fingerprint()):
            raise SettingsError(f"{where}: the fit's arrays do not match its fingerprint (damaged)")
        return fit

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.as_json()))

    @classmethod
    def load(cls, path) -> "CorrectionFit":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SettingsError(f"{path}: cannot read a correction fit ({e})") from None
        return cls.from_json(data, path)

    def check_model(self, model, where) -> None:
        """Refuse a fit made with another model (when it names one)."""
        _check_model(self.model_hash, model, where)


def correction_vectors(mode: str, dim: int, fit: CorrectionFit | None = None,
                       shift: Shift | None = None) -> np.ndarray:
    """``[a, u, w]`` (``[3, dim]`` float32) of :func:`keytok_jax.projection.correct` for a
    correction mode (with its fit) and an optional shift (``a += λ·v``)."""
    if mode not in CORRECTIONS:
        raise SettingsError(f"correction must be one of {CORRECTIONS}, got {mode!r}")
    a, u, w = (np.zeros(dim, np.float64) for _ in range(3))
    if mode != "none":
        if fit is None:
            raise SettingsError(f"correction {mode!r} needs a fit of corpus statistics "
                                "(Embedder.fit_correction, or a saved fit)")
        if fit.mean.shape != (dim,):
            raise SettingsError(f"the correction fit has dim {fit.mean.shape[0]}, the model's "
                                f"pooled vectors {dim}")
        mean = fit.mean.astype(np.float64)
        if mode in ("mean", "mean-pc1"):
            a -= mean
        if mode == "pc1":
            u, w = fit.pc1.astype(np.float64), -fit.pc1.astype(np.float64)
        if mode == "mean-pc1":   # p - μ - ((p - μ)·v) v
            v = fit.pc1_centered.astype(np.float64)
            a += (mean @ v) * v
            u, w = v, -v
    if shift is not None:
        if shift.direction.shape != (dim,):
            raise SettingsError(f"shift direction has shape {shift.direction.shape}, the model's "
                                f"embeddings have dim {dim}")
    out = np.stack([a, u, w]).astype(np.float32)
    if shift is not None:   # in float32, as the shift has always been applied
        out[0] += shift.lam * np.asarray(shift.direction, np.float32)
    return out
