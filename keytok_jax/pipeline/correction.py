"""The correction applied to pooled vectors before the LM-head top-k, and its file form.

Today: the first-component shift ``e + λ·v`` (``Shift``), fitted by ``python -m
keytok_jax.spectral`` and read by ``embed --shift``. A shift names the model it was fitted for by
a hash of the LM head (:func:`model_hash`), so it is never applied to another model.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SettingsError

__all__ = ["SHIFT_FORMAT", "Shift", "model_hash"]

SHIFT_FORMAT = "keytok-shift/1"


def model_hash(model) -> str:
    """Content hash of a model's LM head (the matrix the shift is projected through): sha256 of
    its float32 bytes and shape, first 16 hex digits."""
    head = np.asarray(model.lm_head, np.float32)
    h = hashlib.sha256(str(head.shape).encode())
    h.update(np.ascontiguousarray(head).tobytes())
    return h.hexdigest()[:16]


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
        if self.model_hash and self.model_hash != model_hash(model):
            raise SettingsError(f"{where} was computed for another model (LM-head hash "
                                f"{self.model_hash}, this model's is {model_hash(model)})")
