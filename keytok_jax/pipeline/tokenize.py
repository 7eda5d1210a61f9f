"""Tokenize: a text becomes what the model sees, a :class:`~keytok_jax.records.TokenizedDoc`.

A text becomes ``[BOS] instruction-prefix prompt-prefix TEXT prompt-suffix instruction-suffix [EOS]``
(the pieces come from :class:`keytok_jax.settings.Template`). Each constant piece is tokenized
once; only TEXT is tokenized per document (in one batched call), so truncation cuts TEXT and never
the template (PromptEOL's trailing ``:"`` survives). Byte-level BPE attaches a space to the word
after it (" hello"), so a piece's trailing spaces are moved to the start of the next piece (for
TEXT: prepended to every text) before tokenizing; pieces then tokenize as the joined string does,
except where BPE would merge punctuation across a boundary (``sat."`` in PromptEOL): the model
then sees ``.`` ``"`` as two tokens.

Long texts are cut by characters before tokenizing, so a 20 MB line costs memory in proportion to
``max_length``, not to the line (a fast tokenizer keeps ids, offsets and token strings of every
token it produces, ~500 bytes per token, before truncating). The text budget is ``n - 1`` tokens
(``n`` = the budget + 1, one over to tell truncation apart from an exact fit) and ``L`` is the
tokenizer's longest vocabulary entry in characters: a byte-level vocabulary spells each byte as one
character and a text character is one byte or more, and a SentencePiece vocabulary spells text
characters one for one, so ``n`` tokens cover at most ``W = n L`` characters of text. A text longer
than ``2 W`` characters is tokenized as its first ``2 W`` characters, and the result is kept only
when it is provably today's: the cut text gave ``n`` tokens and, by their offsets, they all end
within the first ``W`` characters, ``W`` characters or more before the cut. Pre-tokenizers split
words with at most one character of lookahead and BPE works word by word, so the words before the
cut tokenize as in the whole text; the kept tokens can only differ if one word runs from the kept
tokens across ``W`` further characters and its merges change by reaching across all of them (no
real vocabulary's merges chain that far; tests compare cut and whole on such words). Otherwise (a
normalizer composing several characters into one, e.g. NFC on combining marks, or a slow tokenizer
without offsets) the whole text is tokenized, as before. Texts of ``2 W`` characters or fewer are
never cut. E.g. SmolLM2 (``L`` = 81) at ``max_length`` 512: texts over ~83k characters are cut.
"""
from __future__ import annotations

import numpy as np

from ..errors import SettingsError
from ..records import FLAG_EMPTY, FLAG_TRUNCATED, TokenizedDoc
from ..settings import Template
from .literal import LiteralTokens

__all__ = ["DocTokenizer", "longest_entry"]


def _rstrip_spaces(piece: str) -> tuple[str, str]:
    stripped = piece.rstrip(" ")
    return stripped, piece[len(stripped):]


class DocTokenizer:
    """Turns texts into :class:`TokenizedDoc` for a template and a maximum length."""

    def __init__(self, tokenizer, template: Template, max_length: int, pool_start: int | None = None,
                 joint_prompt: str = "", literal: LiteralTokens | None = None):
        """``pool_start`` overrides the template's pooling start (tokens kept out of pooling);
        ``joint_prompt`` is prepended to every text and tokenized with it as one string, as
        sentence-transformers tokenizes ``prompt + text`` (no piece boundary; truncation may cut
        into it as it does there); ``literal``: also give each text's literal tokens
        (:attr:`TokenizedDoc.literal`), those of the part the model sees."""
        self.tokenizer, self.template, self.max_length = tokenizer, template, max_length
        self.literal = literal
        enc = lambda s: list(tokenizer(s, add_special_tokens=False)["input_ids"]) if s else []  # noqa: E731
        i_pre, p_pre, p_post, i_post = template.pieces()
        # Move trailing spaces onto the next piece: "Query: " + "hi" must give "Query:" + " hi".
        i_pre, carry = _rstrip_spaces(i_pre)
        p_pre, self.text_lead = _rstrip_spaces(carry + p_pre)
        self.text_lead = joint_prompt + self.text_lead
        probe = tokenizer("a")["input_ids"]
        bos = [tokenizer.bos_token_id] if (tokenizer.bos_token_id is not None and probe
                                           and probe[0] == tokenizer.bos_token_id) else []
        self.prefix = bos + enc(i_pre)
        self.pool_start = 0 if (template.pool_instruction or template.instruction is None) else len(self.prefix)
        if pool_start is not None:   # a sentence-transformers prompt length (pipeline.embedder)
            self.pool_start = pool_start
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
        # W = characters n tokens can cover (module docstring); None: never cut (no offsets).
        self.window_chars = ((self.text_budget + 1) * longest_entry(tokenizer)
                             if getattr(tokenizer, "is_fast", False) else None)

    @property
    def cut_chars(self) -> int | None:
        """Texts longer than this are tokenized from their first ``cut_chars`` characters."""
        return None if self.window_chars is None else 2 * self.window_chars

    def __call__(self, texts: list[str]) -> list[TokenizedDoc]:
        if not texts:
            return []
        enc = self.text_ids(texts)
        prefix, suffix = np.asarray(self.prefix, np.int32), np.asarray(self.suffix, np.int32)
        out = []
        for text, ids in zip(texts, enc):
            flags = 0
            if len(ids) > self.text_budget:
                ids, flags = ids[: self.text_budget], FLAG_TRUNCATED
            if not text or text.isspace():   # (no stripped copy of a long text)
                flags |= FLAG_EMPTY
            out.append(TokenizedDoc(np.concatenate([prefix, np.asarray(ids, np.int32), suffix]),
                                    self.pool_start, flags))
        if self.literal is not None:
            seen = [self.seen_text(t, d) for t, d in zip(texts, out)]
            for d, lit in zip(out, self.literal(seen)):
                d.literal = lit
        return out

    def seen_text(self, text: str, doc: TokenizedDoc) -> str:
        """The part of ``text`` the model sees: all of it, or for a truncated text its kept
        tokens decoded (never the whole of a long text)."""
        if not doc.flags & FLAG_TRUNCATED:
            return text
        kept = doc.ids[len(self.prefix): len(doc.ids) - len(self.suffix)]
        seen = self.tokenizer.decode(kept.tolist())
        return seen[len(self.text_lead):] if seen.startswith(self.text_lead) else seen

    def text_ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's first ``text_budget + 1`` token ids (one over the budget tells truncation
        apart from an exact fit); long texts are cut first (module docstring)."""
        n, cut = self.text_budget + 1, self.cut_chars
        is_long = [cut is not None and len(t) > cut for t in texts]
        if not any(is_long):   # the common case: one batched call, as always
            return self._encode([self.text_lead + t for t in texts], n)
        short = [i for i, long in enumerate(is_long) if not long]
        enc = dict(zip(short, self._encode([self.text_lead + texts[i] for i in short], n)))
        for i, long in enumerate(is_long):
            if long:
                enc[i] = self._cut_ids(texts[i], n)
        return [enc[i] for i in range(len(texts))]

    def _encode(self, inputs: list[str], n: int) -> list[list[int]]:
        if not inputs:
            return []
        return self.tokenizer(inputs, add_special_tokens=False, truncation=True,
                              max_length=n)["input_ids"]

    def _cut_ids(self, text: str, n: int) -> list[int]:
        ids = self.cut_ids(text, n)
        return ids if ids is not None else self._encode([self.text_lead + text], n)[0]

    def cut_ids(self, text: str, n: int) -> list[int] | None:
        """The first ``n`` ids of ``text`` from its first ``cut_chars`` characters when they are
        provably those of the whole text (module docstring), else None."""
        lead = self.text_lead
        enc = self.tokenizer(lead + text[: self.cut_chars], add_special_tokens=False,
                             truncation=True, max_length=n, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        if len(ids) == n and max(end for _, end in offsets) <= len(lead) + self.window_chars:
            return ids
        return None


def longest_entry(tokenizer) -> int:
    """Characters of the tokenizer's longest vocabulary entry (added tokens included)."""
    return max((len(token) for token in tokenizer.get_vocab()), default=1) or 1
