"""One home for every default and preset of keytok_jax.

``core`` says how settings are declared and resolved (class defaults → a command's built-in
preset → ``--config`` YAML → flags); each other module holds one area's settings classes and
defaults. Commands generate their flags from these classes (keytok_jax.cli.flags).
"""
from .core import build, defaults, read_preset, resolve, setting
from .embed import (INSTRUCTION_FORMATS, JOB_GROUPS, JOB_PRESET, PROMPTS, DeviceSettings,
                    EmbedSettings, FitSettings, InputSettings, JobSettings, ModelSettings, OutputSettings, SpeedSettings,
                    Template)

__all__ = ["build", "defaults", "read_preset", "resolve", "setting", "INSTRUCTION_FORMATS",
           "JOB_GROUPS", "JOB_PRESET", "PROMPTS", "DeviceSettings", "EmbedSettings",
           "FitSettings", "InputSettings", "ModelSettings", "OutputSettings", "SpeedSettings", "Template"]
from .train import FINETUNE_GROUPS, TrainDataSettings, TrainEmbedSettings, TrainSettings  # noqa: F401
from .search import EvaluateSettings, ExportSettings, QuerySettings, SearchSettings  # noqa: F401
from .analysis import ANALYSIS_PRESET, PRECISIONS, TEXT_FORMATS, analysis_embedding, sts_embedding  # noqa: F401
