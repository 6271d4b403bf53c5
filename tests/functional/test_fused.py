"""The fused single-node ops (sigmoid, SiLU, GELU, affine layer/group norm, attention) against
the unfused compositions of refgen ops they replace: the same values and gradients, a
gradient and double-backward check in float64, and one graph node each."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import refgen
import refgen.functional as F
from refgen import Tensor
from refgen.functional import elementwise
from refgen.functional.elementwise import gelu_composite, silu_composite
from refgen.functional.nn import (CAUSAL_BLOCKS, group_norm_composite, layer_norm_composite,
                                  scaled_dot_product_attention_composite)
from refgen.testing import check_grads, on_backend, strategies as rs

pytestmark = pytest.mark.usefixtures("numpy_backend")

seeds = st.integers(0, 2**32 - 1)


def _values_and_grads(f, xs, gy_seed=0, create_graph=False):
    """f(*xs) and the gradient of <f, r> for a fixed random r, for every input."""
    ts = [Tensor(x.copy(), requires_grad=True) for x in xs]
    y = f(*ts)
    r = np.random.default_rng(gy_seed).standard_normal(y.shape).astype(y.dtype)
    gs = refgen.grad(y, ts, Tensor(r), create_graph=create_graph)
    return y, gs


def _assert_same(fused, composite, xs, rtol, atol):
    yf, gf = _values_and_grads(fused, xs)
    yc, gc = _values_and_grads(composite, xs)
    assert yf.dtype == yc.dtype == xs[0].dtype
    np.testing.assert_allclose(yf.data, yc.data, rtol=rtol, atol=atol)
    for a, b in zip(gf, gc):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(a.data, b.data, rtol=rtol, atol=atol)


# --- activations -------------------------------------------------------------------------

ACTIVATIONS = {
    "sigmoid": (F.sigmoid, lambda x: 1.0 / (1.0 + F.exp(-x))),
    "silu": (F.silu, silu_composite),
    "gelu": (F.gelu, gelu_composite),
    "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"),
                  lambda x: gelu_composite(x, approximate="tanh")),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@given(seed=seeds, shape=rs.shapes(max_dims=3, max_side=4))
def test_activation_matches_its_composition_and_gradchecks(name, seed, shape):
    fused, composite = ACTIVATIONS[name]
    x = np.random.default_rng(seed).standard_normal(shape) * 3
    _assert_same(fused, composite, [x], rtol=1e-12, atol=1e-14)
    check_grads(fused, [x], order=2)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_float32_and_one_node(name):
    fused, composite = ACTIVATIONS[name]
    x = np.linspace(-8, 8, 161, dtype=np.float32).reshape(7, 23)
    _assert_same(fused, composite, [x], rtol=2e-6, atol=2e-7)
    t = Tensor(x, requires_grad=True)
    y = fused(t)
    assert y._fn.inputs == (t,), "the fused activation is one node fed by x"


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_second_derivative_closed_form(name):
    """d^2/dx^2 of each activation, differentiated twice through the fused node."""
    x = np.array([-3.1, -0.7, 0.0, 0.4, 2.3])
    s = 1 / (1 + np.exp(-x))
    phi = np.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    c, a = math.sqrt(2 / math.pi), 0.044715
    u = c * (x + a * x ** 3)
    t, du = np.tanh(u), c * (1 + 3 * a * x * x)
    want = {"sigmoid": s * (1 - s) * (1 - 2 * s),
            "silu": s * (1 - s) * (2 + x * (1 - 2 * s)),
            "gelu": phi * (2 - x * x),
            "gelu_tanh": (1 - t * t) * du - x * t * (1 - t * t) * du * du + x * (1 - t * t) * 3 * a * c * x}
    fused, _ = ACTIVATIONS[name]
    xt = Tensor(x, requires_grad=True)
    (g,) = refgen.grad(F.sum(fused(xt)), [xt], create_graph=True)
    (h,) = refgen.grad(F.sum(g), [xt])
    np.testing.assert_allclose(h.data, want[name], rtol=1e-10, atol=1e-12)


def test_sigmoid_tails_keep_relative_precision():
    x = np.array([-1e4, -87.0, -50.0, -20.0, 20.0, 1e4], dtype=np.float32)
    y = F.sigmoid(Tensor(x)).data
    ref = np.exp(-np.abs(x.astype(np.float64))) / (1 + np.exp(-np.abs(x.astype(np.float64))))
    ref = np.where(x >= 0, 1 - ref, ref)
    np.testing.assert_allclose(y, ref, rtol=2e-6, atol=1e-37)
    assert y[1] > 0 and y.dtype == np.float32


# --- affine normalisation ----------------------------------------------------------------

@given(seed=seeds, lead=st.lists(st.integers(1, 3), min_size=1, max_size=2),
       ns=st.lists(st.integers(2, 4), min_size=1, max_size=2))
def test_layer_norm_fused_matches_composition_and_gradchecks(seed, lead, ns):
    r = np.random.default_rng(seed)
    x = r.standard_normal(tuple(lead) + tuple(ns)) * 2 + 0.5
    w, b = r.standard_normal(ns), r.standard_normal(ns)
    fused = lambda x, w, b: F.layer_norm(x, ns, w, b)  # noqa: E731
    _assert_same(fused, lambda x, w, b: layer_norm_composite(x, ns, w, b), [x, w, b],
                 rtol=1e-12, atol=1e-12)
    check_grads(fused, [x, w, b], order=2)


@given(seed=seeds, n=st.integers(1, 2), groups=st.integers(1, 3), per=st.integers(1, 2),
       hw=st.integers(1, 3))
def test_group_norm_fused_matches_composition_and_gradchecks(seed, n, groups, per, hw):
    r = np.random.default_rng(seed)
    c = groups * per
    if per * hw * hw < 2:
        hw = 2  # a group of one value has no spread to normalise
    x = r.standard_normal((n, c, hw, hw)) * 1.5 - 0.3
    w, b = r.standard_normal(c), r.standard_normal(c)
    fused = lambda x, w, b: F.group_norm(x, groups, w, b)  # noqa: E731
    _assert_same(fused, lambda x, w, b: group_norm_composite(x, groups, w, b), [x, w, b],
                 rtol=1e-12, atol=1e-12)
    check_grads(fused, [x, w, b], order=2)


@pytest.mark.parametrize("which", ["group", "layer"])
def test_norms_with_transposed_inputs_and_upstream_gradients(which):
    """Non-contiguous x and dL/dy (a transpose on either side), as inside a U-Net."""
    r = np.random.default_rng(11)
    x = r.standard_normal((2, 5, 4, 6)) * 2 + 1
    c = 6 if which == "group" else 4  # the channels / the normalised dim after the transpose
    w, b = r.standard_normal(c), r.standard_normal(c)
    norm, comp = {"group": (lambda x, w, b: F.group_norm(x, 2, w, b),
                            lambda x, w, b: group_norm_composite(x, 2, w, b)),
                  "layer": (lambda x, w, b: F.layer_norm(x, 4, w, b),
                            lambda x, w, b: layer_norm_composite(x, 4, w, b))}[which]

    def around(f):  # (2, 5, 4, 6) -> x^T (2, 6, 4, 5) or (2, 5, 6, 4) -> f -> transposed back
        axes = (1, 3) if which == "group" else (2, 3)
        return lambda x, w, b: F.transpose(f(F.transpose(x, *axes), w, b), *axes)
    _assert_same(around(norm), around(comp), [x, w, b], rtol=1e-12, atol=1e-12)
    check_grads(around(norm), [x, w, b], order=2)


def test_norms_float32_one_node_and_closed_form():
    r = np.random.default_rng(3)
    x = (r.standard_normal((4, 6, 5, 5)) * 3 + 1).astype(np.float32)
    w, b = r.standard_normal(6).astype(np.float32), r.standard_normal(6).astype(np.float32)
    y = F.group_norm(Tensor(x), 3, Tensor(w), Tensor(b))
    xg = x.astype(np.float64).reshape(4, 3, -1)
    xhat = ((xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + 1e-5)).reshape(x.shape)
    np.testing.assert_allclose(y.data, xhat * w[:, None, None] + b[:, None, None], rtol=1e-5, atol=1e-5)
    _assert_same(lambda x, w, b: F.group_norm(x, 3, w, b),
                 lambda x, w, b: group_norm_composite(x, 3, w, b), [x, w, b], rtol=1e-5, atol=1e-5)
    xt = Tensor(x, requires_grad=True)
    wt, bt = Tensor(w[:5], requires_grad=True), Tensor(b[:5], requires_grad=True)
    assert F.layer_norm(xt, 5, wt, bt)._fn.inputs == (xt, wt, bt), "one node fed by x, w, b"


@on_backend("numpy")  # NumPy's ufunc buffer; on a GPU long_rows does nothing
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_group_norm_unbuffered_long_rows_equal_buffered_bit_for_bit(monkeypatch, dtype):
    """At 12x12 planes (rows of 144 >= backend.LONG_ROW numbers) group norm's broadcast
    passes run without NumPy's ufunc buffering; value and gradients equal, bit for bit, those
    of the same passes with it (LONG_ROW raised past every row)."""
    from refgen import backend
    r = np.random.default_rng(21)
    x = (r.standard_normal((3, 4, 12, 12)) * 2 + 0.7).astype(dtype)
    w, b = r.standard_normal(4).astype(dtype), r.standard_normal(4).astype(dtype)
    g = r.standard_normal(x.shape).astype(dtype)

    def run():
        xt, wt, bt = (Tensor(a, requires_grad=True) for a in (x, w, b))
        y = F.group_norm(xt, 2, wt, bt)
        y.backward(Tensor(g))
        return y.data, xt.grad.data, wt.grad.data, bt.grad.data
    unbuffered = run()
    monkeypatch.setattr(backend, "LONG_ROW", 1 << 30)
    for u, v in zip(unbuffered, run()):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_group_norm_in_sample_chunks_equals_one_chunk(monkeypatch, dtype):
    """Group norm's forward and backward run over chunks of whole samples
    (nn.GN_CHUNK_BYTES): with 7 samples of 3 groups in chunks of 2 (the last one short), the
    value, the unrecorded value and all three gradients equal those of one chunk, and the
    closed form xhat w + b."""
    import refgen.functional.nn as nn_ops
    r = np.random.default_rng(22)
    x = (r.standard_normal((7, 6, 5, 3)) * 2 - 0.4).astype(dtype)
    w, b = r.standard_normal(6).astype(dtype), r.standard_normal(6).astype(dtype)

    def run():
        y, grads = _values_and_grads(lambda x, w, b: F.group_norm(x, 3, w, b), [x, w, b])
        with refgen.no_grad():
            plain = F.group_norm(Tensor(x), 3, Tensor(w), Tensor(b))
        np.testing.assert_array_equal(plain.data, y.data)
        return [y.data] + [g.data for g in grads]
    whole = run()
    sample_bytes = x[:1].nbytes
    monkeypatch.setattr(nn_ops, "GN_CHUNK_BYTES", 2 * sample_bytes)
    assert [s.stop - s.start for s in nn_ops._sample_chunks(7, sample_bytes)] == [2, 2, 2, 1]
    tol = 1e-6 if dtype == np.float32 else 1e-14
    for a, c in zip(run(), whole):
        np.testing.assert_allclose(a, c, rtol=tol, atol=tol)
    xg = x.astype(np.float64).reshape(21, -1)
    xhat = ((xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + 1e-5)).reshape(x.shape)
    np.testing.assert_allclose(whole[0], xhat * w[:, None, None] + b[:, None, None], rtol=10 * tol, atol=10 * tol)


@on_backend("numpy")
def test_group_norm_passes_run_unbuffered_at_28x28(monkeypatch):
    """Inside group norm's forward and backward at 28x28 planes, NumPy's ufunc buffer is
    shorter than a row (backend.long_rows), and it is restored afterwards."""
    import refgen.functional.nn as nn_ops
    seen, rowdot = [], nn_ops._rowdot
    monkeypatch.setattr(nn_ops, "_rowdot", lambda a, b: seen.append(np.getbufsize()) or rowdot(a, b))
    r = np.random.default_rng(4)
    x = Tensor(r.standard_normal((2, 4, 28, 28)).astype(np.float32), requires_grad=True)
    w, b = (Tensor(r.standard_normal(4).astype(np.float32), requires_grad=True) for _ in range(2))
    before = np.getbufsize()
    F.group_norm(x, 2, w, b).sum().backward()
    assert len(seen) == 2 and max(seen) < 784  # the forward's and the backward's row sums
    assert np.getbufsize() == before


CHUNKED = {"sigmoid": F.sigmoid, "silu": F.silu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
           "softplus": F.softplus, "tanh": F.tanh}


@pytest.mark.parametrize("name", list(CHUNKED))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_chunked_passes_equal_whole_array_passes(monkeypatch, name, dtype):
    """The fused activations run their passes chunk by chunk (elementwise.CHUNK_BYTES; tanh
    its backward): with 7 chunks, the last one short, and a transposed input, the value and
    the gradient equal those of one chunk bit for bit, and the composition's to rounding."""
    f = CHUNKED[name]
    x = np.random.default_rng(3).standard_normal((5, 3, 7)).astype(dtype).transpose(2, 0, 1) * 4
    whole = _values_and_grads(f, [x])
    monkeypatch.setattr(elementwise, "CHUNK_BYTES", 16 * np.dtype(dtype).itemsize)  # 105 = 6 x 16 + 9
    y, (g,) = _values_and_grads(f, [x])
    np.testing.assert_array_equal(y.data, whole[0].data)
    np.testing.assert_array_equal(g.data, whole[1][0].data)
    with refgen.no_grad():
        np.testing.assert_array_equal(f(Tensor(x)).data, y.data)          # the unrecorded form
    comp = {"sigmoid": ACTIVATIONS["sigmoid"][1], "silu": silu_composite,
            "gelu_tanh": lambda x: gelu_composite(x, approximate="tanh"),
            "softplus": lambda x: F.log(1.0 + F.exp(x)),
            "tanh": lambda x: 1.0 - 2.0 / (F.exp(2.0 * x) + 1.0)}[name]
    yc, (gc,) = _values_and_grads(comp, [x])
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(y.data, yc.data, rtol=tol, atol=tol)
    np.testing.assert_allclose(g.data, gc.data, rtol=10 * tol, atol=10 * tol)


# --- the Bernoulli log-likelihood -----------------------------------------------------------

def _bernoulli_composite(l, x):
    return x * l - F.softplus(l)


@given(seed=seeds, shape=rs.shapes(max_dims=3, max_side=4))
def test_bernoulli_log_prob_matches_its_composition_and_gradchecks(seed, shape):
    """x l - softplus(l) as one node: value and both gradients (soft targets x in [0, 1]
    take a gradient too) against the composition, then the float64 oracle to second order."""
    r = np.random.default_rng(seed)
    l, x = r.standard_normal(shape) * 4, r.random(shape)
    _assert_same(F.bernoulli_log_prob, _bernoulli_composite, [l, x], rtol=1e-12, atol=1e-13)
    check_grads(F.bernoulli_log_prob, [l, x], order=2)


def test_bernoulli_log_prob_closed_form_one_node_and_chunks(monkeypatch):
    """Against log sigmoid(l) and log(1 - sigmoid(l)) in float64 (l up to 1e4: finite, and
    full relative precision where log p is near 0), the logit gradient x - sigmoid(l) and the
    second derivative -sigmoid(l)(1 - sigmoid(l)); one
    node fed by l and x; in 7 chunks bit for bit what one chunk gives; broadcast x falls back
    to the composition with the same values."""
    l = np.array([-1e4, -30.0, -2.5, -0.3, 0.0, 0.7, 3.1, 30.0, 1e4])
    x = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.25, 0.0, 1.0, 0.0])
    s, sn = np.exp(-np.logaddexp(0, -l)), np.exp(-np.logaddexp(0, l))   # sigmoid(+-l), both tails
    log_s, log_1ms = -np.logaddexp(0, -l), -np.logaddexp(0, l)
    lt = Tensor(l, requires_grad=True)
    y = F.bernoulli_log_prob(lt, Tensor(x))
    assert y._fn.inputs[0] is lt and len(y._fn.inputs) == 2
    np.testing.assert_allclose(y.data, x * log_s + (1 - x) * log_1ms, rtol=1e-12, atol=1e-300)
    (g,) = refgen.grad(F.sum(y), [lt], create_graph=True)
    # x - s = x sn - (1 - x) s, exact here; refgen forms x - s and 1 - s, which round at 1e-16
    np.testing.assert_allclose(g.data, x * sn - (1 - x) * s, rtol=1e-12, atol=1e-15)
    (h,) = refgen.grad(F.sum(g), [lt])
    np.testing.assert_allclose(h.data, -s * sn, rtol=1e-10, atol=1e-15)

    r = np.random.default_rng(4)
    l32 = (r.standard_normal((5, 3, 7)) * 4).astype(np.float32).transpose(2, 0, 1)
    x32 = (r.random((7, 5, 3)) < 0.4).astype(np.float32)
    whole = _values_and_grads(F.bernoulli_log_prob, [l32, x32])
    monkeypatch.setattr(elementwise, "CHUNK_BYTES", 16 * 4)       # 105 = 6 x 16 + 9
    y, g = _values_and_grads(F.bernoulli_log_prob, [l32, x32])
    np.testing.assert_array_equal(y.data, whole[0].data)
    for a, b in zip(g, whole[1]):
        np.testing.assert_array_equal(a.data, b.data)
    lb = Tensor(np.stack([l32, -l32]), requires_grad=True)          # (2, 7, 5, 3) against (7, 5, 3)
    yb = F.bernoulli_log_prob(lb, Tensor(x32))
    np.testing.assert_allclose(yb.data[1], _bernoulli_composite(Tensor(-l32), Tensor(x32)).data,
                               rtol=1e-6, atol=1e-6)


def test_unrecorded_forwards_equal_the_recorded_ones_and_keep_nothing():
    """Outside a graph (no_grad, or no input requiring a gradient) SiLU and group norm take
    their in-place paths: the same values as a recorded call, bit for bit (guidance and
    sampling tests compare such paths exactly), the input untouched, no graph; a recorded
    call still differentiates."""
    r = np.random.default_rng(5)
    x = (r.standard_normal((3, 6, 4, 4)) * 4 - 1).astype(np.float32)
    w, b = r.standard_normal(6).astype(np.float32), r.standard_normal(6).astype(np.float32)
    x[0, 0, 0, :2] = [-100.0, 100.0]                      # e^-x overflows: the limit 0, and x
    for op in (lambda x, w, b: F.silu(x), lambda x, w, b: F.group_norm(x, 3, w, b)):
        xt, wt, bt = (Tensor(a, requires_grad=True) for a in (x, w, b))
        rec = op(xt, wt, bt)
        assert rec._fn is not None and rec._fn.recorded
        with refgen.no_grad():
            plain = op(xt, wt, bt)
        bare = op(Tensor(x.copy()), Tensor(w), Tensor(b))   # grad on, nothing requires one
        for y in (plain, bare):
            assert y._fn is None and y.data.dtype == np.float32
            np.testing.assert_array_equal(y.data, rec.data)
        np.testing.assert_array_equal(xt.data, x)
        rec.sum().backward()
        assert xt.grad is not None and np.isfinite(xt.grad.data).all()
    y = F.silu(Tensor(x[0, 0, 0, :2]))
    np.testing.assert_array_equal(y.data, [0.0, 100.0])
    with refgen.no_grad():
        fn = F.group_norm(Tensor(x, requires_grad=True), 3, Tensor(w), Tensor(b))
    assert fn._fn is None


# --- attention ---------------------------------------------------------------------------

def _qkv(seed, batch, L, S, E, Ev):
    r = np.random.default_rng(seed)
    return (r.standard_normal(batch + (L, E)), r.standard_normal(batch + (S, E)),
            r.standard_normal(batch + (S, Ev)), r)


@given(seed=seeds, batch=st.lists(st.integers(1, 2), min_size=0, max_size=2),
       L=st.integers(1, 4), S=st.integers(1, 4), E=st.integers(1, 3),
       kind=st.sampled_from(["none", "causal", "bool", "causal_bool", "float", "causal_float"]))
@settings(max_examples=40)
def test_attention_fused_matches_composition_and_gradchecks(seed, batch, L, S, E, kind):
    q, k, v, r = _qkv(seed, tuple(batch), L, S, E, 2)
    mask = None
    if "bool" in kind:
        mask = r.random((L, S)) < 0.7
    elif "float" in kind:
        mask = r.standard_normal((L, S))
    causal = kind.startswith("causal")
    fused = lambda q, k, v: F.scaled_dot_product_attention(  # noqa: E731
        q, k, v, attn_mask=mask, is_causal=causal, scale=0.7)
    comp = lambda q, k, v: scaled_dot_product_attention_composite(  # noqa: E731
        q, k, v, attn_mask=mask, is_causal=causal, scale=0.7)
    _assert_same(fused, comp, [q, k, v], rtol=1e-12, atol=1e-12)
    check_grads(fused, [q, k, v], order=2)


@given(seed=seeds, batch=st.lists(st.integers(1, 2), min_size=0, max_size=2),
       L=st.integers(2 * CAUSAL_BLOCKS, 3 * CAUSAL_BLOCKS + 3), S=st.integers(1, 16),
       E=st.integers(1, 3))
@settings(max_examples=15)
def test_causal_attention_in_query_blocks_matches_composition_and_gradchecks(seed, batch, L, S, E):
    """Under a causal mask alone the fused node works in CAUSAL_BLOCKS query blocks, each
    reading only the keys up to its last row (S < L, S = L and S > L: top-left aligned)."""
    q, k, v, _ = _qkv(seed, tuple(batch), L, S, E, 2)
    fused = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.7)  # noqa: E731
    comp = lambda q, k, v: scaled_dot_product_attention_composite(  # noqa: E731
        q, k, v, is_causal=True, scale=0.7)
    node = fused(*[Tensor(a, requires_grad=True) for a in (q, k, v)])._fn
    assert len(node.blocks) == CAUSAL_BLOCKS
    assert [kb for _, _, kb in node.blocks] == [min(b, S) for _, b, _ in node.blocks]
    _assert_same(fused, comp, [q, k, v], rtol=1e-12, atol=1e-12)
    check_grads(fused, [q, k, v], order=2)


def test_attention_broadcast_keys_and_float32():
    """Keys and values shared across a batch dim (broadcast) get their summed gradient."""
    r = np.random.default_rng(5)
    q = r.standard_normal((3, 2, 6, 4)).astype(np.float32)
    k = r.standard_normal((2, 7, 4)).astype(np.float32)
    v = r.standard_normal((1, 2, 7, 3)).astype(np.float32)
    mask = r.random((3, 1, 1, 7)) < 0.8  # a key-padding mask
    fused = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True)  # noqa: E731
    comp = lambda q, k, v: scaled_dot_product_attention_composite(q, k, v, attn_mask=mask, is_causal=True)  # noqa: E731
    _assert_same(fused, comp, [q, k, v], rtol=1e-5, atol=1e-6)
    small = mask[:1, :, :, :4]
    check_grads(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=small, is_causal=True),
                [q[:1, :, :3], k[:, :4], v[:, :, :4]], order=2)
    # the causal mask alone, in query blocks, keys broadcast: float32 against the composition
    q, k, v = (r.standard_normal(s).astype(np.float32) for s in ((3, 2, 13, 4), (2, 11, 4), (1, 2, 11, 3)))
    _assert_same(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                 lambda q, k, v: scaled_dot_product_attention_composite(q, k, v, is_causal=True),
                 [q, k, v], rtol=1e-5, atol=1e-6)


def test_attention_second_order_matches_composition():
    """The recorded backward (create_graph) differentiated again equals the composition's."""
    q, k, v, _ = _qkv(7, (2,), 3, 4, 2, 3)
    outs = []
    for f in (F.scaled_dot_product_attention, scaled_dot_product_attention_composite):
        ts = [Tensor(a, requires_grad=True) for a in (q, k, v)]
        y = f(*ts, is_causal=True)
        gs = refgen.grad(F.sum(y * y), ts, create_graph=True)
        outs.append([g.data for g in refgen.grad(F.sum(gs[0] ** 2) + F.sum(gs[1] ** 3) + F.sum(gs[2] ** 2), ts)])
    for a, b in zip(*outs):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_attention_is_one_node_and_leaves_masks_alone():
    q, k, v, r = _qkv(2, (1, 2), 5, 5, 3, 3)
    mask = r.standard_normal((5, 5))
    kept = mask.copy()
    ts = [Tensor(a, requires_grad=True) for a in (q, k, v)]
    y = F.scaled_dot_product_attention(*ts, attn_mask=mask, is_causal=True)
    assert y._fn.inputs == tuple(ts)
    refgen.grad(F.sum(y), ts)
    np.testing.assert_array_equal(mask, kept)
    y2 = F.scaled_dot_product_attention(*ts, is_causal=True)  # the cached causal mask is unchanged
    np.testing.assert_allclose(y2.data, scaled_dot_product_attention_composite(*ts, is_causal=True).data,
                               rtol=1e-12, atol=1e-12)
