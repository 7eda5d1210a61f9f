"""The trained model as a Hugging Face folder that keytok_jax and transformers both load, plus
``keytok.yaml``: the embed preset it was trained for, so that

    python -m keytok_jax.embed --config OUTPUT/model/keytok.yaml --input CORPUS --output STORE

embeds with the pooling, prompt and attention of training."""
from __future__ import annotations

from pathlib import Path

import yaml

from ..loading import save_hf_folder

__all__ = ["embed_preset", "export"]


def embed_preset(model, settings, folder: Path) -> dict:
    """The embed job's preset for ``model`` saved in ``folder`` with the EmbedSettings ``settings``."""
    preset = {"description": f"embedder fine-tuned by python -m keytok_jax.finetune from {model.source}",
              "model": str(folder.resolve()), "pooling": settings.pooling, "prompt": settings.prompt,
              "attention": settings.attention, "max_length": settings.max_length, "add_eos": settings.add_eos}
    if settings.instruction:
        preset.update(instruction=settings.instruction, instruction_format=settings.instruction_format)
    return preset


def export(model, settings, folder: Path) -> None:
    """Hugging Face folder of ``model`` plus ``keytok.yaml``: the embed preset it was trained for."""
    save_hf_folder(model, folder)
    (folder / "keytok.yaml").write_text(yaml.safe_dump(embed_preset(model, settings, folder),
                                                       sort_keys=False))
