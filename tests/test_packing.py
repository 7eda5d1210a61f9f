"""Texts packed into one row (attention_mask numbering them 1, 2, ...): the model sees each
text alone (positions from 0, attention inside the text), so its hidden states at every layer
equal those of the text in a row of its own, for every family's tiny config, both attentions and
both kernels. (The corpus plan does not pack: on SciFact's lengths rows of 512 packed texts padded
8.8% against the buckets' 7.6%; see README, Performance.)"""
import numpy as np
import pytest

from parity import random_texts  # skips the module without torch
from test_attention_impl import CASES, family_model

from keytok_jax.models import layers

TOL = 1e-5


def packed_rows(texts, layout, width):
    """``layout``: per row, the texts it holds in order → ids, segments [rows, width], and
    each text's (row, start)."""
    ids = np.zeros((len(layout), width), np.int32)
    seg = np.zeros_like(ids)
    where = {}
    for r, row in enumerate(layout):
        start = 0
        for n, t in enumerate(row, 1):
            ids[r, start:start + len(texts[t])], seg[r, start:start + len(texts[t])] = texts[t], n
            where[t] = (r, start)
            start += len(texts[t])
    return ids, seg, where


def test_positions_restart_at_every_text():
    seg = np.array([[1, 1, 2, 2, 2, 3, 0, 0], [0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0, 0]])
    pos = np.asarray(layers.positions_from_mask(seg))
    np.testing.assert_array_equal(pos, [[0, 1, 0, 1, 2, 0, 0, 0], [0, 0, 0, 1, 2, 3, 4, 5],
                                        [0, 1, 2, 2, 2, 2, 2, 2]])   # plain masks: as before
    mask = np.asarray(layers.attention_mask(pos, layers.text_mask(seg), True, 0))[:, 0]
    assert mask[0, 3].tolist() == [False, False, True, True, False, False, False, False]
    assert mask[0, 5].tolist() == [False] * 5 + [True, False, False]


@pytest.mark.parametrize("impl", layers.ATTENTION_IMPLS)
@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
@pytest.mark.parametrize("name", list(CASES))
def test_packed_texts_equal_texts_alone(name, attention, impl):
    model = family_model(name)
    texts = random_texts(model.config.vocab_size, (5, 11, 16, 3, 7), seed=1)
    alone_ids, alone_seg, alone_at = packed_rows(texts, [[t] for t in range(5)], 16)
    ids, seg, at = packed_rows(texts, [[1, 0], [3, 2], [4]], 19)
    alone, alone_layers = (np.asarray(a) for a in model.hidden_states(
        alone_ids, alone_seg, attention, all_layers=True, impl=impl))
    packed, packed_layers = (np.asarray(a) for a in model.hidden_states(
        ids, seg, attention, all_layers=True, impl=impl))
    worst = 0.0
    for t, text in enumerate(texts):
        (ra, sa), (rp, sp) = alone_at[t], at[t]
        a, p = alone_layers[:, ra, sa:sa + len(text)], packed_layers[:, rp, sp:sp + len(text)]
        worst = max(worst, float(np.abs(a - p).max()),
                    float(np.abs(alone[ra, sa:sa + len(text)] - packed[rp, sp:sp + len(text)]).max()))
    assert worst <= TOL, worst
