"""The shared blocks of refgen.nn (embeddings, residual, attention and transformer blocks, the
U-Net) against hand-written NumPy formulas in float64, plus gradient checks of the blocks
that compose ops in new ways (scale-shift, cross-attention)."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refgen import nn
from refgen.autograd import Tensor, no_grad
from refgen.testing import check_grads, check_vjp

pytestmark = pytest.mark.usefixtures("numpy_backend")  # float64 oracles and finite differences

f64 = np.float64


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def _randomize(module, seed, scale=0.4):
    """Random weights everywhere (zero-started output layers would hide the block's math)."""
    rng = np.random.default_rng(seed)
    for p in module.parameters():
        p.data = rng.normal(0.0, scale, p.shape)
    return module


def _np(t):
    return t.numpy()


def silu(a):
    return a / (1 + np.exp(-a))


def group_norm(x, g, w, b, eps=1e-5):
    n, c = x.shape[:2]
    xg = x.reshape(n, g, -1)
    xg = (xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + eps)
    return xg.reshape(x.shape) * w[None, :, None, None] + b[None, :, None, None]


def linear(x, lin):
    return x @ _np(lin.weight).T + _np(lin.bias)


def attention(q, k, v, mask=None):
    """softmax(Q K^T / sqrt(d)) V for (..., L, d), (..., S, d), (..., S, d); mask (..., L, S)."""
    s = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = np.where(mask, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def mha(m, x, ctx, mask=None):
    """MultiheadAttention by hand: (B, L, E), (B, S, kdim), mask (B, S) -> (B, L, E)."""
    h, d = m.num_heads, m.head_dim

    def heads(t):
        return t.reshape(t.shape[0], t.shape[1], h, d).transpose(0, 2, 1, 3)   # (B, H, L, d)
    q, k, v = heads(linear(x, m.q_proj)), heads(linear(ctx, m.k_proj)), heads(linear(ctx, m.v_proj))
    y = attention(q, k, v, None if mask is None else mask[:, None, None, :])
    return linear(y.transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[1], h * d), m.out_proj)


# --- embeddings ----------------------------------------------------------------------------
def test_timestep_embedding_formula():
    t = np.array([0.0, 0.37, 3.0, 517.25])
    e = _np(nn.timestep_embedding(t, 10, dtype=f64))                    # (4, 10)
    assert e.shape == (4, 10)
    for i in range(5):
        w = 10000.0 ** (-i / 5)
        np.testing.assert_allclose(e[:, i], np.cos(t * w), rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(e[:, 5 + i], np.sin(t * w), rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="even"):
        nn.timestep_embedding(t, 7)


def test_time_embedding_adds_the_label_row():
    m = _randomize(nn.TimeEmbedding(6, 5, num_classes=3, rng=0, dtype=f64), 1)
    t, y = np.array([2.0, 40.0, 900.0]), np.array([0, 3, 2])
    s = _np(nn.timestep_embedding(t, 6, dtype=f64))
    want = linear(silu(linear(s, m.lin1)), m.lin2) + _np(m.label.weight)[y]
    np.testing.assert_allclose(_np(m(t, y)), want, rtol=1e-12)
    with pytest.raises(ValueError, match="pass labels"):
        m(t)


# --- residual blocks -----------------------------------------------------------------------
def test_group_count():
    assert nn.group_count(12, 8) == 4 and nn.group_count(32, 8) == 8 and nn.group_count(6, 8) == 2


def test_mlp_block_formula():
    m = _randomize(nn.MLPBlock(4, 3, rng=0, dtype=f64), 2)
    h, e = _x((5, 4)), _x((5, 3), 1)
    want = h + linear(silu(linear(silu(h), m.lin1) + linear(e, m.emb)), m.lin2)
    np.testing.assert_allclose(_np(m(Tensor(h), Tensor(e))), want, rtol=1e-12)


def _resblock_ref(m, x, e):
    """ResBlock by hand, both kinds; the convolutions are refgen's (tested in test_layers)."""
    with no_grad():
        h = _np(m.conv1(Tensor(silu(group_norm(x, m.norm1.num_groups, _np(m.norm1.weight),
                                                  _np(m.norm1.bias))))))
        emb = linear(silu(e), m.emb)[:, :, None, None]
        c = h.shape[1]
        g, w, b = m.norm2.num_groups, _np(m.norm2.weight), _np(m.norm2.bias)
        if m.scale_shift:
            h = group_norm(h, g, w, b) * (1 + emb[:, :c]) + emb[:, c:]         # scale, then shift
        else:
            h = group_norm(h + emb, g, w, b)
        h = _np(m.conv2(Tensor(silu(h))))
        return (x if m.skip is None else _np(m.skip(Tensor(x)))) + h


@pytest.mark.parametrize("scale_shift", [False, True])
@pytest.mark.parametrize("cin,cout", [(4, 4), (4, 6)])
def test_resblock_formula(scale_shift, cin, cout):
    m = _randomize(nn.ResBlock(cin, cout, 5, groups=2, scale_shift=scale_shift, rng=0,
                               dtype=f64), 3)
    assert m.emb.out_features == (2 * cout if scale_shift else cout)
    x, e = _x((2, cin, 4, 3)), _x((2, 5), 1)
    out = _np(m(Tensor(x), Tensor(e)))
    assert out.shape == (2, cout, 4, 3)
    np.testing.assert_allclose(out, _resblock_ref(m, x, e), rtol=1e-10, atol=1e-12)


def test_scale_shift_with_a_zero_embedding_is_plain_group_norm():
    plain = _randomize(nn.ResBlock(4, 6, 5, groups=2, rng=0, dtype=f64), 4)
    ada = nn.ResBlock(4, 6, 5, groups=2, scale_shift=True, rng=0, dtype=f64)
    for name, p in ada.named_parameters():
        if not name.startswith("emb."):
            p.data = dict(plain.named_parameters())[name].data.copy()
    for m in (plain, ada):
        m.emb.weight.data[...] = 0.0
        m.emb.bias.data[...] = 0.0
    x, e = _x((2, 4, 3, 3)), _x((2, 5), 1)
    np.testing.assert_allclose(_np(ada(Tensor(x), Tensor(e))), _np(plain(Tensor(x), Tensor(e))),
                               rtol=1e-13, atol=1e-13)


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2 ** 16))
def test_scale_shift_resblock_gradcheck(seed):
    m = _randomize(nn.ResBlock(2, 4, 3, groups=2, scale_shift=True, rng=seed, dtype=f64), seed)
    check_grads(m, [_x((1, 2, 3, 3), seed), _x((1, 3), seed + 1)], order=2)


# --- attention blocks ----------------------------------------------------------------------
def _tokens(x):
    b, c, h, w = x.shape
    return x.reshape(b, c, h * w).transpose(0, 2, 1)                   # (B, HW, C)


def test_attn_block_is_self_attention_over_pixels():
    m = _randomize(nn.AttnBlock(4, heads=2, groups=2, rng=0, dtype=f64), 5)
    x = _x((2, 4, 3, 2))
    t = _tokens(group_norm(x, 2, _np(m.norm.weight), _np(m.norm.bias)))
    want = x + mha(m.attn, t, t).transpose(0, 2, 1).reshape(x.shape)
    np.testing.assert_allclose(_np(m(Tensor(x))), want, rtol=1e-11)


def test_cross_attn_block_against_softmax_qk_v():
    m = _randomize(nn.CrossAttnBlock(4, 3, heads=2, groups=2, rng=0, dtype=f64), 6)
    x, ctx = _x((2, 4, 3, 2)), _x((2, 5, 3), 1)
    mask = np.array([[True, True, False, True, False], [True, False, False, False, False]])
    t = _tokens(group_norm(x, 2, _np(m.norm.weight), _np(m.norm.bias)))  # queries (B, HW, C)
    for msk in (None, mask):
        want = x + mha(m.attn, t, ctx, msk).transpose(0, 2, 1).reshape(x.shape)
        out = _np(m(Tensor(x), Tensor(ctx), msk))
        assert out.shape == x.shape
        np.testing.assert_allclose(out, want, rtol=1e-11)
    # masked-out context tokens have no influence; unmasked ones do
    ctx2 = ctx.copy()
    ctx2[:, 2] += 5.0
    np.testing.assert_array_equal(_np(m(Tensor(x), Tensor(ctx2), mask)), _np(m(Tensor(x), Tensor(ctx), mask)))
    assert not np.allclose(_np(m(Tensor(x), Tensor(ctx2))), _np(m(Tensor(x), Tensor(ctx))))
    with pytest.raises(ValueError, match="context"):
        m(Tensor(x), None)


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2 ** 16))
def test_cross_attn_block_gradcheck(seed):
    m = _randomize(nn.CrossAttnBlock(2, 3, heads=1, groups=2, rng=seed, dtype=f64), seed)
    check_grads(lambda x, c: m(x, c), [_x((1, 2, 2, 2), seed), _x((1, 3, 3), seed + 1)], order=2)


def test_down_and_upsample_shapes():
    x = Tensor(_x((2, 3, 6, 4)))
    assert nn.Downsample(3, rng=0, dtype=f64)(x).shape == (2, 3, 3, 2)
    assert nn.Upsample(3, rng=0, dtype=f64)(x).shape == (2, 3, 12, 8)


# --- transformer block ---------------------------------------------------------------------
def _block_ref(m, h, ctx=None, mask=None):
    def ln(a, norm):
        a = (a - a.mean(-1, keepdims=True)) / np.sqrt(a.var(-1, keepdims=True) + norm.eps)
        return a * _np(norm.weight) + _np(norm.bias)
    a = ln(h, m.ln1)
    causal = np.tri(h.shape[1], dtype=bool) if m.causal else None
    hd = m.attn.head_dim

    def heads(t):
        return t.reshape(t.shape[0], t.shape[1], -1, hd).transpose(0, 2, 1, 3)
    y = attention(heads(linear(a, m.attn.q_proj)), heads(linear(a, m.attn.k_proj)),
                  heads(linear(a, m.attn.v_proj)), causal)
    h = h + linear(y.transpose(0, 2, 1, 3).reshape(h.shape), m.attn.out_proj)
    if ctx is not None:
        h = h + mha(m.cross_attn, ln(h, m.ln_cross), ctx, mask)
    u = linear(ln(h, m.ln2), m.mlp[0])
    gelu = 0.5 * u * (1 + np.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3)))
    return h + linear(gelu, m.mlp[2])


@pytest.mark.parametrize("causal", [False, True])
def test_transformer_block_formula(causal):
    m = _randomize(nn.TransformerBlock(6, 2, causal=causal, rng=0, dtype=f64), 7, scale=0.3)
    h = _x((2, 5, 6))
    np.testing.assert_allclose(_np(m(Tensor(h))), _block_ref(m, h), rtol=1e-10)


def test_transformer_block_with_cross_attention_formula():
    m = _randomize(nn.TransformerBlock(6, 2, context_dim=4, rng=0, dtype=f64), 8, scale=0.3)
    h, ctx = _x((2, 5, 6)), _x((2, 3, 4), 1)
    mask = np.array([[True, False, True], [False, True, True]])
    np.testing.assert_allclose(_np(m(Tensor(h), context=Tensor(ctx), context_mask=mask)),
                               _block_ref(m, h, ctx, mask), rtol=1e-10)
    with pytest.raises(ValueError, match="context"):
        m(Tensor(h))
    with pytest.raises(ValueError, match="without context_dim"):
        nn.TransformerBlock(6, 2, rng=0, dtype=f64)(Tensor(h), context=Tensor(ctx))


@pytest.mark.parametrize("causal", [True, False])
def test_causal_block_ignores_later_positions(causal):
    m = _randomize(nn.TransformerBlock(6, 2, causal=causal, rng=0, dtype=f64), 9, scale=0.3)
    h = _x((1, 6, 6))
    h2 = h.copy()
    h2[:, 4:] += _x((1, 2, 6), 1)                                      # change positions 4, 5
    a, b = _np(m(Tensor(h))), _np(m(Tensor(h2)))
    if causal:
        np.testing.assert_array_equal(a[:, :4], b[:, :4])
    else:
        assert not np.allclose(a[:, :4], b[:, :4])                    # every position sees all
    assert not np.allclose(a[:, 4:], b[:, 4:])


@pytest.mark.parametrize("context_dim", [None, 4])
def test_kv_cache_decoding_equals_full_forward(context_dim):
    m = _randomize(nn.TransformerBlock(6, 2, causal=True, context_dim=context_dim, rng=0,
                                       dtype=f64), 10, scale=0.3)
    h = _x((2, 7, 6))
    kw = {} if context_dim is None else dict(context=Tensor(_x((2, 3, 4), 1)))
    full = _np(m(Tensor(h), **kw))
    cache = {}
    parts = [_np(m(Tensor(h[:, a:b]), cache=cache, **kw)) for a, b in [(0, 3), (3, 4), (4, 7)]]
    assert cache["k"].shape == (2, 2, 7, 3)                            # (B, H, T, d)
    np.testing.assert_allclose(np.concatenate(parts, 1), full, rtol=1e-11, atol=1e-13)


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2 ** 16))
def test_transformer_block_with_context_gradcheck(seed):
    m = _randomize(nn.TransformerBlock(4, 2, causal=True, context_dim=3, rng=seed, dtype=f64),
                   seed, scale=0.3)
    check_grads(lambda h, c: m(h, context=c), [_x((1, 3, 4), seed), _x((1, 2, 3), seed + 1)],
                order=2)


# --- U-Net ---------------------------------------------------------------------------------
def test_unet_with_context_and_scale_shift():
    kw = dict(channels=4, channel_mult=(1, 2), num_res_blocks=1, groups=2, rng=0, dtype=f64)
    net = _randomize(nn.UNet(2, 3, 4, scale_shift=True, context_dim=5, **kw), 11, scale=0.2)
    n_cross = sum(isinstance(b, nn.CrossAttnBlock) for b in net.modules())
    n_self = sum(isinstance(b, nn.AttnBlock) for b in net.modules())
    assert n_cross == n_self == 4                                      # 1 down, 1 middle, 2 up
    assert all(b.scale_shift for b in net.modules() if isinstance(b, nn.ResBlock))
    x, t, ctx = _x((2, 2, 4, 4)), np.array([3, 70]), _x((2, 3, 5), 1)
    mask = np.array([[True, True, False], [True, False, False]])
    out = _np(net(Tensor(x), t, context=Tensor(ctx), context_mask=mask))
    assert out.shape == (2, 3, 4, 4)
    ctx2 = ctx.copy()
    ctx2[:, 2] += 3.0                                                  # masked for both rows
    np.testing.assert_array_equal(_np(net(Tensor(x), t, context=Tensor(ctx2), context_mask=mask)), out)
    assert not np.allclose(_np(net(Tensor(x), t, context=Tensor(ctx2))),
                           _np(net(Tensor(x), t, context=Tensor(ctx))))
    with pytest.raises(ValueError, match="context"):
        net(Tensor(x), t)
    plain = nn.UNet(2, 3, 4, **kw)
    assert not any(isinstance(b, nn.CrossAttnBlock) for b in plain.modules())
    with pytest.raises(ValueError, match="context"):
        plain(Tensor(x), t, context=Tensor(ctx))


def test_unet_gradient_reaches_the_context():
    net = _randomize(nn.UNet(1, 1, 4, channels=2, channel_mult=(1, 2), num_res_blocks=1,
                             groups=2, context_dim=2, rng=0, dtype=f64), 12, scale=0.3)
    t = np.array([5])
    check_vjp(lambda x, c: net(x, t, context=c), [_x((1, 1, 4, 4)), _x((1, 2, 2), 1)])


def test_unet_routes_the_context_to_every_cross_attention_block():
    net = _randomize(nn.UNet(1, 1, 4, channels=4, channel_mult=(1, 2), num_res_blocks=1,
                             groups=2, context_dim=3, rng=0, dtype=f64), 13, scale=0.3)
    cross = [m for m in net.modules() if isinstance(m, nn.CrossAttnBlock)]
    saved = [m.attn.out_proj.weight.data.copy() for m in cross]
    x, t, c1, c2 = Tensor(_x((1, 1, 4, 4))), np.array([9]), _x((1, 2, 3), 1), _x((1, 2, 3), 2)
    for i, block in enumerate(cross):                  # only block i passes its context on
        for m, w in zip(cross, saved):
            m.attn.out_proj.weight.data = w if m is block else np.zeros_like(w)
            m.attn.out_proj.bias.data[...] = 0.0
        a, b = _np(net(x, t, context=Tensor(c1))), _np(net(x, t, context=Tensor(c2)))
        assert not np.allclose(a, b), f"cross-attention block {i} does not see the context"
