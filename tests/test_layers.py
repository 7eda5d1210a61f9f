"""Shared layers: blocked attention equals the one-shot computation on long, padded sequences."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from keytok_jax.models import layers


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("side", ["left", "right"])
def test_blocked_attention_equals_unblocked(causal, side):
    b, t, h, kv, hd = 3, 300, 4, 2, 8
    rng = jax.random.split(jax.random.PRNGKey(0), 3)
    q = jax.random.normal(rng[0], (b, t, h, hd))
    k = jax.random.normal(rng[1], (b, t, kv, hd))
    v = jax.random.normal(rng[2], (b, t, kv, hd))
    lengths = np.array([300, 170, 41])
    idx = np.arange(t)[None]
    valid = idx < lengths[:, None] if side == "right" else idx >= t - lengths[:, None]
    pos = layers.positions_from_mask(jnp.asarray(valid))
    for window in (0, 37):
        mask = layers.attention_mask(pos, layers.text_mask(jnp.asarray(valid)), causal, window)
        full = layers.attend(q, k, v, mask, 0.3, None, causal=causal, block=t)   # one block
        blocked = layers.attend(q, k, v, mask, 0.3, None, causal=causal, block=64)
        real = valid.astype(bool)
        np.testing.assert_allclose(np.asarray(blocked)[real], np.asarray(full)[real], atol=1e-6)
