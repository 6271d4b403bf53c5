"""Layers against NumPy references, and multi-head attention with its key/value cache."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refgen import backend, nn
from refgen.autograd import Tensor, no_grad
from refgen.testing import check_grads, on_backend


f64 = np.float64


def _np(t):
    return t.numpy()


def _x(shape, seed=0, dtype=f64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def conv2d_ref(x, w, b, stride=1, padding=0):
    """Direct cross-correlation: a loop over kernel offsets, vectorised over everything else."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp_ = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (wd + 2 * padding - kw) // stride + 1
    out = np.zeros((n, o, ho, wo))
    for i in range(kh):
        for j in range(kw):
            patch = xp_[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]  # (N, C, Ho, Wo)
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out + (0 if b is None else b[None, :, None, None])


def test_linear_matches_numpy_and_torch_default_init():
    lin = nn.Linear(6, 3, rng=0, dtype=f64)
    assert lin.weight.shape == (3, 6) and lin.bias.shape == (3,)
    bound = 1 / math.sqrt(6)
    assert np.abs(_np(lin.weight)).max() <= bound and np.abs(_np(lin.bias)).max() <= bound
    x = _x((4, 2, 6))
    np.testing.assert_allclose(_np(lin(Tensor(x))), x @ _np(lin.weight).T + _np(lin.bias),
                               rtol=1e-12)
    assert nn.Linear(6, 3, bias=False, rng=0).bias is None
    assert nn.Linear(6, 3, rng=0).weight.dtype == np.float32


def test_linear_large_init_statistics():
    # kaiming_uniform(a=sqrt 5) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)): std 1/sqrt(3 fan_in)
    w = _np(nn.Linear(400, 300, rng=1).weight)
    assert w.std() == pytest.approx(1 / math.sqrt(3 * 400), rel=0.02)


@pytest.mark.parametrize("stride, padding", [(1, 0), (2, 1), (1, 1)])
def test_conv2d_matches_direct_convolution(stride, padding):
    conv = nn.Conv2d(3, 4, 3, stride=stride, padding=padding, rng=0, dtype=f64)
    assert conv.weight.shape == (4, 3, 3, 3)
    assert np.abs(_np(conv.weight)).max() <= 1 / math.sqrt(27)
    x = _x((2, 3, 7, 6))
    ref = conv2d_ref(x, _np(conv.weight), _np(conv.bias), stride, padding)
    np.testing.assert_allclose(_np(conv(Tensor(x))), ref, rtol=1e-10, atol=1e-12)


def test_conv2d_groups_shape():
    conv = nn.Conv2d(4, 6, (3, 1), groups=2, bias=False, rng=0)
    assert conv.weight.shape == (6, 2, 3, 1) and conv.bias is None
    assert conv(Tensor(_x((1, 4, 5, 5), dtype=np.float32))).shape == (1, 6, 3, 5)
    with pytest.raises(ValueError):
        nn.Conv2d(3, 4, 3, groups=2)


@pytest.mark.parametrize("stride, padding, output_padding", [(1, 0, 0), (2, 1, 1), (2, 0, 0)])
def test_conv_transpose2d_is_the_adjoint_of_conv2d(stride, padding, output_padding):
    # ConvTranspose2d(4 -> 3) with the weight of Conv2d(3 -> 4): <T y, x> = <y, C x>
    up = nn.ConvTranspose2d(4, 3, 3, stride=stride, padding=padding,
                            output_padding=output_padding, rng=0, dtype=f64)
    assert up.weight.shape == (4, 3, 3, 3) and up.bias.shape == (3,)
    h = 4
    out_h = (h - 1) * stride - 2 * padding + 3 + output_padding
    y = _x((2, 4, h, h), seed=1)
    ty = _np(up(Tensor(y))) - _np(up.bias)[None, :, None, None]
    assert ty.shape == (2, 3, out_h, out_h)
    x = _x((2, 3, out_h, out_h), seed=2)
    cx = conv2d_ref(x, _np(up.weight), None, stride, padding)
    assert cx.shape == y.shape
    np.testing.assert_allclose(np.sum(ty * x), np.sum(y * cx), rtol=1e-10)


def test_embedding():
    emb = nn.Embedding(10, 4, rng=0)
    assert emb.weight.shape == (10, 4)
    idx = np.array([[1, 2, 2], [9, 0, 1]])
    np.testing.assert_array_equal(_np(emb(idx)), _np(emb.weight)[idx])
    w = _np(nn.Embedding(500, 100, rng=1).weight)
    assert w.std() == pytest.approx(1.0, rel=0.02)  # N(0, 1) as torch


@on_backend("numpy")  # compares with NumPy in float64 / finite differences: run there
def test_layer_norm_and_group_norm():
    x = _x((3, 5, 8)) * 3 + 1
    ln = nn.LayerNorm(8, dtype=f64)
    ln.weight.data = _x((8,), seed=1)
    ln.bias.data = _x((8,), seed=2)
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    ref = (x - mu) / np.sqrt(var + 1e-5) * _np(ln.weight) + _np(ln.bias)
    np.testing.assert_allclose(_np(ln(Tensor(x))), ref, rtol=1e-10, atol=1e-12)
    assert nn.LayerNorm((5, 8), elementwise_affine=False).weight is None

    x = _x((2, 6, 3, 3))
    gn = nn.GroupNorm(3, 6, dtype=f64)
    gn.weight.data = _x((6,), seed=3)
    xg = x.reshape(2, 3, -1)
    ref = ((xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + 1e-5))
    ref = ref.reshape(x.shape) * _np(gn.weight)[None, :, None, None]
    np.testing.assert_allclose(_np(gn(Tensor(x))), ref, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError):
        nn.GroupNorm(4, 6)


def test_dropout_train_and_eval():
    drop = nn.Dropout(0.25)
    x = Tensor(np.ones((200, 100), dtype=np.float32))
    y = _np(drop(x, backend.default_rng(0)))
    assert np.array_equal(y, _np(drop(x, backend.default_rng(0))))  # the mask is rng's alone
    assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.75)}
    assert (y == 0).mean() == pytest.approx(0.25, abs=0.01)
    drop.eval()
    assert drop(x) is x
    with pytest.raises(ValueError):
        nn.Dropout(1.0)


@pytest.mark.parametrize("layer, ref", [
    (nn.ReLU(), lambda x: np.maximum(x, 0)),
    (nn.Tanh(), np.tanh),
    (nn.Sigmoid(), lambda x: 1 / (1 + np.exp(-x))),
    (nn.SiLU(), lambda x: x / (1 + np.exp(-x))),
    (nn.LeakyReLU(0.2), lambda x: np.where(x > 0, x, 0.2 * x)),
    (nn.GELU(approximate="tanh"),
     lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))),
    (nn.Softplus(), lambda x: np.log1p(np.exp(x))),
    (nn.ELU(), lambda x: np.where(x > 0, x, np.expm1(x))),
    (nn.Flatten(), lambda x: x.reshape(len(x), -1)),
])
def test_activations(layer, ref):
    x = _x((4, 3, 2))
    np.testing.assert_allclose(_np(layer(Tensor(x))), ref(x), rtol=1e-10, atol=1e-12)


def test_gelu_exact_is_x_phi():
    from math import erf
    x = _x((20,))
    ref = np.array([v * 0.5 * (1 + erf(v / math.sqrt(2))) for v in x])
    np.testing.assert_allclose(_np(nn.GELU()(Tensor(x))), ref, rtol=1e-10, atol=1e-12)


# --- attention --------------------------------------------------------------------------------

def mha_ref(m, x, ctx=None, causal=False):
    """Multi-head attention written out in NumPy."""
    def proj(lin, t):
        return t @ _np(lin.weight).T + _np(lin.bias)

    def heads(t):  # (B, L, E) -> (B, H, L, D)
        b, n, _ = t.shape
        return t.reshape(b, n, m.num_heads, m.head_dim).transpose(0, 2, 1, 3)

    c = x if ctx is None else ctx
    q, k, v = heads(proj(m.q_proj, x)), heads(proj(m.k_proj, c)), heads(proj(m.v_proj, c))
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(m.head_dim)  # (B, H, L, S)
    if causal:
        s = np.where(np.tri(s.shape[-2], s.shape[-1], dtype=bool), s, -np.inf)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    o = (a @ v).transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[1], m.embed_dim)
    return proj(m.out_proj, o)


@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_matches_reference(causal):
    m = nn.MultiheadAttention(8, 2, rng=0, dtype=f64)
    x = _x((2, 5, 8))
    np.testing.assert_allclose(_np(m(Tensor(x), is_causal=causal)), mha_ref(m, x, causal=causal),
                               rtol=1e-10, atol=1e-12)


def test_cross_attention_matches_reference():
    m = nn.MultiheadAttention(8, 4, kdim=3, rng=0, dtype=f64)
    assert m.k_proj.weight.shape == (8, 3) and m.v_proj.weight.shape == (8, 3)
    x, ctx = _x((2, 5, 8)), _x((2, 7, 3), seed=1)
    np.testing.assert_allclose(_np(m(Tensor(x), context=Tensor(ctx))), mha_ref(m, x, ctx),
                               rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError):
        nn.MultiheadAttention(8, 3)


def test_attention_masks():
    m = nn.MultiheadAttention(4, 2, rng=0, dtype=f64)
    x = Tensor(_x((1, 4, 4)))
    causal = np.tri(4, 4, dtype=bool)
    np.testing.assert_allclose(_np(m(x, attn_mask=causal)), _np(m(x, is_causal=True)), rtol=1e-12)
    additive = np.where(causal, 0.0, -np.inf)
    np.testing.assert_allclose(_np(m(x, attn_mask=additive)), _np(m(x, is_causal=True)),
                               rtol=1e-12)


def test_kv_cache_decoding_equals_full_causal_pass():
    m = nn.MultiheadAttention(8, 2, rng=0, dtype=f64)
    x = _x((2, 7, 8))
    full = _np(m(Tensor(x), is_causal=True))
    cache = {}
    with no_grad():
        # a 3-token prompt, two single tokens, then a 2-token chunk
        parts = [m(Tensor(x[:, a:b]), is_causal=True, cache=cache)
                 for a, b in [(0, 3), (3, 4), (4, 5), (5, 7)]]
    assert cache["k"].shape == (2, 2, 7, 4) and cache["v"].shape == (2, 2, 7, 4)
    np.testing.assert_allclose(np.concatenate([_np(p) for p in parts], axis=1), full,
                               rtol=1e-10, atol=1e-12)


def test_kv_cache_with_a_user_mask_combines_both():
    # a padding mask hiding key 1 from everyone, during chunked causal decoding
    m = nn.MultiheadAttention(4, 1, rng=0, dtype=f64)
    x = _x((1, 4, 4))
    keep = np.array([True, False, True, True])
    full = _np(m(Tensor(x), attn_mask=np.tri(4, 4, dtype=bool) & keep))
    cache = {}
    first = m(Tensor(x[:, :2]), is_causal=True, cache=cache, attn_mask=keep[:2])
    second = m(Tensor(x[:, 2:]), is_causal=True, cache=cache, attn_mask=keep)
    np.testing.assert_allclose(np.concatenate([_np(first), _np(second)], 1), full, rtol=1e-10)
    cache = {}
    m(Tensor(x[:, :2]), is_causal=True, cache=cache, attn_mask=np.where(keep[:2], 0.0, -np.inf))
    second = m(Tensor(x[:, 2:]), is_causal=True, cache=cache,
               attn_mask=Tensor(np.where(keep, 0.0, -np.inf)))
    np.testing.assert_allclose(_np(second), full[:, 2:], rtol=1e-10)


def test_cross_attention_cache_projects_context_once():
    m = nn.MultiheadAttention(8, 2, kdim=5, rng=0, dtype=f64)
    x, ctx = _x((1, 3, 8)), _x((1, 4, 5), seed=1)
    cache = {}
    a = m(Tensor(x[:, :1]), context=Tensor(ctx), cache=cache)
    k = cache["k"]
    b = m(Tensor(x[:, 1:]), context=Tensor(ctx), cache=cache)
    assert cache["k"] is k
    ref = mha_ref(m, x, ctx)
    np.testing.assert_allclose(np.concatenate([_np(a), _np(b)], 1), ref, rtol=1e-10)


def test_attention_gradients_reach_every_parameter():
    m = nn.MultiheadAttention(4, 2, kdim=3, rng=0)
    x, ctx = Tensor(_x((2, 3, 4), dtype=np.float32)), Tensor(_x((2, 5, 3), dtype=np.float32))
    m(x, context=ctx).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name
        assert np.abs(_np(p.grad)).sum() > 0, name


@on_backend("numpy")  # compares with NumPy in float64 / finite differences: run there
@given(n=st.integers(1, 4), causal=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_self_attention_gradcheck(n, causal, seed):
    m = nn.MultiheadAttention(4, 2, rng=seed, dtype=f64)
    check_grads(lambda x: m(x, is_causal=causal), [_x((1, n, 4), seed)], order=2)


@on_backend("numpy")  # compares with NumPy in float64 / finite differences: run there
@given(seed=st.integers(0, 2 ** 16))
def test_cross_attention_gradcheck(seed):
    m = nn.MultiheadAttention(4, 2, kdim=3, rng=seed, dtype=f64)
    check_grads(lambda x, c: m(x, context=c), [_x((1, 2, 4), seed), _x((1, 3, 3), seed + 1)],
                order=2)


@on_backend("numpy")  # compares with NumPy in float64 / finite differences: run there
@given(seed=st.integers(0, 2 ** 16))
def test_layer_stack_gradcheck(seed):
    # double backward through a stack of layers, as a gradient penalty needs
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, rng=seed, dtype=f64),
                        nn.GroupNorm(2, 4, dtype=f64), nn.SiLU(), nn.Flatten(),
                        nn.Linear(36, 5, rng=seed, dtype=f64), nn.LayerNorm(5, dtype=f64),
                        nn.GELU(), nn.Linear(5, 1, rng=seed, dtype=f64))
    check_grads(net, [_x((2, 2, 3, 3), seed)], order=2)
