"""Settings of contrastive fine-tuning (``python -m keytok_jax.finetune``), with every default.

The embedding settings a model is trained for differ from the library's (the SGPT
position-weighted mean over 128 tokens), so they are declared here rather than borrowed from
:class:`~keytok_jax.settings.embed.EmbedSettings`; the exported ``keytok.yaml`` carries them over
to the embed job.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import SettingsError
from ..loading import DEFAULT_MODEL
from ..model import ATTENTION_MODES
from ..pooling import POOLING_METHODS
from .core import setting
from .embed import INSTRUCTION_FORMATS, PROMPTS

__all__ = ["TRAIN_DATA_FORMATS", "TRAIN_MODES", "NEGATIVES", "TrainDataSettings",
           "TrainEmbedSettings", "TrainSettings", "FINETUNE_GROUPS", "FINETUNE_CLASSES"]

TRAIN_DATA_FORMATS = ("auto", "jsonl", "nli", "beir")
TRAIN_MODES = ("lora", "bias", "full")
NEGATIVES = ("auto", "hard", "in-batch")


@dataclass(frozen=True)
class TrainDataSettings:
    data: str | None = setting(
        None, "training data: a .jsonl of {anchor, positive[, negative]}, an NLI folder (SentEval "
        "s1/s2/labels.SPLIT) or SimCSE csv (sent0,sent1,hard_neg), or a BEIR folder (queries.jsonl, "
        "corpus.jsonl, qrels/SPLIT.tsv)", required=True)
    data_format: str = setting("auto", "format of --data (auto: from the path)",
                               choices=TRAIN_DATA_FORMATS)
    split: str | None = setting(None, "BEIR qrels split (default: train) or NLI splits, "
                                "comma-separated (default: every split in the folder)")
    limit: int | None = setting(None, "use only the first N examples (after reading, before "
                                "shuffling)")
    output: str | None = setting(None, "run directory: checkpoints/, train_log.jsonl, summary.json "
                                 "and the exported model/", required=True)
    eval_sts: str | None = setting(None, "STS file (STS-B sts-*.csv or SentEval STS.input.*) whose "
                                   "Spearman correlation is measured before training and after, "
                                   "recorded in summary.json", metavar="FILE")


@dataclass(frozen=True)
class TrainEmbedSettings:
    """The embedding trained for: used in the loss and written to the exported preset."""
    model: str = setting(DEFAULT_MODEL, "backbone: alias, Hugging Face folder, .gguf file or hub id")
    pooling: str = setting("weighted_mean", "SGPT position-weighted mean, mean, or last token",
                           choices=POOLING_METHODS)
    prompt: str = setting("none", "prompt template with {text}, or a name: " + ", ".join(PROMPTS))
    instruction: str | None = setting(None, "instruction prepended to every text with "
                                      "--instruction-format")
    instruction_format: str = setting("plain", "template with {instruction} and {text}, or a name: "
                                      + ", ".join(INSTRUCTION_FORMATS))
    attention: str = setting("causal", "attention mask during training and in the exported preset",
                             choices=ATTENTION_MODES)
    add_eos: bool = setting(False, "append the EOS token to every text")
    max_length: int = setting(128, "max tokens per text incl. template; longer texts are truncated")


@dataclass(frozen=True)
class TrainSettings:
    mode: str = setting("lora", "what is trained: LoRA adapters, biases only (BitFit; needs an "
                        "architecture with biases), or every parameter", choices=TRAIN_MODES)
    rank: int = setting(8, "LoRA rank")
    alpha: float = setting(16.0, "LoRA scale numerator: update = alpha/rank * A@B")
    lora_targets: str = setting("attn,mlp", "comma-separated module names whose kernels get LoRA: "
                                "attn, mlp, or single projections (q, k, v, o, gate, up, down, "
                                "fc_in, fc_out)")
    negatives: str = setting("auto", "hard: use each example's hard negative too (examples without "
                             "one are dropped); in-batch: ignore hard negatives; auto: hard when "
                             "every example has one", choices=NEGATIVES)
    temperature: float = setting(0.05, "InfoNCE temperature (0.05 is SimCSE/SGPT's 20x scale)")
    batch_size: int = setting(32, "examples per micro-batch")
    accumulate: int = setting(1, "micro-batches per optimizer step (gradient accumulation)")
    lr: float = setting(2e-4, "peak learning rate")
    warmup: int = setting(10, "optimizer steps of linear warm-up before the linear decay to 0")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    max_grad_norm: float = setting(1.0, "global-norm clipping")
    epochs: float = setting(1.0, "passes over the data")
    max_steps: int | None = setting(None, "stop after this many optimizer steps (overrides --epochs)")
    seed: int = setting(0, "data order and LoRA init")
    save_every: int = setting(50, "checkpoint every N optimizer steps, and at the end")
    keep: int = setting(2, "checkpoints kept")
    no_export: bool = setting(False, "do not export OUTPUT/model at the end")
    no_progress: bool = setting(False, "no progress bar")

    def __post_init__(self):
        for name in ("batch_size", "accumulate", "save_every", "rank"):
            if getattr(self, name) < 1:
                raise SettingsError(f"--{name.replace('_', '-')} must be >= 1")


# The command's flag groups, in --help order: (title, settings classes).
FINETUNE_GROUPS = (
    ("data and output", (TrainDataSettings,)),
    ("model and embedding", (TrainEmbedSettings,)),
    ("training", (TrainSettings,)),
)
FINETUNE_CLASSES = tuple(cls for _, classes in FINETUNE_GROUPS for cls in classes)
