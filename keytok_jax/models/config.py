"""Frozen, framework-neutral description of a decoder LM, built from a Hugging Face config.

One dataclass for every family: the Flax modules read only the fields their family uses, and the
family's ``config_from_hf`` is the single place where Hugging Face field names are interpreted.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import KeytokError


class UnsupportedConfigError(KeytokError, ValueError):
    """A Hugging Face config asks for something the port does not implement."""


@dataclass(frozen=True)
class RopeConfig:
    theta: float
    rotary_dim: int                 # leading dims of each head that rotate (partial rotary)
    kind: str = "default"           # default | linear | llama3
    factor: float = 1.0
    low_freq_factor: float = 1.0    # llama3 only
    high_freq_factor: float = 4.0   # llama3 only
    original_max_positions: int = 8192  # llama3 only


@dataclass(frozen=True)
class DecoderConfig:
    family: str
    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    norm_eps: float
    activation: str
    tie_word_embeddings: bool = True
    max_positions: int = 2048
    # attention
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    attn_scale: float | None = None        # None: head_dim ** -0.5
    attn_softcap: float | None = None
    layer_windows: tuple[int, ...] = ()    # per layer; 0 = full attention
    # positions
    rope: RopeConfig | None = None
    local_rope: RopeConfig | None = None   # Gemma3: rope of sliding-window layers
    pos_offset: int = 0                    # OPT learned positions start at 2
    # family specifics
    embed_scale: float = 1.0               # Gemma3: sqrt(hidden)
    pre_norm: bool = True                  # OPT-350m style post-LayerNorm when False
    parallel_residual: bool = False        # GPT-NeoX
    final_norm: bool = True
    norm_affine: bool = True               # OPT layer_norm_elementwise_affine
    word_embed_proj_dim: int | None = None # OPT project_in / project_out
    final_logit_softcap: float | None = None

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise UnsupportedConfigError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.layer_windows and len(self.layer_windows) != self.num_layers:
            raise UnsupportedConfigError("layer_windows must list one window per layer")

    @property
    def windows(self) -> tuple[int, ...]:
        return self.layer_windows or (0,) * self.num_layers

    @property
    def output_dim(self) -> int:
        """Width of the final hidden states (OPT projects out to word_embed_proj_dim)."""
        return self.word_embed_proj_dim or self.hidden_size

    def replace(self, **kw) -> "DecoderConfig":
        return dataclasses.replace(self, **kw)


def refuse_unless(hf, checks: dict[str, Any], family: str) -> None:
    """Refuse HF config fields whose value changes the math in a way this port does not implement.

    ``checks`` maps a field to the value(s) the port supports (a tuple means any of them, a callable
    a predicate). Absent fields pass.
    """
    for name, allowed in checks.items():
        if not hasattr(hf, name):
            continue
        value = getattr(hf, name)
        ok = allowed(value) if callable(allowed) else (
            value in allowed if isinstance(allowed, tuple) else value == allowed)
        if not ok:
            raise UnsupportedConfigError(
                f"{family}: config field {name}={value!r} is not implemented by keytok_jax "
                f"(supported: {getattr(allowed, '__doc__', None) or allowed!r})")


def rope_from_hf(hf, head_dim: int, family: str, params: dict | None = None) -> RopeConfig:
    """Translate HF rope parameters (v4 ``rope_theta``/``rope_scaling`` or v5 ``rope_parameters``)."""
    if params is None:
        params = dict(getattr(hf, "rope_parameters", None) or {})
        legacy = getattr(hf, "rope_scaling", None)
        if legacy and not params.get("rope_type"):
            params.update(legacy)
        params.setdefault("rope_theta", getattr(hf, "rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    partial = float(params.get("partial_rotary_factor", getattr(hf, "partial_rotary_factor", None) or 1.0))
    rotary_dim = int(head_dim * partial)
    theta = float(params.get("rope_theta") or 10000.0)
    if kind == "default":
        return RopeConfig(theta=theta, rotary_dim=rotary_dim)
    if kind == "linear":
        return RopeConfig(theta=theta, rotary_dim=rotary_dim, kind="linear", factor=float(params["factor"]))
    if kind == "llama3":
        return RopeConfig(
            theta=theta, rotary_dim=rotary_dim, kind="llama3", factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_positions=int(params["original_max_position_embeddings"]))
    raise UnsupportedConfigError(
        f"{family}: rope type {kind!r} is not implemented by keytok_jax (supported: default, linear, llama3)")


def whole_head_rope(hf, head_dim: int, family: str, params: dict | None = None,
                    where: str = "") -> RopeConfig:
    """:func:`rope_from_hf` for families whose transformers code rotates whole heads: its default
    rotary table ignores ``partial_rotary_factor`` and the scaled ones do not fit the heads, so
    neither is what a partial rotation computes, and a partial factor is refused."""
    rope = rope_from_hf(hf, head_dim, family, params)
    if rope.rotary_dim != head_dim:
        raise UnsupportedConfigError(
            f"{family}: partial rotary embeddings ({where}rotary_dim={rope.rotary_dim}, "
            f"head_dim={head_dim}) are not implemented (transformers' {family} rotates whole heads)")
    return rope
