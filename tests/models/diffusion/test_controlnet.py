"""ControlNet (refgen.models.diffusion.controlnet): y_c = F(x) + Z2(F_c(x + Z1(c))) over a
frozen ddpm U-Net. The base is a tiny U-Net on 8x8 images whose weights are made generic (as
after training): a fresh U-Net's zero-initialised output layers would hide every gradient."""
import numpy as np
import pytest

from refgen import optim
from refgen.autograd import Tensor
from refgen.backend import default_rng
from refgen.models.base import Batch
from refgen.models.diffusion import DDPM
from refgen.models.diffusion.controlnet import ControlNet

pytestmark = pytest.mark.usefixtures("numpy_backend")

SHAPE = (1, 8, 8)
# channels 8, channel_mult (1, 2), one ResBlock per level: skips of 8, 8, 8 (downsample), 16
# channels and a middle of 16 at 4x4
NET = dict(T=30, schedule="cosine", channels=8, channel_mult=(1, 2), num_res_blocks=1,
           class_cond=False)


def _base(seed=0, **kw):
    base = DDPM(SHAPE, **dict(NET, **kw))
    g = np.random.default_rng(100 + seed)
    for p in base.parameters():  # generic weights, as a trained base has
        p.data = p.data + np.float32(0.1) * g.standard_normal(p.shape).astype(np.float32)
    return base


def _pairs(n=4, seed=1):
    g = np.random.default_rng(seed)
    x = np.clip(g.standard_normal((n,) + SHAPE), -1, 1).astype(np.float32)
    c = (g.random((n,) + SHAPE) > 0.5).astype(np.float32)
    return x, c


def _grads(model, prefix):
    return [p.grad for k, p in model.named_parameters() if k.startswith(prefix)]


def _max_abs(grads):
    return max(float(np.abs(g.data).max()) for g in grads)


def test_initial_prediction_and_samples_equal_the_base_bit_for_bit():
    """Zhang et al. 2023, eq. 2 with every Z zero: y_c = F(x; Theta), to the last bit."""
    base = _base()
    cn = ControlNet(SHAPE, base=base)
    x, c = _pairs(4)
    t = np.array([3, 10, 17, 29])
    np.testing.assert_array_equal(cn(Tensor(x), t, c).data, base.net(Tensor(x), t).data)
    # and a whole reverse chain, driven by one seed, with any control
    s_cn = cn.sample(4, cond=c, rng=default_rng(5), steps=10)
    np.testing.assert_array_equal(s_cn, base.sample(4, rng=default_rng(5), steps=10))
    # the same holds for a class-conditional base (its null label) and learned variance
    base2 = _base(1, num_classes=10, class_cond=True, learn_sigma=True)
    assert base2.num_classes == 10
    cn2 = ControlNet(SHAPE, base=base2)
    np.testing.assert_array_equal(cn2.sample(4, cond=c, rng=default_rng(6), steps=5),
                                  base2.sample(4, rng=default_rng(6), steps=5))
    # no control: the base's own sample
    np.testing.assert_array_equal(cn.sample(3, rng=default_rng(7), steps=4),
                                  base.sample(3, rng=default_rng(7), steps=4))


def test_the_copy_starts_as_the_base_encoder_and_has_no_decoder():
    base = _base()
    cn = ControlNet(SHAPE, base=base)
    mine = dict(cn.copy.named_parameters())
    theirs = dict(base.net.named_parameters())
    assert mine and set(mine) == {k for k in theirs
                                  if not k.startswith(("up.", "norm_out.", "conv_out."))}
    for k, p in mine.items():
        np.testing.assert_array_equal(p.data, theirs[k].data)
        assert p.data is not theirs[k].data and p.requires_grad
    # the base is frozen and outside the module: not trained, averaged or checkpointed
    assert not any(k.startswith("base.") for k in cn.state_dict())
    assert all(not p.requires_grad for p in cn.base.parameters())


def test_zero_convolutions_take_the_first_gradients_and_the_base_none():
    """Step 1: only Z2 (every skip's and the middle's zero conv) gets a gradient: whatever is
    before it sees dL/dy W_z2 = 0, so Z1, the copy and the control encoder E get exact zeros.
    Step 2 (after Adam moved W_z2): the copy and Z1 get gradients; E, behind W_z1 (still 0),
    gets zeros until step 3. The frozen base gets no gradient and no update."""
    base = _base()
    cn = ControlNet(SHAPE, base=base)
    frozen = {k: p.data.copy() for k, p in cn.base.named_parameters()}
    opt = optim.Adam([p for p in cn.parameters() if p.requires_grad], lr=1e-2)
    x, c = _pairs(4)
    rng = default_rng(0)

    def step():
        opt.zero_grad()
        cn.loss(Batch(Tensor(x), c), rng).backward()
        grads = {name: _grads(cn, name) for name in ("zero_skips", "zero_mid", "zero_in", "copy", "hint")}
        opt.step()
        return grads

    g1 = step()
    for name in ("zero_skips", "zero_mid"):
        assert len(g1[name]) == (8 if name == "zero_skips" else 2)       # weight and bias each
        assert all(float(np.abs(g.data).max()) > 1e-6 for g in g1[name]), name
    for name in ("zero_in", "copy", "hint"):
        assert all(g is not None for g in g1[name]) and _max_abs(g1[name]) == 0.0, name
    assert all(p.grad is None for p in cn.base.parameters())
    for k, p in cn.base.named_parameters():
        np.testing.assert_array_equal(p.data, frozen[k])

    g2 = step()
    assert _max_abs(g2["copy"]) > 1e-6
    assert all(float(np.abs(g.data).max()) > 1e-7 for g in g2["zero_in"])
    assert _max_abs(g2["hint"]) == 0.0
    g3 = step()
    assert _max_abs(g3["hint"]) > 1e-8
    for k, p in cn.base.named_parameters():
        np.testing.assert_array_equal(p.data, frozen[k])


def _zero_conv_params(k):
    return k * k + k  # a 1x1 convolution k -> k: weight k x k, bias k


@pytest.mark.parametrize("layers, width, hint_params, z1_params", [
    (2, 16, (1 * 9 * 16 + 16) + (16 * 9 * 16 + 16), 16 * 8 + 8),  # E: 1 -> 16 -> 16; Z1: 16 -> 8
    (2, 4, (1 * 9 * 4 + 4) + (4 * 9 * 4 + 4), 4 * 8 + 8),         # narrower E
    (1, 16, 1 * 9 * 16 + 16, 16 * 8 + 8),                         # one conv in E
    (0, 16, 0, 1 * 8 + 8),                                        # Z1 on the control itself
])
def test_parameter_counts(layers, width, hint_params, z1_params):
    base = _base()
    cn = ControlNet(SHAPE, base=base, hint_layers=layers, hint_channels=width)
    count = lambda prefix: sum(int(p.size) for k, p in cn.named_parameters() if k.startswith(prefix))
    assert count("hint") == hint_params
    assert count("zero_in") == z1_params
    # Z2: skips of 8, 8, 8, 16 channels and the middle's 16
    assert count("zero_skips") == 3 * _zero_conv_params(8) + _zero_conv_params(16) == 488
    assert count("zero_mid") == _zero_conv_params(16) == 272
    decoder = sum(int(p.size) for k, p in base.net.named_parameters()
                  if k.startswith(("up.", "norm_out.", "conv_out.")))
    assert count("copy") == base.num_parameters() - decoder
    assert cn.num_parameters() == count("copy") + hint_params + z1_params + 488 + 272


def test_two_control_channels():
    cn = ControlNet(SHAPE, base=_base(), control_channels=2, hint_layers=0)
    assert sum(int(p.size) for k, p in cn.named_parameters() if k.startswith("zero_in")) == 2 * 8 + 8
    x, _ = _pairs(2)
    assert cn.loss(Batch(Tensor(x), np.ones((2, 2, 8, 8), np.float32)), default_rng(0)).item() > 0


def test_loss_is_l_simple_of_the_controlled_prediction():
    """loss(batch, rng) = L_simple (19) of the controlled prediction at x_t of eq. (3), with t
    and eps drawn from rng in that order."""
    base = _base()
    cn = ControlNet(SHAPE, base=base)
    for p in cn.zero_mid.parameters():  # a ControlNet that changes the prediction
        p.data = np.random.default_rng(3).standard_normal(p.shape).astype(np.float32) * 0.3
    x, c = _pairs(4)
    got = cn.loss(Batch(Tensor(x), c), default_rng(11)).item()
    rng = default_rng(11)
    t = rng.integers(1, base.T + 1, size=4)
    eps = rng.standard_normal(x.shape, dtype=np.float32)
    ab = base.schedule.alpha_bar[t][:, None, None, None]
    xt = np.sqrt(ab) * x + np.sqrt(1 - ab) * eps
    out = cn(Tensor(xt.astype(np.float32)), base.schedule.net_t[t], c).data
    np.testing.assert_allclose(got, np.mean((eps - out) ** 2), rtol=1e-5)
    assert not np.allclose(out, base.net(Tensor(xt.astype(np.float32)), base.schedule.net_t[t]).data)


def test_loss_decreases_on_a_tiny_overfit_and_the_control_matters():
    base = _base()
    cn = ControlNet(SHAPE, base=base)
    x, c = _pairs(4)
    batch = Batch(Tensor(x), c)
    before = cn.loss(batch, default_rng(0)).item()
    opt = optim.Adam([p for p in cn.parameters() if p.requires_grad], lr=1e-2)
    rng = default_rng(1)
    for _ in range(30):
        opt.zero_grad()
        cn.loss(batch, rng).backward()
        opt.step()
    after = cn.loss(batch, default_rng(0)).item()
    assert after < 0.7 * before, (before, after)
    # the learned residuals depend on the control: other controls give other predictions
    t = np.full(4, 15)
    xt = Tensor(x)
    assert np.abs(cn(xt, t, c).data - cn(xt, t, 1.0 - c).data).max() > 1e-3


def test_bad_input_gets_one_clear_line():
    base = _base()
    with pytest.raises(ValueError, match="base=runs/<ddpm run>"):
        ControlNet(SHAPE)
    with pytest.raises(ValueError, match="trained on images"):
        ControlNet((2,), base=DDPM((2,), T=30))
    with pytest.raises(ValueError, match="hint_layers"):
        ControlNet(SHAPE, base=base, hint_layers=-1)
    cn = ControlNet(SHAPE, base=base)
    x, c = _pairs(2)
    with pytest.raises(ValueError, match="control image per example"):
        cn.loss(Batch(Tensor(x), np.array([3, 7])), default_rng(0))     # labels, not controls
    with pytest.raises(ValueError, match="batch.y must hold the controls"):
        cn.loss(Batch(Tensor(x)), default_rng(0))
    with pytest.raises(ValueError, match=r"\(3, 1, 8, 8\)"):
        cn.sample(3, cond=c, rng=default_rng(0), steps=2)                # 2 controls for 3 samples
    # one control for every sample is accepted
    assert cn.sample(3, cond=c[0], rng=default_rng(0), steps=2).shape == (3,) + SHAPE


def test_state_dict_round_trip():
    base = _base()
    cn = ControlNet(SHAPE, base=base)
    for p in cn.parameters():
        if p.requires_grad:
            p.data = p.data + np.float32(0.05)
    other = ControlNet(SHAPE, base=base, seed=3)
    other.load_state_dict(cn.state_dict())
    x, c = _pairs(2)
    t = np.array([4, 20])
    np.testing.assert_array_equal(other(Tensor(x), t, c).data, cn(Tensor(x), t, c).data)


@pytest.mark.parametrize("which", ["skip0", "skip3", "mid"])
def test_each_output_zero_conv_carries_the_copys_features(which):
    """Zhang et al. 2023, eq. 2 term by term: with only one Z2 made non-zero, the prediction
    depends on the control (Z2 reads the copy's features, which saw it); with only its bias
    non-zero, it does not."""
    base = _base()
    cn = ControlNet(SHAPE, base=base)
    z = cn.zero_mid if which == "mid" else cn.zero_skips[int(which[-1])]
    g = np.random.default_rng(4)
    for p in list(z.parameters()) + list(cn.zero_in.parameters()):
        p.data = (0.5 * g.standard_normal(p.shape)).astype(np.float32)
    x, c = _pairs(4)
    t = np.array([2, 9, 14, 25])
    a, b = cn(Tensor(x), t, c).data, cn(Tensor(x), t, 1.0 - c).data
    assert np.abs(a - b).max() > 1e-4
    # bias only (weight zeroed): a constant shift, independent of the control
    z.weight.data = np.zeros_like(z.weight.data)
    np.testing.assert_array_equal(cn(Tensor(x), t, c).data, cn(Tensor(x), t, 1.0 - c).data)


def test_unet_encode_adds_the_hint_after_conv_in_and_forward_is_decode_of_encode():
    base = _base()
    net = base.net
    x, _ = _pairs(3)
    t = np.array([1, 12, 30])
    e = net.embed(t, None)
    h, skips = net.encode(Tensor(x), e)
    assert [s.shape[1] for s in skips] == list(net.skip_channels) and h.shape[1] == net.mid_channels
    np.testing.assert_array_equal(net.decode(h, skips, e).data, net(Tensor(x), t).data)
    # a hint constant over positions acts as a shift of conv_in's bias
    v = np.random.default_rng(5).standard_normal(net.skip_channels[0]).astype(np.float32)
    hint = np.broadcast_to(v[None, :, None, None], (3, len(v)) + SHAPE[1:]).copy()
    h1, s1 = net.encode(Tensor(x), e, hint=Tensor(hint))
    net.conv_in.bias.data = net.conv_in.bias.data + v
    h2, s2 = net.encode(Tensor(x), e)
    np.testing.assert_allclose(h1.data, h2.data, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s1[0].data, s2[0].data, rtol=1e-6, atol=1e-6)


@pytest.mark.slow  # a minute on two shared cores: two runs, each drawing its samples.png
def test_the_cli_trains_a_controlnet_over_a_ddpm_run(tmp_path, mnist_dir):
    """refgen train ddpm, then refgen train controlnet --set base=DIR on mnist-14-edges; the
    run directory rebuilds (load_run) into a model whose controlled samples differ from the
    base's and whose uncontrolled ones are the base's."""
    from refgen.cli import main
    from refgen.runs import load_run
    base, run = tmp_path / "base", tmp_path / "cn"
    net = ["--set", "channels=8", "--set", "num_res_blocks=1", "--set", "T=30",
           "--set", "schedule=cosine", "--set", "class_cond=false"]
    assert main(["train", "ddpm", "--data", "mnist-14", "--steps", "3", "--batch-size", "4",
                 "--out", str(base), "-q", "--no-eval"] + net) == 0
    assert main(["train", "controlnet", "--data", "mnist-14-edges", "--steps", "3",
                 "--batch-size", "4", "--lr", "1e-2", "--out", str(run), "-q", "--no-eval",
                 "--set", f"base={base}"]) == 0
    cn = load_run(run)[0]
    assert isinstance(cn, ControlNet)
    c = np.zeros((2, 1, 14, 14), np.float32)
    c[:, :, 4:10, 4:10] = 1
    a = cn.sample(2, cond=c, rng=default_rng(0), steps=3)
    b = cn.base.sample(2, rng=default_rng(0), steps=3)
    assert a.shape == (2, 1, 14, 14) and not np.array_equal(a, b)
    np.testing.assert_array_equal(cn.sample(2, rng=default_rng(0), steps=3), b)
