"""Flax ports of decoder LMs, one file per family; ``FAMILIES`` maps HF ``model_type`` to a port."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .config import DecoderConfig, RopeConfig, UnsupportedConfigError
from .decoder import Decoder
from . import llama
from . import opt, gpt_neox
from . import gemma3
from . import qwen3
from . import gpt2, gpt_neo


@dataclass(frozen=True)
class Family:
    name: str
    module: type[Decoder]
    config_from_hf: Callable


FAMILIES: dict[str, Family] = {}


def register(model_types, family: Family):
    for mt in model_types:
        FAMILIES[mt] = family


register(llama.MODEL_TYPES, Family("llama", llama.Llama, llama.config_from_hf))
register(opt.MODEL_TYPES, Family("opt", opt.OPT, opt.config_from_hf))
register(gpt_neox.MODEL_TYPES, Family("gpt_neox", gpt_neox.GPTNeoX, gpt_neox.config_from_hf))
register(gemma3.MODEL_TYPES, Family("gemma3", gemma3.Gemma3, gemma3.config_from_hf))
register(qwen3.MODEL_TYPES, Family("qwen3", qwen3.Qwen3, qwen3.config_from_hf))
register(gpt2.MODEL_TYPES, Family("gpt2", gpt2.GPT2, gpt2.config_from_hf))
register(gpt_neo.MODEL_TYPES, Family("gpt_neo", gpt_neo.GPTNeo, gpt_neo.config_from_hf))


def family_for(model_type: str) -> Family:
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise UnsupportedConfigError(
            f"unknown architecture model_type={model_type!r}; keytok_jax supports: "
            f"{', '.join(sorted(FAMILIES))}") from None


def config_from_hf(hf) -> DecoderConfig:
    return family_for(hf.model_type).config_from_hf(hf)


def build_module(cfg: DecoderConfig, dtype, causal: bool = True, all_layers: bool = False,
                 attention_impl: str = "xla") -> Decoder:
    return FAMILIES[cfg.model_type].module(cfg, dtype=dtype, causal=causal, all_layers=all_layers,
                                           attention_impl=attention_impl)


__all__ = ["DecoderConfig", "RopeConfig", "UnsupportedConfigError", "FAMILIES", "family_for",
           "config_from_hf", "build_module"]
