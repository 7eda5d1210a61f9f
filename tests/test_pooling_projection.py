"""keytok_jax.pooling and keytok_jax.projection against straightforward numpy references."""
import jax
from jax.extend.core import jaxprs_in_params
import jax.numpy as jnp
import numpy as np
import pytest

from keytok_jax.pooling import POOLING_METHODS, l2_normalize, matryoshka, pool
from keytok_jax.projection import shift, topk_projection

# ------------------------------------------------------------------------------------- pooling

T, D = 9, 6
LENGTHS = [5, 2, 9, 1]          # one full-length row, one single-token row


def _ref_pool(seq, method):
    """seq: [n, D] the counted vectors of one text, in order."""
    seq = np.asarray(seq, np.float64)
    n = len(seq)
    if n == 0:
        return np.zeros(seq.shape[1])
    if method == "last":
        return seq[-1]
    if method == "mean":
        return seq.mean(0)
    w = np.arange(1, n + 1, dtype=np.float64)
    return (w[:, None] * seq).sum(0) / w.sum()


def _batch(texts, side, skip=None):
    """Pad ``texts`` (list of [L, D]) to T on ``side`` with NaN garbage; the pooling mask is the
    attention mask with the first ``skip[i]`` real tokens excluded (instruction tokens)."""
    B = len(texts)
    hidden = np.full((B, T, D), np.nan, np.float32)
    mask = np.zeros((B, T), np.int32)
    for b, x in enumerate(texts):
        L = len(x)
        s = 0 if side == "right" else T - L
        hidden[b, s:s + L] = x
        mask[b, s + (skip[b] if skip else 0):s + L] = 1
    return hidden, mask


@pytest.fixture(scope="module")
def texts():
    rng = np.random.default_rng(0)
    return [rng.normal(size=(L, D)).astype(np.float32) for L in LENGTHS]


@pytest.mark.parametrize("method", POOLING_METHODS)
def test_pool_matches_numpy_both_sides_and_instruction_mask(texts, method):
    skip = [2, 1, 4, 0]          # text 1 keeps one token; all counted tokens come after the skip
    for side in ("right", "left"):
        for sk in (None, skip):
            hidden, mask = _batch(texts, side, sk)
            out = pool(hidden, mask, method)
            assert out.dtype == jnp.float32 and out.shape == (len(texts), D)
            ref = np.stack([_ref_pool(x[(sk[b] if sk else 0):], method) for b, x in enumerate(texts)])
            np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-6, atol=1e-6,
                                       err_msg=f"{method} {side} skip={sk}")


@pytest.mark.parametrize("method", POOLING_METHODS)
def test_pool_row_independent_of_batch_and_padding(texts, method):
    hidden_r, mask_r = _batch(texts, "right")
    hidden_l, mask_l = _batch(texts, "left")
    right = np.asarray(pool(hidden_r, mask_r, method))
    left = np.asarray(pool(hidden_l, mask_l, method))
    for b, x in enumerate(texts[:2]):   # two alone-shapes keep compilations few
        alone = np.asarray(pool(x[None], np.ones((1, len(x)), np.int32), method))[0]
        np.testing.assert_allclose(right[b], alone, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(left[b], alone, rtol=1e-6, atol=1e-7)
    if method == "last":                 # a gather: bit-identical
        np.testing.assert_array_equal(left, right)


def test_pool_empty_rows_bf16_and_errors(texts):
    hidden, mask = _batch(texts, "left")
    mask[1] = 0
    for method in POOLING_METHODS:
        out = np.asarray(pool(hidden, mask, method))
        assert np.isfinite(out).all() and (out[1] == 0).all()
    # bfloat16 hidden: float32 result equal to pooling the bf16 values in float32
    hb = jnp.asarray(hidden, jnp.bfloat16)
    out = pool(hb, mask, "weighted_mean")
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), np.asarray(pool(np.asarray(hb, np.float32), mask,
                                                                "weighted_mean")), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="pooling method"):
        pool(hidden, mask, "max")
    with pytest.raises(ValueError, match=r"\[B, T, D\]"):
        pool(hidden, mask[:, :-1], "mean")


def test_l2_normalize_and_matryoshka():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 8)).astype(np.float32)
    x[2] = 0
    y = np.asarray(l2_normalize(x))
    np.testing.assert_allclose(y[:2], x[:2] / np.linalg.norm(x[:2], axis=1, keepdims=True), rtol=1e-6)
    assert (y[2] == 0).all()
    m = np.asarray(matryoshka(x, 3))
    np.testing.assert_allclose(m[:2], x[:2, :3] / np.linalg.norm(x[:2, :3], axis=1, keepdims=True),
                               rtol=1e-6)
    assert (m[2] == 0).all()
    np.testing.assert_array_equal(np.asarray(matryoshka(x, 3, normalize=False)), x[:, :3])
    np.testing.assert_allclose(np.asarray(jax.jit(matryoshka, static_argnums=(1,))(x, 5)),
                               np.asarray(matryoshka(x, 5)), rtol=1e-6)
    for bad in (0, 9):
        with pytest.raises(ValueError, match="matryoshka dim"):
            matryoshka(x, bad)


# ---------------------------------------------------------------------------------- projection

V, DP = 37, 8                    # V prime: no chunk size below divides it


@pytest.fixture(scope="module")
def int_data():
    # Small integers: logits are exact in float32 (no rounding ambiguity vs numpy) and tie a lot.
    rng = np.random.default_rng(2)
    pooled = rng.integers(-2, 3, size=(3, DP)).astype(np.float32)
    lm_head = rng.integers(-2, 3, size=(V, DP)).astype(np.float32)
    return pooled, lm_head


def _ref_topk(pooled, lm_head, k):
    logits = pooled.astype(np.float64) @ lm_head.astype(np.float64).T
    ids = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(logits, ids, axis=1)


@pytest.mark.parametrize("k,chunk", [(5, 1), (5, 4), (5, 8), (10, 4), (5, V), (5, 64), (V, 8)])
def test_topk_matches_stable_argsort(int_data, k, chunk):
    pooled, lm_head = int_data
    ids, w = topk_projection(pooled, lm_head, k, chunk=chunk)
    assert ids.dtype == jnp.int32 and w.dtype == jnp.float32 and ids.shape == w.shape == (3, k)
    ref_ids, ref_vals = _ref_topk(pooled, lm_head, k)
    np.testing.assert_array_equal(np.asarray(ids), ref_ids)
    np.testing.assert_array_equal(np.asarray(w), ref_vals)


def test_topk_ties_from_duplicated_rows_lower_id_first():
    rng = np.random.default_rng(3)
    lm_head = rng.normal(size=(V, DP)).astype(np.float32)
    lm_head[10] *= 10.0
    dup = [3, 17, 30, 36]         # 30 lies in the overlap of the last chunk for chunk=8 (29..31)
    lm_head[dup] = lm_head[10]
    pooled = np.stack([lm_head[10], -lm_head[10]])
    expect_top = [3, 10, 17, 30, 36]
    for chunk in (4, 8, V):
        ids, w = topk_projection(pooled, lm_head, 7, chunk=chunk)
        ids, w = np.asarray(ids), np.asarray(w)
        np.testing.assert_array_equal(ids[0, :5], expect_top)
        assert (w[0, :5] == w[0, 0]).all() and w[0, 5] < w[0, 0]
        assert not np.isin(ids[1, :7], expect_top).any()
        assert all(len(set(r)) == len(r) for r in ids)       # no id returned twice


def test_topk_weightings_float_data():
    rng = np.random.default_rng(4)
    pooled = rng.normal(size=(2, DP)).astype(np.float32)
    lm_head = rng.normal(size=(V, DP)).astype(np.float32)
    ref_ids, ref_vals = _ref_topk(pooled, lm_head, 30)   # k large enough to include negative logits
    assert (ref_vals < 0).any()
    for weighting, f in [("logit", lambda z: z), ("relu", lambda z: np.maximum(z, 0)),
                         ("log1p_relu", lambda z: np.log1p(np.maximum(z, 0)))]:
        ids, w = topk_projection(pooled, lm_head, 30, chunk=8, weighting=weighting)
        np.testing.assert_array_equal(np.asarray(ids), ref_ids)
        np.testing.assert_allclose(np.asarray(w), f(ref_vals), rtol=1e-5, atol=1e-5)


def test_topk_bf16_jit_composition_shift_and_errors(int_data):
    pooled, lm_head = int_data
    # bf16 inputs (small ints are exact in bf16): same result, float32 weights
    ids, w = topk_projection(jnp.asarray(pooled, jnp.bfloat16), jnp.asarray(lm_head, jnp.bfloat16), 5,
                             chunk=8)
    ref_ids, ref_vals = _ref_topk(pooled, lm_head, 5)
    np.testing.assert_array_equal(np.asarray(ids), ref_ids)
    assert w.dtype == jnp.float32
    # shift, then project, inside one outer jit
    direction = np.arange(DP, dtype=np.float32) - 3
    f = jax.jit(lambda p, W, lam: topk_projection(shift(p, direction, lam), W, 5, chunk=8))
    ids, w = f(pooled, lm_head, 2.0)
    ref_ids, ref_vals = _ref_topk(pooled + 2.0 * direction, lm_head, 5)
    np.testing.assert_array_equal(np.asarray(ids), ref_ids)
    np.testing.assert_array_equal(np.asarray(w), ref_vals)
    np.testing.assert_array_equal(np.asarray(shift(pooled, direction, -0.5)), pooled - 0.5 * direction)
    with pytest.raises(ValueError, match=r"k must be an int in \[1, V=37\]"):
        topk_projection(pooled, lm_head, V + 1)
    with pytest.raises(ValueError, match="k must be"):
        topk_projection(pooled, lm_head, 0)
    with pytest.raises(ValueError, match="weighting"):
        topk_projection(pooled, lm_head, 3, weighting="softmax")
    with pytest.raises(ValueError, match="chunk"):
        topk_projection(pooled, lm_head, 3, chunk=0)
    with pytest.raises(ValueError, match=r"\[V, D\]"):
        topk_projection(pooled, lm_head[:, :-1], 3)


def test_topk_never_materialises_batch_by_vocab():
    B, Dm, Vm, chunk, k = 8, 16, 4096, 256, 32
    args = (jax.ShapeDtypeStruct((B, Dm), jnp.float32), jax.ShapeDtypeStruct((Vm, Dm), jnp.float32))
    fn = lambda p, W: topk_projection(p, W, k, chunk=chunk)
    jaxpr = jax.make_jaxpr(fn)(*args)
    shapes = set()

    def walk(jx):
        for eqn in jx.eqns:
            shapes.update(tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape"))
            for sub in jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jaxpr.jaxpr)
    assert not any(Vm in s and B in s for s in shapes), shapes
    assert (B, chunk) in shapes
    mem = jax.jit(fn).lower(*args).compile().memory_analysis()
    if mem is not None:
        assert mem.temp_size_in_bytes < B * Vm * 4, mem.temp_size_in_bytes
