"""refgen.functional.nn against plain NumPy formulas, plus gradient and double-backward checks."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import refgen
import refgen.functional as F
from refgen import Tensor
from refgen.backend import default_rng
from refgen.testing import check_grads

seeds = st.integers(0, 2**32 - 1)


pytestmark = pytest.mark.usefixtures("numpy_backend")  # NumPy in float64, as the references


def _np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# --- softmax / log_softmax ---------------------------------------------------------------

@given(seed=seeds, shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), data=st.data())
def test_softmax_and_log_softmax_match_numpy_and_gradcheck(seed, shape, data):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = np.random.default_rng(seed).standard_normal(shape) * 3
    y = F.softmax(Tensor(x), dim).data
    np.testing.assert_allclose(y, _np_softmax(x, dim), rtol=1e-12)
    np.testing.assert_allclose(y.sum(axis=dim), 1.0, rtol=1e-12)
    ref = x - np.log(np.exp(x).sum(axis=dim, keepdims=True))
    np.testing.assert_allclose(F.log_softmax(Tensor(x), dim).data, ref, rtol=1e-12, atol=1e-12)
    check_grads(lambda t: F.softmax(t, dim), [x])
    check_grads(lambda t: F.log_softmax(t, dim), [x])


def test_softmax_keeps_float32():
    x = Tensor(np.ones((2, 3), np.float32), requires_grad=True)
    y = F.softmax(x, -1)
    (g,) = refgen.grad(y, [x], Tensor(np.ones((2, 3), np.float32)))
    assert y.dtype == np.float32 and g.dtype == np.float32


# --- linear ------------------------------------------------------------------------------

@given(seed=seeds, lead=st.lists(st.integers(1, 3), min_size=0, max_size=2),
       n_in=st.integers(1, 4), n_out=st.integers(1, 4), use_bias=st.booleans())
def test_linear(seed, lead, n_in, n_out, use_bias):
    r = np.random.default_rng(seed)
    x = r.standard_normal(tuple(lead) + (n_in,))
    w, b = r.standard_normal((n_out, n_in)), r.standard_normal(n_out)
    y = F.linear(Tensor(x), Tensor(w), Tensor(b) if use_bias else None)
    assert y.shape == tuple(lead) + (n_out,)
    np.testing.assert_allclose(y.data, x @ w.T + (b if use_bias else 0), rtol=1e-12, atol=1e-12)
    if use_bias:
        check_grads(lambda x, w, b: F.linear(x, w, b), [x, w, b])
    else:
        check_grads(lambda x, w: F.linear(x, w), [x, w])


def test_linear_is_one_node_with_its_bias_and_other_biases_broadcast():
    """x W^T + b is one node fed by x, W and b; a bias of another shape, or one that promotes
    the dtype, is added after the product, with the values and dtype of the plain sum."""
    r = np.random.default_rng(4)
    x, w, b = r.standard_normal((5, 3)), r.standard_normal((2, 3)), r.standard_normal(2)
    ts = [Tensor(a, requires_grad=True) for a in (x, w, b)]
    y = F.linear(*ts)
    assert y._fn.inputs == tuple(ts)
    b2 = r.standard_normal((5, 1))                                      # per row, not per output
    np.testing.assert_allclose(F.linear(Tensor(x), Tensor(w), Tensor(b2)).data, x @ w.T + b2,
                               rtol=1e-12, atol=1e-12)
    check_grads(lambda x, w, b: F.linear(x, w, b), [x, w, b2])
    y32 = F.linear(Tensor(x.astype(np.float32)), Tensor(w.astype(np.float32)), Tensor(b))
    assert y32.dtype == (x.astype(np.float32) @ w.astype(np.float32).T + b).dtype == np.float64
    check_grads(lambda x: F.linear(x, Tensor(w), Tensor(b)), [x[0]])       # a single row (in,)


# --- normalisation -----------------------------------------------------------------------

@given(seed=seeds, lead=st.lists(st.integers(1, 3), min_size=1, max_size=2),
       norm=st.lists(st.integers(1, 4), min_size=1, max_size=2), affine=st.booleans())
def test_layer_norm(seed, lead, norm, affine):
    r = np.random.default_rng(seed)
    x = r.standard_normal(tuple(lead) + tuple(norm)) * 2 + 1
    w, b = r.standard_normal(norm), r.standard_normal(norm)
    axes = tuple(range(len(lead), x.ndim))
    ref = (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True) + 1e-5)
    if affine:
        ref = ref * w + b
        y = F.layer_norm(Tensor(x), norm, Tensor(w), Tensor(b))
        check_grads(lambda x, w, b: F.layer_norm(x, tuple(norm), w, b), [x, w, b])
    else:
        y = F.layer_norm(Tensor(x), norm)
        check_grads(lambda x: F.layer_norm(x, tuple(norm)), [x])
    np.testing.assert_allclose(y.data, ref, rtol=1e-10, atol=1e-10)


@given(seed=seeds, n=st.integers(1, 2), groups=st.integers(1, 3), per=st.integers(1, 2),
       spatial=st.lists(st.integers(1, 3), min_size=0, max_size=2))
def test_group_norm(seed, n, groups, per, spatial):
    r = np.random.default_rng(seed)
    c = groups * per
    x = r.standard_normal((n, c) + tuple(spatial)) * 2 - 1
    w, b = r.standard_normal(c), r.standard_normal(c)
    xg = x.reshape(n, groups, -1)
    ref = ((xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + 1e-5))
    ref = ref.reshape(x.shape) * w.reshape((1, c) + (1,) * len(spatial)) \
        + b.reshape((1, c) + (1,) * len(spatial))
    y = F.group_norm(Tensor(x), groups, Tensor(w), Tensor(b))
    np.testing.assert_allclose(y.data, ref, rtol=1e-10, atol=1e-10)
    check_grads(lambda x, w, b: F.group_norm(x, groups, w, b), [x, w, b])


def test_norm_shape_errors():
    with pytest.raises(ValueError, match="normalized_shape"):
        F.layer_norm(Tensor(np.zeros((2, 3))), 4)
    with pytest.raises(ValueError, match="groups"):
        F.group_norm(Tensor(np.zeros((2, 3, 4))), 2)


# --- dropout -----------------------------------------------------------------------------

def test_dropout_statistics_and_identities():
    x = Tensor(np.ones((200, 500), np.float32), requires_grad=True)
    p = 0.3
    y = F.dropout(x, p, rng=default_rng(0))
    assert y.dtype == np.float32
    kept = y.data != 0
    # each entry kept with prob 1 - p, independently: 4 standard errors
    assert abs(kept.mean() - (1 - p)) < 4 * math.sqrt(p * (1 - p) / x.size)
    np.testing.assert_allclose(y.data[kept], 1 / (1 - p), rtol=1e-6)
    assert abs(y.data.mean() - 1.0) < 4 * math.sqrt(p / (1 - p) / x.size)  # mean preserved
    (g,) = refgen.grad(F.sum(y), [x])
    np.testing.assert_array_equal(g.data, y.data)  # the gradient is the same scaled mask
    assert F.dropout(x, p, training=False) is x
    assert F.dropout(x, 0.0) is x
    np.testing.assert_array_equal(F.dropout(x, 1.0).data, 0)
    with pytest.raises(ValueError):
        F.dropout(x, 1.5)


def test_dropout_generators_are_reproducible():
    x = Tensor(np.ones((4, 50)))
    a = F.dropout(x, 0.5, rng=default_rng(7)).data
    np.testing.assert_array_equal(a, F.dropout(x, 0.5, rng=default_rng(7)).data)
    F.manual_seed(3)
    b = F.dropout(x, 0.5).data
    F.manual_seed(3)
    np.testing.assert_array_equal(b, F.dropout(x, 0.5).data)


# --- embedding / one_hot -----------------------------------------------------------------

def test_embedding_rows_and_scatter_add_gradient():
    r = np.random.default_rng(0)
    w = r.standard_normal((5, 3))
    idx = np.array([[0, 4, 4], [2, 0, 4]])
    y = F.embedding(idx, Tensor(w))
    np.testing.assert_array_equal(y.data, w[idx])
    wt = Tensor(w, requires_grad=True)
    g = r.standard_normal((2, 3, 3))
    (gw,) = refgen.grad(F.embedding(Tensor(idx), wt), [wt], Tensor(g))
    expected = np.zeros_like(w)
    np.add.at(expected, idx, g)  # repeated rows accumulate
    np.testing.assert_allclose(gw.data, expected, rtol=1e-12)
    check_grads(lambda w: F.embedding(idx, w), [w])
    with pytest.raises(TypeError):
        F.embedding(np.array([0.0, 1.0]), Tensor(w))


def test_one_hot():
    y = F.one_hot(np.array([[0, 2], [1, 1]]), 3)
    assert y.dtype == np.float32 and not y.requires_grad
    np.testing.assert_array_equal(y.data, np.eye(3)[[[0, 2], [1, 1]]])
    assert F.one_hot(np.array([3, 1])).shape == (2, 4)
    assert F.one_hot(np.array([1]), 2, dtype=np.float64).dtype == np.float64
    with pytest.raises(ValueError):
        F.one_hot(np.array([0, 3]), 3)


# --- gumbel-softmax / straight-through --------------------------------------------------

def test_gumbel_softmax_soft_and_hard():
    logits = Tensor(np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32))
    soft = F.gumbel_softmax(logits, tau=0.5, rng=default_rng(1))
    assert soft.dtype == np.float32
    assert np.all(soft.data >= 0)
    np.testing.assert_allclose(soft.data.sum(-1), 1.0, rtol=1e-6)
    hard = F.gumbel_softmax(logits, tau=0.5, hard=True, rng=default_rng(1))
    assert set(np.unique(hard.data)) <= {0.0, 1.0}
    np.testing.assert_array_equal(hard.data.sum(-1), 1.0)
    np.testing.assert_array_equal(hard.data.argmax(-1), soft.data.argmax(-1))  # same noise
    # dim other than the last
    hard0 = F.gumbel_softmax(logits, hard=True, dim=0, rng=default_rng(2))
    np.testing.assert_array_equal(hard0.data.sum(0), 1.0)


def test_gumbel_softmax_hard_gradient_is_the_soft_one():
    x = np.random.default_rng(0).standard_normal((3, 4))
    w = Tensor(np.random.default_rng(1).standard_normal((3, 4)))
    grads = []
    for hard in (False, True):
        t = Tensor(x, requires_grad=True)
        y = F.gumbel_softmax(t, tau=0.7, hard=hard, rng=default_rng(5))
        grads.append(refgen.grad(F.sum(y * w), [t])[0].data)
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-12)


def test_gumbel_max_frequencies_match_softmax():
    # argmax of logits + Gumbel noise is a draw from softmax(logits), whatever tau
    p = np.array([0.5, 0.25, 0.15, 0.1])
    n = 20000
    logits = Tensor(np.broadcast_to(np.log(p), (n, 4)).copy())
    y = F.gumbel_softmax(logits, tau=2.0, hard=True, rng=default_rng(0))
    freq = y.data.mean(0)
    assert np.all(np.abs(freq - p) < 4 * np.sqrt(p * (1 - p) / n)), freq


def test_straight_through():
    z_e = Tensor(np.array([0.3, -1.2, 2.0]), requires_grad=True)
    z_q = np.array([0.0, -1.0, 2.5])
    y = F.straight_through(z_q, z_e)
    np.testing.assert_array_equal(y.data, z_q)  # exact, no add/subtract rounding
    g = np.array([1.0, 2.0, -3.0])
    (gz,) = refgen.grad(y, [z_e], Tensor(g))
    np.testing.assert_array_equal(gz.data, g)
    # the same gradient as the VQ-VAE idiom z_e + (z_q - z_e).detach()
    (gz2,) = refgen.grad(z_e + (Tensor(z_q) - z_e).detach(), [z_e], Tensor(g))
    np.testing.assert_array_equal(gz.data, gz2.data)
    # with forward value = backward value it is the identity, so the oracle applies
    check_grads(lambda b: F.straight_through(b.data, b) * b, [z_e.data])
    with pytest.raises(ValueError):
        F.straight_through(np.zeros(2), z_e)


# --- attention ---------------------------------------------------------------------------

def _loop_attention(q, k, v, mask=None, causal=False, scale=None):
    """Direct loop over batch entries and queries: the definition, one row at a time."""
    *batch, L, E = q.shape
    S = k.shape[-2]
    scale = 1 / math.sqrt(E) if scale is None else scale
    if mask is not None:
        mask = np.broadcast_to(mask, tuple(batch) + (L, S))
    out = np.zeros(tuple(batch) + (L, v.shape[-1]))
    for b in np.ndindex(*batch):
        for i in range(L):
            s = np.array([q[b][i] @ k[b][j] for j in range(S)]) * scale
            allowed = np.ones(S, bool)
            if causal:
                allowed &= np.arange(S) <= i  # top-left aligned
            if mask is not None and mask.dtype == bool:
                allowed &= mask[b][i]
            elif mask is not None:
                s = s + mask[b][i]
            if not allowed.any():
                continue  # nothing to attend to: zeros
            w = np.exp(s[allowed] - s[allowed].max())
            out[b][i] = (w / w.sum()) @ v[b][allowed]
    return out


def _qkv(seed, batch, L, S, E, Ev):
    r = np.random.default_rng(seed)
    return (r.standard_normal(batch + (L, E)), r.standard_normal(batch + (S, E)),
            r.standard_normal(batch + (S, Ev)), r)


@pytest.mark.parametrize("L,S", [(3, 3), (2, 4), (4, 2)])
@pytest.mark.parametrize("kind", ["none", "bool", "float", "causal", "causal+bool"])
def test_attention_matches_loop(L, S, kind):
    q, k, v, r = _qkv(L * 10 + S, (2, 3), L, S, 4, 5)
    mask = None
    if "bool" in kind:
        mask = r.random((3, L, S)) < 0.7
        mask[0, 0, :] = False  # one query with nothing to attend to
    elif kind == "float":
        mask = r.standard_normal((L, S))
    causal = kind.startswith("causal")
    y = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), attn_mask=mask,
                                       is_causal=causal)
    assert y.shape == (2, 3, L, 5)
    np.testing.assert_allclose(y.data, _loop_attention(q, k, v, mask, causal), rtol=1e-12, atol=1e-12)
    assert np.all(np.isfinite(y.data))


def test_attention_scale_and_unbatched():
    q, k, v, _ = _qkv(0, (), 3, 4, 2, 2)
    y = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), scale=0.3)
    np.testing.assert_allclose(y.data, _loop_attention(q, k, v, scale=0.3), rtol=1e-12)


@given(seed=seeds, batch=st.lists(st.integers(1, 2), min_size=0, max_size=2),
       L=st.integers(1, 3), S=st.integers(1, 3), E=st.integers(1, 3),
       kind=st.sampled_from(["none", "bool", "float", "causal"]))
def test_attention_gradcheck(seed, batch, L, S, E, kind):
    q, k, v, r = _qkv(seed, tuple(batch), L, S, E, 2)
    if kind == "float":
        m = r.standard_normal((L, S))
        check_grads(lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
                    [q, k, v, m])
        return
    mask = r.random((L, S)) < 0.6 if kind == "bool" else None
    check_grads(lambda q, k, v: F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=kind == "causal"), [q, k, v])


def test_attention_fully_masked_query_has_zero_output_and_gradient():
    q, k, v, _ = _qkv(1, (1,), 2, 3, 2, 2)
    mask = np.array([[False] * 3, [True, False, True]])
    ts = [Tensor(a, requires_grad=True) for a in (q, k, v)]
    y = F.scaled_dot_product_attention(*ts, attn_mask=mask)
    np.testing.assert_array_equal(y.data[0, 0], 0.0)
    gs = refgen.grad(F.sum(y * y), ts)
    assert all(np.all(np.isfinite(g.data)) for g in gs)


def test_attention_dropout_uses_the_generator():
    q, k, v, _ = _qkv(2, (2,), 4, 4, 3, 3)
    a = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), dropout_p=0.5,
                                       rng=default_rng(4)).data
    b = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), dropout_p=0.5,
                                       rng=default_rng(4)).data
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, _loop_attention(q, k, v))


@settings(max_examples=10)
@given(seed=seeds)
def test_layer_norm_float32_backward_matches_float64(seed):
    # the first-order path uses the cached 1/std: check it against the float64 composite
    x = np.random.default_rng(seed).standard_normal((3, 8))
    g = np.random.default_rng(seed + 1).standard_normal((3, 8))
    out = []
    for dt in (np.float32, np.float64):
        t = Tensor(x.astype(dt), requires_grad=True)
        out.append(refgen.grad(F.layer_norm(t, 8), [t], Tensor(g.astype(dt)))[0].data)
    assert out[0].dtype == np.float32
    np.testing.assert_allclose(out[0], out[1], rtol=1e-4, atol=1e-5)
