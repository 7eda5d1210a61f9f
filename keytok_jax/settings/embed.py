"""Settings of the embedding: what changes a vector (EmbedSettings, with its prompt Template) and
the corpus job's other groups (model, input, output, speed, devices), with every default."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import SettingsError
from ..loading import DEFAULT_MODEL, DTYPES
from ..model import ATTENTION_MODES
from ..models.layers import ATTENTION_IMPLS
from ..pooling import POOLING_METHODS
from ..projection import CORRECTIONS, DOC_TOKENS, WEIGHTINGS
from .core import build, setting

__all__ = ["PROMPTS", "INSTRUCTION_FORMATS", "Template", "EmbedSettings", "ModelSettings",
           "FitSettings", "InputSettings", "OutputSettings", "SpeedSettings", "DeviceSettings", "JobSettings",
           "JOB_PRESET",
           "JOB_GROUPS", "INPUT_FORMATS"]

# Prompt templates: `{text}` marks the text. Tokens of the prompt are pooled with the text.
PROMPTS = {
    "none": "{text}",
    # PromptEOL (Jiang et al. 2023): last-token pooling on the closing quote.
    "prompteol": 'This sentence : "{text}" means in one word:"',
}

# Instruction formats: `{instruction}` and `{text}`. Tokens before `{text}` are the instruction
# part, kept out of pooling unless `pool_instruction` is set (e5-mistral, GritLM and LLM2Vec all
# exclude them).
INSTRUCTION_FORMATS = {
    "e5-mistral": "Instruct: {instruction}\nQuery: {text}",
    "gritlm": "<|user|>\n{instruction}\n<|embed|>\n{text}",
    "llm2vec": "{instruction} {text}",
    "plain": "{instruction}{text}",
}

INPUT_FORMATS = ("auto", "jsonl", "tsv", "txt", "parquet", "beir")


def _split(template: str, name: str) -> tuple[str, str]:
    if template.count("{text}") != 1:
        raise SettingsError(f"{name} must contain {{text}} exactly once, got {template!r}")
    return tuple(template.split("{text}"))  # type: ignore[return-value]


@dataclass(frozen=True)
class Template:
    """How a text is wrapped: prompt, optional instruction, EOS (see keytok_jax.pipeline.tokenize)."""
    prompt: str = "{text}"
    instruction: str | None = None
    instruction_format: str = "plain"
    pool_instruction: bool = False
    add_eos: bool = False

    def pieces(self) -> tuple[str, str, str, str]:
        """(instruction prefix, prompt prefix, prompt suffix, instruction suffix)."""
        p_pre, p_post = _split(PROMPTS.get(self.prompt, self.prompt), "prompt")
        if self.instruction is None:
            return "", p_pre, p_post, ""
        fmt = INSTRUCTION_FORMATS.get(self.instruction_format, self.instruction_format)
        i_pre, i_post = _split(fmt, "instruction_format")
        return (i_pre.format(instruction=self.instruction), p_pre, p_post,
                i_post.format(instruction=self.instruction))


@dataclass(frozen=True)
class EmbedSettings:
    """Everything that changes an embedding. A store records these; a resumed job must match.
    These are the library's defaults (``Embedder``); the corpus job starts from ``JOB_PRESET``."""
    pooling: str = setting("mean", "last token, mean, or SGPT position-weighted mean",
                           choices=POOLING_METHODS)
    prompt: str = setting("none", "prompt template with {text}, or a name: "
                          + ", ".join(PROMPTS))
    instruction: str | None = setting(None, "instruction text prepended with --instruction-format")
    instruction_format: str = setting("plain", "template with {instruction} and {text}, or a name: "
                                      + ", ".join(INSTRUCTION_FORMATS))
    pool_instruction: bool = setting(False, "pool the instruction tokens too (default: keep them "
                                     "out of pooling)")
    add_eos: bool = setting(False, "append the EOS token (e5-mistral style)")
    attention: str = setting("causal", "attention mask", choices=ATTENTION_MODES)
    max_length: int = setting(512, "max tokens per text incl. template; longer texts are truncated "
                              "and flagged")
    doc_tokens: str = setting(
        "aligned", "the tokens of a text's sparse vector: aligned: the top-k of the whole "
        "vocabulary's LM-head projection (the paper's aligned tokens); literal: the text's own word "
        "tokens (both forms of each word, as token queries use them), the top-k by their "
        "projection, weighted 1 + the projection min-max scaled over the text's tokens",
        choices=DOC_TOKENS)
    top_k: int = setting(64, "tokens kept per text")
    weighting: str = setting("relu", "token weight of aligned tokens: raw logit, max(logit,0), or "
                             "log(1+max(logit,0))", choices=WEIGHTINGS)
    correction: str = setting(
        "none", "correction of the pooled vector before the LM-head top-k, from corpus statistics "
        "(the dense vector is unchanged): none; mean: subtract the corpus-mean vector (the same "
        "as centring each token's logit on its corpus mean); pc1: remove the first principal "
        "direction of the uncentred vectors (the paper's common component); mean-pc1: subtract "
        "the mean, then remove the first principal direction of the centred vectors",
        choices=CORRECTIONS)
    normalize: bool = setting(False, "L2-normalise the dense vectors")
    matryoshka_dim: int | None = setting(None, "keep the first N dims of the dense vectors")
    prompt_name: str | None = setting(
        None, "a sentence-transformers folder's named prompt (config_sentence_transformers.json "
        "prompts, e.g. query or document); default: the folder's default_prompt_name, if any")
    model_declares: str = setting(
        "follow", "follow: embed as the model folder declares it, replacing --pooling, "
        "--attention, --normalize, --max-length, --prompt and --add-eos: a sentence-transformers "
        "folder (modules.json) by its Pooling, Dense and Normalize modules, prompts (--instruction "
        "is the prompt text only when no prompt is named or default) and max_seq_length; a config "
        "declaring bidirectional attention "
        "(use_bidirectional_attention, is_causal: false) bidirectionally. ignore: the backbone "
        "with the flags as given", choices=("follow", "ignore"))

    def __post_init__(self):
        if self.pooling not in POOLING_METHODS:
            raise SettingsError(f"pooling must be one of {POOLING_METHODS}, got {self.pooling!r}")
        if self.attention not in ATTENTION_MODES:
            raise SettingsError(f"attention must be one of {ATTENTION_MODES}, got {self.attention!r}")
        if self.weighting not in WEIGHTINGS:
            raise SettingsError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.correction not in CORRECTIONS:
            raise SettingsError(f"correction must be one of {CORRECTIONS}, got {self.correction!r}")
        if self.doc_tokens not in DOC_TOKENS:
            raise SettingsError(f"doc_tokens must be one of {DOC_TOKENS}, got {self.doc_tokens!r}")
        if self.doc_tokens == "literal" and self.weighting != "relu":
            raise SettingsError(f"weighting={self.weighting!r} applies to doc_tokens='aligned'; "
                                "literal tokens have their own weight (see --doc-tokens)")
        if self.model_declares not in ("follow", "ignore"):
            raise SettingsError(f"model_declares must be 'follow' or 'ignore', got {self.model_declares!r}")
        if self.max_length < 1 or self.top_k < 1:
            raise SettingsError("max_length and top_k must be positive")

    def template(self) -> Template:
        return Template(self.prompt, self.instruction, self.instruction_format, self.pool_instruction,
                        self.add_eos)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ModelSettings:
    model: str = setting(DEFAULT_MODEL, "alias, Hugging Face folder, .gguf file or hub id")
    dtype: str = setting("auto", "parameter and compute dtype; auto: bfloat16 on GPU/TPU (norms, "
                         "softmax and logits in float32), float32 on CPU",
                         choices=DTYPES)
    lm_head: str | None = setting(None, "borrow the LM head from this checkpoint (alias, folder, "
                                  ".gguf or hub id: the base model the embedder was trained from) "
                                  "for a model saved without one (bare LlamaModel/MistralModel "
                                  "weights, no lm_head.weight, untied)", metavar="BASE_MODEL")
    shift: str | None = setting(None, "first-component shift file (written by python -m "
                                "keytok_jax.spectral) applied before the LM-head projection")


@dataclass(frozen=True)
class FitSettings:
    """Where the corpus job's correction statistics come from (EmbedSettings.correction)."""
    fit_docs: int = setting(128, "documents sampled to fit the correction's statistics (the "
                            "model embeds them once more: about fit_docs / corpus size of extra "
                            "time; on SciFact 32 to all 583 documents of a sub-corpus gave the "
                            "same quality, README Sparse quality)")
    fit_sample: str = setting("spread", "which documents: spread (evenly spaced through the "
                              "corpus; from standard input: the first) or first",
                              choices=("spread", "first"))
    correction_fit: str | None = setting(None, "use this fit instead of fitting on the corpus "
                                         "(a correction_fit.json of another store, or "
                                         "Embedder.fit_correction(...).save(path))", metavar="FILE")

    def __post_init__(self):
        if self.fit_docs < 2:
            raise SettingsError(f"fit_docs must be at least 2, got {self.fit_docs}")
        if self.fit_sample not in ("spread", "first"):
            raise SettingsError(f"fit_sample must be spread or first, got {self.fit_sample!r}")


@dataclass(frozen=True)
class InputSettings:
    input: str | None = setting(None, "corpus: .jsonl/.json, .tsv, .txt (one text per line, id = "
                                "line number), .parquet, or a BEIR dataset folder (reads its "
                                "corpus.jsonl)", required=True)
    format: str = setting("auto", "input format (auto: from the path)", choices=INPUT_FORMATS)
    id_field: str = setting("_id", "JSONL/parquet id field")
    text_fields: tuple = setting(("title", "text"), "fields joined with a space to make the text "
                                 "(BEIR style)", nargs="+")
    limit: int | None = setting(None, "embed only the first N documents")
    on_error: str = setting("raise", "malformed input line: stop with file:line (raise) or skip "
                            "it, count it and write it to --rejects", choices=("raise", "skip"))
    rejects: str | None = setting(None, "JSONL side file for skipped lines (default: "
                                  "STORE.rejects.jsonl)")


@dataclass(frozen=True)
class OutputSettings:
    output: str | None = setting(None, "store directory (created, or resumed if it exists)",
                                 required=True)
    dense: bool = setting(False, "also store the dense vectors [N, D]")
    shard_size: int = setting(1024, "rows per shard = unit of resume")
    resume: bool = setting(False, "resume an existing store (the default behaviour; kept for "
                           "explicitness)")
    recompute: bool = setting(False, "when resuming, redo the recorded shards that cannot be "
                              "trusted instead of stopping: those whose input rows changed "
                              "since they were written, whose record has no input fingerprint "
                              "(older stores), or whose files no longer match their checksums; "
                              "records past the end of a shrunk input are dropped")
    summary_json: str | None = setting(None, "also write the final summary to this JSON file")


@dataclass(frozen=True)
class SpeedSettings:
    batch_tokens: int | None = setting(None, "padded tokens per device batch (default: 8192 on "
                                       "GPU/TPU, 1024 on CPU, where smaller batches pad less)")
    bucket_step: int | None = setting(None, "texts are padded to a multiple of this many tokens "
                                      "(up to 512): smaller pads less but compiles more batch "
                                      "shapes (default: 32 on GPU/TPU, 16 on CPU)")
    vocab_chunk: int = setting(4096, "vocabulary rows per top-k step")
    attention_impl: str = setting("auto", "attention kernel: xla (blocked einsums, the faster on "
                                  "CPU), fused (jax.nn.dot_product_attention: cuDNN fused "
                                  "attention on GPU, which takes bfloat16) or auto (fused on an "
                                  "NVIDIA GPU with a bfloat16 model, else xla); the same vectors up "
                                  "to float rounding (tests/test_attention_impl.py)",
                                  choices=("auto",) + ATTENTION_IMPLS)
    tokenize_workers: int | None = setting(
        None, "processes tokenizing ahead of the device (0: one thread of this process); "
        "default: a quarter of the cores, at most 8 (0 on 2 cores, where the device is the CPU)")
    precompile: bool = setting(False, "compile the step for every batch shape (each length "
                               "bucket's full batch and its smaller last batches) before the first "
                               "batch, reported apart (precompile_seconds): on an accelerator the "
                               "run then never stalls to compile; on CPU it also compiles shapes "
                               "the corpus may not need")
    compile_cache: str = setting("auto", "directory of JAX's persistent compilation cache: a rerun, "
                                 "resume or next corpus on this machine loads the compiled batch "
                                 "shapes instead of compiling them again (~10 s each on an H200); "
                                 "auto: $KEYTOK_JAX_CACHE/xla (~/.cache/keytok_jax/xla) unless JAX "
                                 "already has one configured; none: the job sets none", metavar="DIR|auto|none")
    no_progress: bool = setting(False, "no progress bar")

    def __post_init__(self):
        if self.tokenize_workers is not None and self.tokenize_workers < 0:
            raise SettingsError(f"tokenize_workers must be 0 or more, got {self.tokenize_workers}")


@dataclass(frozen=True)
class DeviceSettings:
    mesh: str | None = setting(
        None, "spread the job over D*M devices (config key: mesh). data=D splits every batch over "
        "D devices (data parallel: throughput; rows per batch are rounded up to a multiple of D); "
        "model=M splits attention heads, MLP units and the vocabulary (embedding, LM head, top-k) "
        "over M devices (tensor parallel: for models too big for one device). A missing axis is 1; "
        "one axis may be -1 (the rest). D*M may not exceed the devices JAX sees. Rules: "
        "keytok_jax/sharding.py. Default: one device", metavar="data=D,model=M")
    distributed: bool = setting(
        False, "one of several processes (hosts) writing one store: jax.distributed.initialize "
        "with the three flags below, else the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / "
        "JAX_PROCESS_ID environment variables, else JAX's auto-detection (SLURM, TPU pods, Open "
        "MPI). Shard i of the store is embedded by process i mod N on its own devices (--mesh "
        "applies to each process's local devices; see --global-mesh); process 0 finalizes the "
        "store once every process has recorded its shards. Run the same command on every "
        "process; rerun them all to resume")
    global_mesh: bool = setting(
        False, "with --distributed: --mesh spans the devices of all processes (config key: "
        "global_mesh), so the model axis can cross hosts (a model too big for one host). "
        "Processes then step in lock-step: each round, every group of processes that holds the "
        "same data rows embeds one shard, all run the same agreed sequence of batch shapes (a "
        "process with fewer batches runs empty, masked rows) and one process per group writes. "
        "Slower than the default when the model fits on one host")
    coordinator: str | None = setting(None, "address of process 0's coordinator service",
                                      metavar="HOST:PORT")
    num_processes: int | None = setting(None, "number of processes in the job")
    process_id: int | None = setting(None, "this process's index, 0 .. num-processes - 1")


@dataclass(frozen=True)
class JobSettings:
    """The corpus job's settings, one record per group: what :func:`keytok_jax.pipeline.job.run`
    takes, each stage reading only its own group."""
    input: InputSettings
    output: OutputSettings
    model: ModelSettings
    embed: EmbedSettings
    fit: FitSettings
    speed: SpeedSettings
    devices: DeviceSettings

    @classmethod
    def from_options(cls, opts) -> "JobSettings":
        """The records from a flat dict of options (a resolved preset + flags)."""
        return cls(**{name: build(kind, opts) for name, kind in _GROUP_TYPES.items()})


# The corpus job's built-in preset (configs/smollm2.yaml holds the same, checked by a test):
# SmolLM2 with PromptEOL and last-token pooling, whose last position's next-token logits are the
# text's one-word summary, so its top LM-head tokens are key words without training; the first
# principal direction of the corpus removed before the projection (the paper's common component),
# and each document's own words ranked and weighted by it, up to 256 (README "Sparse quality" has
# the measurements that chose each).
JOB_PRESET = {"model": DEFAULT_MODEL, "pooling": "last", "prompt": "prompteol", "correction": "pc1",
              "doc_tokens": "literal", "top_k": 256}

# The corpus job's flag groups, in --help order: (title, settings classes).
# JobSettings field → its settings class.
_GROUP_TYPES = {"input": InputSettings, "output": OutputSettings, "model": ModelSettings,
                "embed": EmbedSettings, "fit": FitSettings, "speed": SpeedSettings, "devices": DeviceSettings}

JOB_GROUPS = (
    ("input and output", (InputSettings, OutputSettings)),
    ("model and embedding", (ModelSettings, EmbedSettings)),
    ("correction statistics (with --correction)", (FitSettings,)),
    ("speed", (SpeedSettings,)),
    ("several devices and hosts (README: Sharding and multiple devices)", (DeviceSettings,)),
)
