"""The U-Net's architecture options, each against what it should change and nothing else:
parameter counts summed by hand block by block, output shapes, the 1/sqrt(2) factors by
value, BigGAN's resampling ResBlock by hand, which tensors become skip connections, and
gradient (and double-backward) checks of the new block."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refgen import nn
from refgen.autograd import Tensor, no_grad
from refgen.models.diffusion import DDPM
from refgen.models.diffusion.config import NetworkConfig, unet_options
from refgen.nn import unet as unet_module
from refgen.testing import check_grads, check_vjp

pytestmark = pytest.mark.usefixtures("numpy_backend")

f64 = np.float64
R2 = 1 / math.sqrt(2)


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def _randomize(module, seed, scale=0.3):
    rng = np.random.default_rng(seed)
    for p in module.parameters():
        p.data = rng.normal(0.0, scale, p.shape)
    return module


def silu(a):
    return a / (1 + np.exp(-a))


def group_norm(x, g, w, b, eps=1e-5):
    xg = x.reshape(x.shape[0], g, -1)
    xg = (xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + eps)
    return xg.reshape(x.shape) * w[None, :, None, None] + b[None, :, None, None]


def pool2(a):
    b, c, h, w = a.shape
    return a.reshape(b, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))


def up2(a):
    return a.repeat(2, axis=2).repeat(2, axis=3)


# --- parameter counts by hand --------------------------------------------------------------
def conv(cin, cout, k=3):
    return cin * cout * k * k + cout


def lin(i, o):
    return i * o + o


def res(cin, cout, emb, ss=False):
    return (2 * cin + conv(cin, cout) + lin(emb, 2 * cout if ss else cout) + 2 * cout
            + conv(cout, cout) + (conv(cin, cout, 1) if cin != cout else 0))


def attn(c):
    return 2 * c + 4 * lin(c, c)


def temb(ch, emb):
    return lin(ch, emb) + lin(emb, emb)


CH, EMB = 4, 16            # channels 4, embedding 4 * 4; channel_mult (1, 2) on 8x8, attention at 4x4
KW = dict(channels=CH, channel_mult=(1, 2), num_res_blocks=1, groups=2, rng=0, dtype=f64)


def plain_count(ss=False, updown=False):
    """conv_in; down: Res(4,4) | Down(4) | Res(4,8)+A; mid Res(8,8) A Res(8,8);
    up (skips 8, 4 | 4, 4): Res(16,8)+A, Res(12,8)+A, Up(8) | Res(12,4), Res(8,4); out."""
    down = res(CH, CH, EMB, ss) if updown else conv(CH, CH)
    up = res(8, 8, EMB, ss) if updown else conv(8, 8)
    return (temb(CH, EMB) + conv(1, CH)
            + res(4, 4, EMB, ss) + down + res(4, 8, EMB, ss) + attn(8)
            + 2 * res(8, 8, EMB, ss) + attn(8)
            + res(16, 8, EMB, ss) + attn(8) + res(12, 8, EMB, ss) + attn(8) + up
            + res(12, 4, EMB, ss) + res(8, 4, EMB, ss)
            + 2 * CH + conv(CH, 1))


def count(m):
    return sum(p.data.size for p in m.parameters())


def test_plain_count_by_hand():
    assert count(nn.UNet(1, 1, 8, **KW)) == plain_count()


def test_resblock_updown_swaps_the_resamplers_for_resblocks():
    net = nn.UNet(1, 1, 8, **KW, resblock_updown=True)
    assert count(net) == plain_count(updown=True)
    resamplers = [b for b in net.modules() if isinstance(b, nn.ResBlock) and b.resample]
    assert [b.resample for b in resamplers] == ["down", "up"]
    assert not any(isinstance(b, (nn.Downsample, nn.Upsample)) for b in net.modules())


@pytest.mark.parametrize("flag", ["rescale_residual", "rescale_skip"])
def test_rescaling_adds_no_parameters(flag):
    assert count(nn.UNet(1, 1, 8, **KW, **{flag: True})) == plain_count()


def test_per_level_res_blocks_count():
    """num_res_blocks (1, 2): one more Res(8,8)+A going down at level 1, and one more
    Res(16,8)+A coming up (skips 8, 8, 4 there)."""
    net = nn.UNet(1, 1, 8, **dict(KW, num_res_blocks=(1, 2)))
    assert net.num_res_blocks == (1, 2)
    assert count(net) == plain_count() + res(8, 8, EMB) + attn(8) + res(16, 8, EMB) + attn(8)
    with pytest.raises(ValueError, match="one per level"):
        nn.UNet(1, 1, 8, **dict(KW, num_res_blocks=(1, 2, 3)))


def test_resample_first_count_and_layout():
    """Imagen's order: down Res(4,4) | Down(4) Res(4,8)+A; the downsampled map is no skip,
    so level 1 comes up with one ResBlock (Res(16,8)+A, then Up(8))."""
    net = nn.UNet(1, 1, 8, **KW, resample_first=True)
    assert count(net) == plain_count() - res(12, 8, EMB) - attn(8)
    kinds = [type(b[0]).__name__ for b in net.down]
    assert kinds == ["ResBlock", "Downsample", "ResBlock"]
    assert net.skip_from == [True, False, True]
    assert isinstance(net.up[0][-1], nn.Upsample)                     # upsampling after the convs


def test_head_channels_sets_heads_per_level():
    net = nn.UNet(1, 1, 8, **dict(KW, attn_res=(8, 4)), head_channels=2)
    assert count(net) == count(nn.UNet(1, 1, 8, **dict(KW, attn_res=(8, 4))))
    heads = {b.norm.num_channels: b.attn.num_heads for b in net.modules() if isinstance(b, nn.AttnBlock)}
    assert heads == {4: 2, 8: 4}
    with pytest.raises(ValueError, match="head_channels"):
        nn.UNet(1, 1, 8, **KW, head_channels=3)


def test_aug_embed_adds_one_time_embedding():
    net = nn.UNet(1, 1, 8, **KW, aug_embed=True)
    assert count(net) == plain_count() + temb(CH, EMB)
    x = Tensor(np.zeros((2, 1, 8, 8)))
    with pytest.raises(ValueError, match="aug"):
        net(x, np.array([1, 2]))
    with pytest.raises(ValueError, match="aug"):
        nn.UNet(1, 1, 8, **KW)(x, np.array([1, 2]), aug=np.array([0, 3]))


@pytest.mark.parametrize("opts", [dict(resblock_updown=True), dict(rescale_residual=True),
                                  dict(rescale_skip=True), dict(resample_first=True),
                                  dict(num_res_blocks=(1, 3)), dict(head_channels=2),
                                  dict(aug_embed=True)])
@pytest.mark.parametrize("size,mult", [(8, (1, 2)), (8, (1, 2, 2)), (14, (1, 2))])
def test_output_shapes(opts, size, mult):
    if "num_res_blocks" in opts:                                        # one count per level
        opts = dict(num_res_blocks=(1,) * (len(mult) - 1) + (3,))
    kw = dict(KW, channel_mult=mult, **{k: v for k, v in opts.items() if k in KW})
    net = nn.UNet(1, 3, size, **kw, **{k: v for k, v in opts.items() if k not in KW})
    aug = {"aug": np.array([0, 7])} if opts.get("aug_embed") else {}
    y = net(Tensor(_x((2, 1, size, size))), np.array([1, 9]), **aug)
    assert y.shape == (2, 3, size, size)


# --- the resampling ResBlock and the 1/sqrt(2) residual by value ---------------------------
def _resblock_by_hand(m, x, e):
    """out = skip(r(x)) + conv2(silu(GN(conv1(r(silu(GN(x)))) + W e))), r the resampling,
    divided by sqrt(2) when rescaled."""
    r = {None: lambda a: a, "down": pool2, "up": up2}[m.resample]
    with no_grad():
        a = r(silu(group_norm(x, m.norm1.num_groups, m.norm1.weight.numpy(), m.norm1.bias.numpy())))
        h = m.conv1(Tensor(a)).numpy()
        emb = (silu(e) @ m.emb.weight.numpy().T + m.emb.bias.numpy())[:, :, None, None]
        h = silu(group_norm(h + emb, m.norm2.num_groups, m.norm2.weight.numpy(), m.norm2.bias.numpy()))
        h = m.conv2(Tensor(h)).numpy()
        skip = r(x) if m.skip is None else m.skip(Tensor(r(x))).numpy()
    return (skip + h) * (R2 if m.rescale else 1.0)


@pytest.mark.parametrize("resample,rescale", [("down", False), ("up", False), (None, True),
                                              ("down", True), ("up", True)])
@pytest.mark.parametrize("cin,cout", [(4, 4), (4, 6)])
def test_resblock_resample_and_rescale_formula(resample, rescale, cin, cout):
    m = _randomize(nn.ResBlock(cin, cout, 5, groups=2, rng=0, dtype=f64, resample=resample,
                               rescale=rescale), 3)
    x, e = _x((2, cin, 4, 6)), _x((2, 5), 1)
    out = m(Tensor(x), Tensor(e)).numpy()
    side = {None: 1, "down": 0.5, "up": 2}[resample]
    assert out.shape == (2, cout, int(4 * side), int(6 * side))
    np.testing.assert_allclose(out, _resblock_by_hand(m, x, e), rtol=1e-10, atol=1e-12)


def test_rescaled_resblock_is_the_plain_one_over_sqrt2():
    plain = _randomize(nn.ResBlock(4, 6, 5, groups=2, rng=0, dtype=f64), 2)
    scaled = nn.ResBlock(4, 6, 5, groups=2, rng=0, dtype=f64, rescale=True)
    scaled.load_state_dict(plain.state_dict())
    x, e = Tensor(_x((2, 4, 3, 3))), Tensor(_x((2, 5), 1))
    np.testing.assert_allclose(scaled(x, e).numpy(), plain(x, e).numpy() * R2, rtol=1e-14)
    with pytest.raises(ValueError, match="resample"):
        nn.ResBlock(4, 6, 5, resample="sideways")


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 1000), resample=st.sampled_from(["down", "up"]))
def test_resampling_resblock_gradcheck(seed, resample):
    m = _randomize(nn.ResBlock(2, 4, 3, groups=2, scale_shift=True, rng=seed, dtype=f64,
                               resample=resample, rescale=True), seed)
    check_grads(m, [_x((1, 2, 4, 4), seed), _x((1, 3), seed + 1)], order=2)


# --- skip connections: which tensors, and scaled by 1/sqrt(2) ------------------------------
def _trace(net, monkeypatch):
    """Record the input and output of each group of blocks the forward pass runs."""
    calls, run = [], unet_module.apply_blocks

    def recording(blocks, h, e, **kw):
        out = run(blocks, h, e, **kw)
        calls.append((h.numpy().copy(), out.numpy().copy()))
        return out
    monkeypatch.setattr(unet_module, "apply_blocks", recording)
    net(Tensor(_x((2, 1, 8, 8), 5)), np.array([3, 11]))
    return calls


@pytest.mark.parametrize("rescale_skip", [False, True])
@pytest.mark.parametrize("resample_first", [False, True])
def test_skips_are_the_down_outputs_scaled(rescale_skip, resample_first, monkeypatch):
    net = _randomize(nn.UNet(1, 1, 8, **KW, rescale_skip=rescale_skip,
                             resample_first=resample_first), 4)
    calls = _trace(net, monkeypatch)
    n_down = len(net.down)
    with no_grad():
        conv_in = net.conv_in(Tensor(_x((2, 1, 8, 8), 5))).numpy()
    skips = [conv_in] + [out for (_, out), keep in zip(calls[:n_down], net.skip_from) if keep]
    ups = calls[n_down + 1:]                                             # after the middle
    assert len(ups) == len(net.up) == len(skips)
    scale = R2 if rescale_skip else 1.0
    for inp, _ in ups:
        skip = skips.pop()
        np.testing.assert_array_equal(inp[:, -skip.shape[1]:], skip * scale)
    if resample_first:                                                   # the downsampled map is no skip
        assert calls[1][1].shape == (2, 4, 4, 4) and not net.skip_from[1]


# --- gradients through the variants ---------------------------------------------------------
@settings(max_examples=2, deadline=None)
@given(seed=st.integers(0, 1000), arch=st.sampled_from(["adm", "imagen"]))
def test_variant_unet_input_gradient(seed, arch):
    opts = unet_options(NetworkConfig(arch=arch, channels=4), 4, 2)
    opts["attn_res"] = (4, 2) if arch == "adm" else opts["attn_res"]
    net = _randomize(nn.UNet(1, 2, 4, channels=4, channel_mult=(1, 2), groups=2, rng=seed,
                             dtype=f64, aug_embed=True, **opts), seed)
    x = _x((2, 1, 4, 4), seed)
    check_vjp(lambda xx: net(xx, np.array([3, 70]), aug=np.array([0, 5])), [x])


# --- the architectures through ddpm's options ----------------------------------------------
def test_arch_presets():
    adm = unet_options(NetworkConfig(arch="adm"), 14, 2)
    assert adm == dict(num_res_blocks=2, attn_res=(14, 7), head_channels=16, scale_shift=True,
                       resblock_updown=True, rescale_residual=True, rescale_skip=False,
                       resample_first=False)
    assert unet_options(NetworkConfig(arch="adm"), 28, 3)["attn_res"] == (14, 7)
    img = unet_options(NetworkConfig(arch="imagen"), 28, 3)
    assert img == dict(num_res_blocks=(1, 2, 3), attn_res=None, head_channels=None,
                       scale_shift=False, resblock_updown=False, rescale_residual=False,
                       rescale_skip=True, resample_first=True)
    assert unet_options(NetworkConfig(arch="imagen"), 14, 2)["num_res_blocks"] == (1, 3)
    plain = unet_options(NetworkConfig(), 14, 2)
    assert plain["num_res_blocks"] == 2 and not any(
        plain[k] for k in ("scale_shift", "resblock_updown", "rescale_residual", "rescale_skip",
                           "resample_first"))
    # a switch set by name beats its arch
    assert unet_options(NetworkConfig(arch="adm", rescale_residual=False), 14, 2)["rescale_residual"] is False
    with pytest.raises(ValueError, match="arch must be one of"):
        unet_options(NetworkConfig(arch="bigunet"), 14, 2)


def test_ddpm_builds_each_arch_from_set_options():
    from refgen.runs import build_model, parse_sets
    m = build_model("ddpm", data_shape=(1, 14, 14), overrides=parse_sets(
        ["arch=adm", "channels=8"], DDPM))
    blocks = [b for b in m.net.modules() if isinstance(b, nn.ResBlock)]
    assert all(b.scale_shift and b.rescale for b in blocks)
    assert sorted(b.resample for b in blocks if b.resample) == ["down", "up"]
    m = build_model("ddpm", data_shape=(1, 14, 14), overrides=parse_sets(
        ["arch=imagen", "channels=8", "num_res_blocks=[2, 3]"], DDPM))
    assert m.net.num_res_blocks == (2, 3) and m.net.resample_first and m.net.skip_scale == R2


def test_every_unet_user_reads_the_arch():
    """ddpm, cascade-sr and the consistency models build their U-Net from one NetworkConfig."""
    from refgen.models import create
    for name, extra in (("ddpm", dict(T=40)), ("cascade-sr", dict(T=40)), ("consistency-training", {})):
        plain = create(name, data_shape=(1, 8, 8), channels=4, groups=2, **extra)
        nets = [m for m in plain.modules() if isinstance(m, nn.UNet)]
        assert nets and all(n.num_res_blocks == (2,) and n.skip_scale == 1.0 for n in nets)
    m = create("consistency-training", data_shape=(1, 8, 8), channels=4, groups=2, arch="imagen")
    assert all(n.skip_scale == R2 for n in m.modules() if isinstance(n, nn.UNet))


@pytest.mark.parametrize("opts", [{}, dict(resample_first=True), dict(resblock_updown=True),
                                  dict(num_res_blocks=(1, 3), resample_first=True)])
def test_encode_returns_the_skips_it_announces(opts):
    """encode's skips (what ControlNet adds to) match skip_channels in every layout, and
    decode(encode) is forward."""
    net = _randomize(nn.UNet(1, 1, 8, **dict(KW, **{k: v for k, v in opts.items() if k in KW}),
                             **{k: v for k, v in opts.items() if k not in KW}), 6)
    x, t = Tensor(_x((2, 1, 8, 8), 2)), np.array([4, 30])
    e = net.embed(t)
    h, skips = net.encode(x, e)
    assert tuple(s.shape[1] for s in skips) == net.skip_channels and h.shape[1] == net.mid_channels
    np.testing.assert_array_equal(net.decode(h, skips, e).numpy(), net(x, t).numpy())
