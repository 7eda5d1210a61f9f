"""Prompt templates, instruction formats, and tokenization of a text into model input.

A text becomes ``[BOS] instruction-prefix prompt-prefix TEXT prompt-suffix instruction-suffix [EOS]``.
Each constant piece is tokenized once; only TEXT is tokenized per document (in one batched call),
so truncation cuts TEXT and never the template (PromptEOL's trailing ``:"`` survives).
Byte-level BPE attaches a space to the word after it (" hello"), so a piece's trailing spaces
are moved to the start of the next piece (for TEXT: prepended to every text) before tokenizing;
pieces then tokenize as the joined string does, except where BPE would merge punctuation across a
boundary (``sat."`` in PromptEOL): the model then sees ``.`` ``"`` as two tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .store import FLAG_EMPTY, FLAG_TRUNCATED

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


def _split(template: str, name: str) -> tuple[str, str]:
    if template.count("{text}") != 1:
        raise ValueError(f"{name} must contain {{text}} exactly once, got {template!r}")
    return tuple(template.split("{text}"))  # type: ignore[return-value]


@dataclass(frozen=True)
class Template:
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


def _rstrip_spaces(piece: str) -> tuple[str, str]:
    stripped = piece.rstrip(" ")
    return stripped, piece[len(stripped):]


@dataclass
class TokenizedDoc:
    ids: np.ndarray      # int32 [n] what the model sees
    pool_start: int      # tokens before this index are kept out of pooling
    flags: int           # FLAG_TRUNCATED / FLAG_EMPTY (reader flags are OR-ed in by the caller)


def pad_batch(docs, rows: int, seq: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``ids, mask, pool_mask`` int32 ``[rows, seq]``: ``docs`` right-padded with 0, rows after
    them all padding (fully masked)."""
    ids = np.zeros((rows, seq), np.int32)
    mask = np.zeros((rows, seq), np.int32)
    pool_mask = np.zeros((rows, seq), np.int32)
    for j, d in enumerate(docs):
        ids[j, : len(d.ids)] = d.ids
        mask[j, : len(d.ids)] = 1
        pool_mask[j, d.pool_start: len(d.ids)] = 1
    return ids, mask, pool_mask


class DocTokenizer:
    """Turns texts into :class:`TokenizedDoc` for a template and a maximum length."""

    def __init__(self, tokenizer, template: Template, max_length: int):
        self.tokenizer, self.template, self.max_length = tokenizer, template, max_length
        enc = lambda s: list(tokenizer(s, add_special_tokens=False)["input_ids"]) if s else []  # noqa: E731
        i_pre, p_pre, p_post, i_post = template.pieces()
        # Move trailing spaces onto the next piece: "Query: " + "hi" must give "Query:" + " hi".
        i_pre, carry = _rstrip_spaces(i_pre)
        p_pre, self.text_lead = _rstrip_spaces(carry + p_pre)
        probe = tokenizer("a")["input_ids"]
        bos = [tokenizer.bos_token_id] if (tokenizer.bos_token_id is not None and probe
                                           and probe[0] == tokenizer.bos_token_id) else []
        self.prefix = bos + enc(i_pre)
        self.pool_start = 0 if (template.pool_instruction or template.instruction is None) else len(self.prefix)
        self.prefix = self.prefix + enc(p_pre)
        self.suffix = enc(p_post) + enc(i_post)
        if template.add_eos:
            if tokenizer.eos_token_id is None:
                raise ValueError("add_eos is set but the tokenizer has no eos token")
            self.suffix.append(tokenizer.eos_token_id)
        self.text_budget = max_length - len(self.prefix) - len(self.suffix)
        if self.text_budget < 1:
            raise ValueError(f"max_length={max_length} leaves no room for text after the template's "
                             f"{len(self.prefix) + len(self.suffix)} tokens")

    def __call__(self, texts: list[str]) -> list[TokenizedDoc]:
        if not texts:
            return []
        # One token over budget tells truncation apart from an exact fit.
        enc = self.tokenizer([self.text_lead + t for t in texts], add_special_tokens=False, truncation=True,
                             max_length=self.text_budget + 1)["input_ids"]
        prefix, suffix = np.asarray(self.prefix, np.int32), np.asarray(self.suffix, np.int32)
        out = []
        for text, ids in zip(texts, enc):
            flags = 0
            if len(ids) > self.text_budget:
                ids, flags = ids[: self.text_budget], FLAG_TRUNCATED
            if not text.strip():
                flags |= FLAG_EMPTY
            out.append(TokenizedDoc(np.concatenate([prefix, np.asarray(ids, np.int32), suffix]),
                                    self.pool_start, flags))
        return out
