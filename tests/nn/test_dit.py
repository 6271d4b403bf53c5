"""The diffusion transformer (refgen.nn.dit) against hand-written NumPy formulas in float64:
patchify's token order and its inverse, the 2D sin-cos positions, the adaLN-Zero block (the
identity at initialisation, and its formula with generic weights), the final layer, gradient
and double-backward checks, parameter counts written out by hand, and what each conditioning
variant lets the output depend on."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refgen import nn
from refgen.autograd import Tensor, no_grad
from refgen.nn.dit import DiTFinalLayer, sincos_pos_embed_2d
from refgen.optim import Adam
from refgen.testing import check_grads

pytestmark = pytest.mark.usefixtures("numpy_backend")  # float64 oracles and finite differences

f64 = np.float64
VARIANTS = ("adaln_zero", "in_context", "cross_attn")


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def _randomize(module, seed, scale=0.4):
    """Random weights everywhere (the zero-started adaLN and output layers would hide the math)."""
    rng = np.random.default_rng(seed)
    for p in module.parameters():
        p.data = rng.normal(0.0, scale, p.shape)
    return module


def _np(t):
    return t.numpy()


def silu(a):
    return a / (1 + np.exp(-a))


def gelu_tanh(a):
    return 0.5 * a * (1 + np.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a ** 3)))


def linear(x, lin):
    return x @ _np(lin.weight).T + _np(lin.bias)


def ln(x, eps=1e-6):
    """Layer norm over the last axis, no gain or bias."""
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)


def mha(m, x):
    """Self-attention by hand with the module's projections: (B, L, E) -> (B, L, E)."""
    h, d = m.num_heads, m.head_dim

    def heads(t):
        return t.reshape(t.shape[0], t.shape[1], h, d).transpose(0, 2, 1, 3)   # (B, H, L, d)
    q, k, v = heads(linear(x, m.q_proj)), heads(linear(x, m.k_proj)), heads(linear(x, m.v_proj))
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)
    p = np.exp(s - s.max(-1, keepdims=True))
    y = (p / p.sum(-1, keepdims=True)) @ v
    return linear(y.transpose(0, 2, 1, 3).reshape(x.shape), m.out_proj)


# --- patches and positions -----------------------------------------------------------------
def test_patchify_token_and_feature_order():
    """Token i w + j is patch (i, j) (row-major); its feature (r p + q) C + c is pixel
    (i p + r, j p + q) of channel c."""
    b, c, p, h, w = 2, 3, 2, 3, 4
    x = _x((b, c, h * p, w * p))
    tok = _np(nn.patchify(Tensor(x), p))
    assert tok.shape == (b, h * w, p * p * c)
    for i, j, r, q, ch in [(0, 0, 0, 0, 0), (1, 2, 0, 1, 2), (2, 3, 1, 0, 1), (2, 1, 1, 1, 0)]:
        np.testing.assert_array_equal(tok[:, i * w + j, (r * p + q) * c + ch],
                                      x[:, ch, i * p + r, j * p + q])


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 3), c=st.integers(1, 4), p=st.integers(1, 4), h=st.integers(1, 4),
       w=st.integers(1, 4), seed=st.integers(0, 99))
def test_patchify_and_unpatchify_are_inverse(b, c, p, h, w, seed):
    x = _x((b, c, h * p, w * p), seed)
    tok = nn.patchify(Tensor(x), p)
    np.testing.assert_array_equal(_np(nn.unpatchify(tok, p, h, w)), x)
    t = _x((b, h * w, p * p * c), seed + 1)
    np.testing.assert_array_equal(_np(nn.patchify(nn.unpatchify(Tensor(t), p, h, w), p)), t)


def test_patchify_rejects_sizes_that_do_not_divide():
    with pytest.raises(ValueError, match="patch_size=3"):
        nn.patchify(Tensor(np.zeros((1, 1, 4, 4))), 3)
    with pytest.raises(ValueError, match="grid"):
        nn.unpatchify(Tensor(np.zeros((1, 5, 4))), 2, 2, 2)


def test_patch_helpers_gradients():
    check_grads(lambda x: nn.patchify(x, 2) * nn.patchify(x, 2), [_x((2, 3, 4, 6))], order=2)
    check_grads(lambda t: nn.unpatchify(t * t, 2, 2, 3), [_x((2, 6, 12))], order=2)


def test_sincos_position_embedding_formula():
    """Token (i, j) of a 3 x 5 grid, width 8: [sin(j w_0), sin(j w_1), cos(j w_0), cos(j w_1),
    the same for i], w_k = 10000^(-k / 2)."""
    e = sincos_pos_embed_2d(8, 3, 5, f64)
    assert e.shape == (15, 8)
    wk = 10000.0 ** (-np.arange(2) / 2)
    for i, j in [(0, 0), (1, 3), (2, 4), (2, 1)]:
        want = np.r_[np.sin(j * wk), np.cos(j * wk), np.sin(i * wk), np.cos(i * wk)]
        np.testing.assert_allclose(e[i * 5 + j], want, rtol=1e-13, atol=1e-13)
    assert len({tuple(r) for r in np.round(e, 12)}) == 15                 # every token distinct
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(6, 2, 2)


# --- the adaLN-Zero block ------------------------------------------------------------------
def test_adaln_zero_block_is_the_identity_at_init_and_not_after_one_step():
    blk = nn.AdaLNZeroBlock(8, 2, rng=0, dtype=f64)
    h, c = Tensor(_x((3, 5, 8))), Tensor(_x((3, 8), 1))
    np.testing.assert_array_equal(_np(blk(h, c)), h.numpy())              # exactly h
    target = _x((3, 5, 8), 2)
    opt = Adam(blk.parameters(), lr=1e-2)
    ((blk(h, c) - Tensor(target)) ** 2).mean().backward()
    opt.step()
    assert np.abs(_np(blk(h, c)) - h.numpy()).max() > 1e-3


def test_adaln_zero_block_formula():
    """h + g (.) Attn(LN(h)(1 + b) + a), then the same with the MLP, where
    (a, b, g, a', b', g') = W silu(c) + bias is cut into six (B, D) pieces in that order."""
    blk = _randomize(nn.AdaLNZeroBlock(8, 2, rng=0, dtype=f64), 3)
    h, c = _x((2, 4, 8)), _x((2, 8), 1)
    a, b, g, a2, b2, g2 = np.split(linear(silu(c), blk.ada), 6, axis=1)
    h1 = h + g[:, None] * mha(blk.attn, ln(h) * (1 + b[:, None]) + a[:, None])
    u = ln(h1) * (1 + b2[:, None]) + a2[:, None]
    mlp = linear(gelu_tanh(linear(u, blk.mlp[0])), blk.mlp[2])
    want = h1 + g2[:, None] * mlp
    np.testing.assert_allclose(_np(blk(Tensor(h), Tensor(c))), want, rtol=1e-10, atol=1e-12)


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 1000))
def test_adaln_zero_block_gradients(seed):
    blk = _randomize(nn.AdaLNZeroBlock(4, 2, mlp_ratio=2, rng=seed, dtype=f64), seed)
    check_grads(lambda h, c: blk(h, c), [_x((1, 3, 4), seed), _x((1, 4), seed + 1)], order=2)


def test_final_layer_formula_zero_start_and_gradients():
    fl = DiTFinalLayer(6, 4, rng=0, dtype=f64)
    h, c = _x((2, 3, 6)), _x((2, 6), 1)
    assert np.all(_np(fl(Tensor(h), Tensor(c))) == 0.0)                  # starts at zero
    _randomize(fl, 4)
    shift, scale = np.split(linear(silu(c), fl.ada), 2, axis=1)
    want = linear(ln(h) * (1 + scale[:, None]) + shift[:, None], fl.linear)
    np.testing.assert_allclose(_np(fl(Tensor(h), Tensor(c))), want, rtol=1e-10, atol=1e-12)
    check_grads(lambda hh, cc: fl(hh, cc), [_x((1, 2, 6), 5), _x((1, 6), 6)], order=2)


# --- the network ---------------------------------------------------------------------------
def _dit(cond, seed=0, **kw):
    kw = dict(dict(patch_size=2, width=8, depth=2, heads=2, num_classes=3, freq_dim=8), **kw)
    return nn.DiT(1, 2, 4, conditioning=cond, rng=seed, dtype=f64, **kw)


def test_parameter_counts_and_shapes_by_hand():
    """C = 1, C_out = 2, 4 x 4 images, p = 2, D = 8, 2 blocks, 2 heads, 3 classes,
    sinusoid width 256 (the default), MLP ratio 4."""
    lin = lambda i, o: i * o + o                                           # noqa: E731
    embed = lin(4 * 1, 8) + lin(256, 8) + lin(8, 8) + 4 * 8               # patch, t MLP, 4 labels
    attn = 4 * lin(8, 8)
    mlp = lin(8, 32) + lin(32, 8)
    adaln_block = attn + mlp + lin(8, 6 * 8)                              # LNs without parameters
    plain_block = 2 * 2 * 8 + attn + mlp                                  # two affine LNs
    cross_block = plain_block + 2 * 8 + attn                              # + LN and cross-attention
    out = lin(8, 2 * 2 * 2)
    want = {"adaln_zero": embed + 2 * adaln_block + lin(8, 2 * 8) + out,
            "in_context": embed + 2 * plain_block + 2 * 8 + out,
            "cross_attn": embed + 2 * cross_block + 2 * 8 + out}
    assert want == {"adaln_zero": 4960, "in_context": 4032, "cross_attn": 4640}
    for cond in VARIANTS:
        net = _dit(cond, freq_dim=256)
        assert sum(p.data.size for p in net.parameters()) == want[cond], cond
    net = _dit("adaln_zero")
    assert net.blocks[0].ada.weight.shape == (48, 8) and net.final.linear.weight.shape == (8, 8)
    assert net.patch_embed.weight.shape == (8, 4) and net.pos_embed.shape == (4, 8)
    assert "pos_embed" not in dict(net.named_parameters())                # fixed, not learned
    assert _dit("adaln_zero", patch_size=1).pos_embed.shape == (16, 8)    # 4 x 4 tokens


@pytest.mark.parametrize("cond", VARIANTS)
def test_dit_output_shape_and_zero_start(cond):
    net = _dit(cond)
    out = net(Tensor(_x((3, 1, 4, 4))), np.array([1, 40, 999]), np.array([0, 2, 3]))  # 3: null
    assert out.shape == (3, 2, 4, 4) and np.all(out.numpy() == 0.0)
    with pytest.raises(ValueError, match="pass labels"):
        net(Tensor(_x((3, 1, 4, 4))), np.array([1, 40, 999]))


@pytest.mark.parametrize("cond", VARIANTS)
def test_dit_forward_is_the_papers_composition(cond):
    """With generic weights: tokens = Linear(patchify(x)) + positions; adaLN-Zero blocks fed
    c = t_emb + y_emb; or [t_emb, y_emb] prepended as tokens (dropped before the final layer);
    or attended to as a two-token context; then the final layer and unpatchify."""
    net = _randomize(_dit(cond), 7, scale=0.3)
    x, t, y = _x((2, 1, 4, 4)), np.array([5, 300]), np.array([1, 3])
    with no_grad():
        h = _np(net.patch_embed(nn.patchify(Tensor(x), 2))) + sincos_pos_embed_2d(8, 2, 2, f64)
        te, ye = _np(net.t_embed(t)), _np(net.y_embed.weight)[y]
        if cond == "adaln_zero":
            for blk in net.blocks:
                h = _np(blk(Tensor(h), Tensor(te + ye)))
            out = _np(net.final(Tensor(h), Tensor(te + ye)))
        elif cond == "in_context":
            s = np.concatenate([te[:, None], ye[:, None], h], axis=1)     # (B, 2 + N, D)
            for blk in net.blocks:
                s = _np(blk(Tensor(s)))
            out = _np(net.final(Tensor(s[:, 2:])))
        else:
            ctx = Tensor(np.stack([te, ye], axis=1))                      # (B, 2, D)
            for blk in net.blocks:
                h = _np(blk(Tensor(h), context=ctx))
            out = _np(net.final(Tensor(h)))
        want = _np(nn.unpatchify(Tensor(out), 2, 2, 2))
        np.testing.assert_allclose(_np(net(Tensor(x), t, y)), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cond", VARIANTS)
def test_dit_input_gradient(cond):
    net = _randomize(_dit(cond, depth=1), 11, scale=0.3)
    t, y = np.array([3, 70]), np.array([0, 3])
    check_grads(lambda xx: net(xx, t, y), [_x((2, 1, 4, 4), 12)], order=2)


def _step(net, x, t, y, target, lr=0.05):
    opt = Adam(net.parameters(), lr=lr)
    ((net(Tensor(x), t, y) - Tensor(target)) ** 2).mean().backward()
    opt.step()


def _moves(net, x, t, y, t2, y2):
    """How far the output moves when t -> t2 (labels kept) and when y -> y2 (times kept)."""
    with no_grad():
        base = _np(net(Tensor(x), t, y))
        return (np.abs(_np(net(Tensor(x), t2, y)) - base).max(),
                np.abs(_np(net(Tensor(x), t, y2)) - base).max())


@pytest.mark.parametrize("cond", VARIANTS)
def test_each_variant_reads_t_and_y(cond):
    """After one step on a random target the in-context and cross-attention outputs depend on
    t and on y. adaLN-Zero needs two: after the first only the final Linear has moved (every
    other gradient passes through a zero layer), so the output is still a function of the
    image tokens alone; the second step opens the gates and the final modulation."""
    net = _dit(cond, seed=1)
    x, target = _x((2, 1, 4, 4), 1), _x((2, 2, 4, 4), 2)
    t, y = np.array([10, 500]), np.array([0, 1])
    args = (x, t, y, np.array([700, 20]), np.array([2, 3]))
    _step(net, x, t, y, target)
    dt, dy = _moves(net, *args)
    if cond == "adaln_zero":
        assert dt == 0.0 and dy == 0.0
        _step(net, x, t, y, target)
        dt, dy = _moves(net, *args)
    assert dt > 1e-4 and dy > 1e-4


def test_bad_options_are_one_clear_line():
    with pytest.raises(ValueError, match="conditioning must be one of"):
        _dit("film")
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        _dit("adaln_zero", patch_size=3)
    with pytest.raises(ValueError, match="heads"):
        _dit("adaln_zero", heads=3)
    with pytest.raises(ValueError, match="takes 4x4 images"):
        _dit("adaln_zero")(Tensor(np.zeros((1, 1, 4, 6))), np.array([1]), np.array([0]))
