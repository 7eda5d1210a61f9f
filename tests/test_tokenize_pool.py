"""Tokenization ahead of the device in worker processes gives what the thread gives (issue 21)."""
from __future__ import annotations

import numpy as np
import pytest

from keytok_jax.errors import SettingsError
from keytok_jax.pipeline import Embedder
from keytok_jax.pipeline.tokenize_pool import TokenizePool, default_workers
from keytok_jax.records import FLAG_REPLACED, Doc
from keytok_jax.settings import SpeedSettings


def test_workers_give_the_threads_rows_in_order(tiny_folder):
    emb = Embedder.from_pretrained(str(tiny_folder), doc_tokens="literal", top_k=16, max_length=32)
    texts = [f"protein {i} " + "cell risk " * (i % 23) for i in range(61)] + ["", "  "]
    docs = [Doc(f"d{i}", t, FLAG_REPLACED if i % 5 == 0 else 0, f"c:{i + 1}") for i, t in enumerate(texts)]
    with TokenizePool(emb.doc_tokenizer, 0) as thread, TokenizePool(emb.doc_tokenizer, 2) as procs:
        a, b = thread.submit(docs).result(), procs.submit(docs).result()
    assert len(a) == len(b) == len(docs)
    for x, y, d in zip(a, b, docs):
        np.testing.assert_array_equal(x.ids, y.ids)
        np.testing.assert_array_equal(x.literal, y.literal)
        assert x.flags == y.flags and x.pool_start == y.pool_start
        assert x.flags & FLAG_REPLACED == d.flags & FLAG_REPLACED
    assert a[-1].flags & 2 and a[0].flags & 1 == 0   # empty text flagged; reader flags kept


def test_worker_count_setting():
    assert 0 <= default_workers() <= 8
    with pytest.raises(SettingsError, match="tokenize_workers"):
        SpeedSettings(tokenize_workers=-1)
