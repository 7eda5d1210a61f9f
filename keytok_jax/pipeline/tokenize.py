"""Tokenize: a text becomes what the model sees, a :class:`~keytok_jax.records.TokenizedDoc`.

A text becomes ``[BOS] instruction-prefix prompt-prefix TEXT prompt-suffix instruction-suffix [EOS]``
(the pieces come from :class:`keytok_jax.settings.Template`). Each constant piece is tokenized
once; only TEXT is tokenized per document (in one batched call), so truncation cuts TEXT and never
the template (PromptEOL's trailing ``:"`` survives). Byte-level BPE attaches a space to the word
after it (" hello"), so a piece's trailing spaces are moved to the start of the next piece (for
TEXT: prepended to every text) before tokenizing; pieces then tokenize as the joined string does,
except where BPE would merge punctuation across a boundary (``sat."`` in PromptEOL): the model
then sees ``.`` ``"`` as two tokens.
"""
from __future__ import annotations

import numpy as np

from ..errors import SettingsError
from ..records import FLAG_EMPTY, FLAG_TRUNCATED, TokenizedDoc
from ..settings import Template

__all__ = ["DocTokenizer"]


def _rstrip_spaces(piece: str) -> tuple[str, str]:
    stripped = piece.rstrip(" ")
    return stripped, piece[len(stripped):]


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
                raise SettingsError("add_eos is set but the tokenizer has no eos token")
            self.suffix.append(tokenizer.eos_token_id)
        self.text_budget = max_length - len(self.prefix) - len(self.suffix)
        if self.text_budget < 1:
            raise SettingsError(f"max_length={max_length} leaves no room for text after the "
                                f"template's {len(self.prefix) + len(self.suffix)} tokens")

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
