"""Cascaded diffusion: the low-resolution conditioning, noise conditioning augmentation (the
identity at level 0, q(z_s | z) at level s, through the public loss and sample), the
super-resolution model's loss on a tiny overfit, and the truncated and non-truncated cascades."""
import numpy as np
import pytest

from refgen.autograd import Tensor
from refgen.backend import default_rng, to_numpy
from refgen.models import create
from refgen.models.base import Batch
from refgen.models.diffusion import DDPM, CascadeSR, sample_cascade
from refgen.models.diffusion import cascade as C
from refgen.models.diffusion.sampling import sample_loop
from refgen.optim import Adam

pytestmark = pytest.mark.usefixtures("numpy_backend")

TINY = dict(channels=4, channel_mult=(1, 2), num_res_blocks=1, groups=2, T=40)


def _images(n, side=8, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 1, side, side)).astype(np.float32)


def _spy(model):
    """Record (network input, aug levels) of every call of the super-resolution network."""
    calls, net = [], model._sr_net

    def spy(xt, t_net, z_up, s, rng=None):
        calls.append((np.array(to_numpy(z_up)), np.array(to_numpy(s))))
        return net(xt, t_net, z_up, s, rng)
    model._sr_net = spy
    return calls


def test_down_and_upsampling():
    x = _images(3, 8)
    z = to_numpy(C.downsample(x, 2))
    np.testing.assert_allclose(z, x.reshape(3, 1, 4, 2, 4, 2).mean(axis=(3, 5)), rtol=1e-6)
    np.testing.assert_array_equal(to_numpy(C.upsample(z, 2)), z.repeat(2, 2).repeat(2, 3))


def test_registered_and_built_as_a_conditioned_unet():
    m = create("cascade-sr", data_shape=(1, 8, 8), **TINY)
    assert isinstance(m, CascadeSR) and m.low_shape == (1, 4, 4)
    assert m.net.conv_in.weight.shape[1] == 2                          # [x_t, up(z)]
    assert m.net.aug_embed is not None and m.num_classes is None
    for shape in ((1, 7, 7), (1, 7, 8), (1, 8, 7)):                    # height or width
        with pytest.raises(ValueError, match="divisible"):
            CascadeSR(shape, **TINY)
    with pytest.raises(ValueError, match="aug_max"):
        CascadeSR((1, 8, 8), aug_max=41, **TINY)


def test_default_augmentation_ceiling_is_a_quarter_of_the_chain():
    """aug_max defaults to T // 4 (the docstring's default), for both super-resolution
    stages; the training levels stay in 0..aug_max."""
    m = CascadeSR((1, 8, 8), **TINY)
    assert m.aug_max == m.T // 4 == 10
    calls = _spy(m)
    m.loss(Batch(Tensor(_images(64)), None), default_rng(3))
    assert calls[0][1].max() <= 10 and calls[0][1].max() >= 8          # 64 draws of U{0..10}
    up = create("glide-upsampler", data_shape=(1, 8, 8), T=20, channels=8, text_width=16,
                text_layers=1, text_heads=2, heads=2)
    assert up.aug_max == 5


def test_augmentation_at_level_zero_is_the_identity_bit_for_bit():
    """eq. (3) at s = 0: alpha_bar_0 = 1 returns z itself."""
    sch = CascadeSR((1, 8, 8), **TINY).schedule
    z = _images(4, 4)
    eps = np.random.default_rng(1).standard_normal(z.shape).astype(np.float32)
    out = to_numpy(C.noise_augment(sch, Tensor(z), np.zeros(4, np.int64), Tensor(eps)))
    np.testing.assert_array_equal(out, z)


def test_augmentation_at_level_s_is_q_of_z_s_given_z():
    """q(z_s | z) of eq. (3): mean sqrt(alpha_bar_s) z and variance 1 - alpha_bar_s, per
    pixel, over 20,000 draws."""
    sch = CascadeSR((1, 8, 8), **TINY).schedule
    z = np.array([-0.8, 0.3, 0.9])
    n, s = 20000, 17
    eps = np.random.default_rng(2).standard_normal((n, 3))
    zs = to_numpy(C.noise_augment(sch, np.broadcast_to(z, (n, 3)), np.full(n, s), eps))
    ab = sch.alpha_bar[s]
    se = np.sqrt((1 - ab) / n)
    assert np.all(np.abs(zs.mean(0) - np.sqrt(ab) * z) < 4 * se)
    np.testing.assert_allclose(zs.var(0), 1 - ab, rtol=4 * np.sqrt(2 / n))


def test_loss_feeds_the_augmented_low_res_image():
    """Through loss, eq. (3) on the conditioning: level 0 gives up(down(x)) exactly; at level s > 0 the standardized
    z_s - sqrt(alpha_bar_s) z is N(0, 1); the levels are uniform on 0..aug_max."""
    m = CascadeSR((1, 8, 8), aug_max=30, **TINY)
    calls = _spy(m)
    x = _images(400, 8, 3)
    m.loss(Batch(Tensor(x)), rng=default_rng(0))
    (z_up, s), = calls
    z = to_numpy(C.downsample(x, 2))                                  # the model's own pooling
    np.testing.assert_allclose(z, x.reshape(400, 1, 4, 2, 4, 2).mean(axis=(3, 5)), rtol=1e-5, atol=1e-6)
    assert s.min() == 0 and s.max() == 30 and 10 < s.mean() < 20
    zero = s == 0
    np.testing.assert_array_equal(z_up[zero], C.upsample(z[zero], 2))
    zs = z_up[~zero][:, :, ::2, ::2]                                   # back to 4x4
    ab = m.schedule.alpha_bar[s[~zero]][:, None, None, None]
    r = (zs - np.sqrt(ab) * z[~zero]) / np.sqrt(1 - ab)
    assert abs(r.mean()) < 4 / np.sqrt(r.size) and abs(r.var() - 1) < 4 * np.sqrt(2 / r.size)
    calls.clear()
    no_aug = CascadeSR((1, 8, 8), aug_max=0, **TINY)
    calls = _spy(no_aug)
    no_aug.loss(Batch(Tensor(x[:8])), rng=default_rng(0))
    assert not calls[0][1].any()
    np.testing.assert_array_equal(calls[0][0], C.upsample(z[:8], 2))


def test_sample_conditions_on_cond_at_the_asked_level():
    """sample corrupts cond by eq. (3) at aug_level, not at all at level 0 or when told not to."""
    m = CascadeSR((1, 8, 8), **TINY)
    calls = _spy(m)
    z = _images(6, 4, 4)
    x = m.sample(6, cond=z, rng=default_rng(0), steps=2)
    assert x.shape == (6, 1, 8, 8) and len(calls) == 2
    np.testing.assert_array_equal(calls[0][0], C.upsample(z, 2))      # level 0: z as it is
    assert not calls[0][1].any()
    calls.clear()
    m.sample(6, cond=z, rng=default_rng(0), steps=1, aug_level=25)
    assert (calls[0][1] == 25).all() and not np.allclose(calls[0][0], C.upsample(z, 2))
    calls.clear()
    m.sample(6, cond=z, rng=default_rng(0), steps=1, aug_level=25, corrupt=False)
    np.testing.assert_array_equal(calls[0][0], C.upsample(z, 2))
    with pytest.raises(ValueError, match="pass cond"):
        m.sample(6, rng=default_rng(0))
    with pytest.raises(ValueError, match=r"\(6, 1, 4, 4\)"):
        m.sample(6, cond=_images(6, 8), rng=default_rng(0))


def test_the_network_reads_the_conditioning():
    m = CascadeSR((1, 8, 8), **TINY)
    rng = np.random.default_rng(0)
    for p in m.parameters():
        p.data = rng.normal(0, 0.3, p.shape).astype(p.dtype)
    xt, t, s = _images(2, 8), np.array([3, 9]), np.array([0, 0])
    a = m._sr_net(xt, t, C.upsample(_images(2, 4, 1), 2), s).numpy()
    b = m._sr_net(xt, t, C.upsample(_images(2, 4, 2), 2), s).numpy()
    c = m._sr_net(xt, t, C.upsample(_images(2, 4, 2), 2), np.array([5, 5])).numpy()
    assert np.abs(a - b).max() > 1e-3 and np.abs(b - c).max() > 1e-3


def test_loss_decreases_on_a_tiny_overfit():
    """L_simple (19) of the super-resolution model, at fixed noise, falls on 8 images."""
    m = CascadeSR((1, 8, 8), seed=0, aug_max=10, **TINY)
    x = Tensor(_images(8, 8, 5))

    def fixed_loss():
        return float(m.loss(Batch(x), rng=default_rng(123)).item())
    before = fixed_loss()
    opt = Adam(m.parameters(), lr=5e-3)
    rng = default_rng(0)
    for _ in range(25):
        loss = m.loss(Batch(x), rng=rng)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert fixed_loss() < 0.5 * before                                 # 0.98 -> 0.24 when written


def test_elbo_is_conditional_on_the_images_own_low_res():
    m = CascadeSR((1, 8, 8), vlb_timesteps=4, **TINY)
    x = _images(3, 8)
    a = to_numpy(m.vlb_terms(x, rng=default_rng(0))["vlb"])
    b = to_numpy(m.vlb_terms(x, rng=default_rng(0), cond=to_numpy(C.downsample(x, 2)))["vlb"])
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3,) and np.isfinite(a).all()


def test_sample_loop_stop_is_the_first_part_of_the_chain():
    base = DDPM((1, 4, 4), **dict(TINY, T=24), class_cond=False)
    rng = np.random.default_rng(1)
    for p in base.parameters():
        p.data = rng.normal(0, 0.2, p.shape).astype(p.dtype)
    sch = base.schedule
    x_T = _images(2, 4, 7)
    kw = dict(sampler="ddim", eta=0.0, x_T=x_T)
    full = sample_loop(base.predictor(sch, 2), sch, (2, 1, 4, 4), default_rng(0), **kw)
    half = sample_loop(base.predictor(sch, 2), sch, (2, 1, 4, 4), default_rng(0), stop=10, **kw)
    rest = sch.respace(np.arange(1, 11))                               # steps 10..1 of the chain
    kw["x_T"] = half
    np.testing.assert_allclose(sample_loop(base.predictor(rest, 2), rest, (2, 1, 4, 4),
                                           default_rng(0), **kw), full, rtol=1e-5, atol=1e-6)


def test_cascade_truncated_and_not(monkeypatch):
    base = DDPM((1, 4, 4), **TINY, class_cond=False)
    sr = CascadeSR((1, 8, 8), **TINY)
    seen = []
    sample = sr.sample

    def spy(n, cond=None, *, rng, **kw):
        seen.append((np.array(cond), kw))
        return sample(n, cond, rng=rng, **kw)
    monkeypatch.setattr(sr, "sample", spy)
    x, z = sample_cascade(base, sr, 3, rng=0, steps=4, sr_steps=2, aug_level=15)
    assert x.shape == (3, 1, 8, 8) and z.shape == (3, 1, 4, 4)
    assert seen[-1][1]["aug_level"] == 15 and seen[-1][1].get("corrupt", True)
    # truncated: steps 4 of T=40 keep t = 1, 14, 27, 40; the chain stops at 14 (<= 15)
    x, z = sample_cascade(base, sr, 3, rng=0, steps=4, sr_steps=2, aug_level=15, truncated=True)
    assert seen[-1][1]["aug_level"] == 14 and seen[-1][1]["corrupt"] is False
    np.testing.assert_array_equal(seen[-1][0], z)
    other = CascadeSR((1, 8, 8), **dict(TINY, T=50))
    with pytest.raises(ValueError, match="share a schedule"):
        sample_cascade(base, other, 3, rng=0, aug_level=15, truncated=True)


def test_draw_samples_splits_cond_by_chunk():
    from refgen.train import draw_samples
    m = CascadeSR((1, 8, 8), **TINY)
    z = _images(5, 4)
    sizes = []

    class Stage:
        def update(self, *a):
            sizes.append(a[0])
    out = draw_samples(m, 5, default_rng(0), Stage(), chunk=2, options={"cond": z, "steps": 1})
    assert out.shape == (5, 1, 8, 8) and sizes == [2, 4, 5]


def test_refgen_sample_upsamples_the_first_test_images(tmp_path, mnist_dir, capsys):
    """`refgen sample DIR` on a cascade-sr run: the first n test images' low-res versions are
    the condition (as in the loop's sample grid); a --prompt is refused in one line."""
    from refgen.cli import main
    from refgen.data import load
    from refgen.train import train
    kw = dict(T=30, channels=8, groups=4, num_res_blocks=1, aug_max=5)
    run, ds = tmp_path / "run", load("mnist", "test", data_dir=mnist_dir)
    cfg = {"model": "cascade-sr", "data": "mnist", "data_dir": str(mnist_dir), "train": {"seed": 0},
           "data_facts": {"shape": [1, 28, 28], "kind": "continuous"}, "model_kwargs": kw}
    train(create("cascade-sr", data_shape=(1, 28, 28), seed=0, **kw), ds, steps=1, batch_size=4, lr=1e-3,
          out_dir=run, progress=False, samples=False, evaluate_at_end=False, config=cfg)
    out = tmp_path / "up.png"
    assert main(["sample", str(run), "-n", "3", "--steps", "2", "--out", str(out), "-q"]) == 0
    assert out.exists()
    assert main(["sample", str(run), "--prompt", "a seven", "-n", "3", "--out", str(out), "-q", "--force"]) != 0
    assert "takes no --prompt" in capsys.readouterr().err
