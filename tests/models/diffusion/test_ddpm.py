"""The registered ``ddpm`` model: construction from the CLI's arguments, every option's loss
and sampler path, guidance, likelihood, and a short training run on 2D data."""
import math

import numpy as np
from refgen.backend import default_rng
import pytest

from refgen import models
from refgen.autograd import Tensor
from refgen.backend import asarray, to_numpy
from refgen.models.base import Batch, constructor_kwargs
from refgen.models.diffusion import DDPM, NoisyClassifier
from refgen.models.diffusion.process import interpret, score_from_eps
from refgen.models.diffusion.sampling import threshold_x0
from refgen.testing import on_backend


def test_registered_and_built_like_the_cli():
    assert "ddpm" in models.names() and models.get("ddpm") is DDPM
    kw = constructor_kwargs(DDPM, data_shape=(1, 8, 8), num_classes=10, seed=3,
                            overrides={"T": 50, "channels": 8})
    m = DDPM(**kw)
    assert m.num_classes == 10 and m.image
    assert DDPM(data_shape=(1, 8, 8), num_classes=10, class_cond=False, channels=8).num_classes is None
    with pytest.raises(ValueError, match="parameterization"):
        DDPM((2,), parameterization="score")
    with pytest.raises(ValueError, match="data_scale"):
        DDPM((1, 8, 8), data_scale=2.0)


@pytest.mark.parametrize("param,learn", [("eps", False), ("x0", False), ("v", False),
                                         ("eps", True), ("v", True)])
def test_vector_model_options(param, learn):
    m = DDPM((2,), T=100, parameterization=param, learn_sigma=learn, hidden=16, depth=1)
    x = Tensor(np.random.default_rng(0).standard_normal((32, 2)).astype(np.float32))
    loss = m.loss(Batch(x), default_rng(0))
    assert loss.shape == () and math.isfinite(loss.item())
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())
    if learn:
        assert set(m.last_stats) == {"l_simple", "l_vlb"}
    for kw in (dict(), dict(sampler="ddim", steps=7), dict(sampler="ddim", eta=1.0, steps=7),
               dict(steps=5, threshold="dynamic")):
        s = m.sample(6, rng=default_rng(0), **kw)
        assert s.shape == (6, 2) and s.dtype == np.float32 and np.all(np.isfinite(s))
    parts = m.vlb_terms(x.data[:4], timesteps=5, rng=default_rng(0))
    assert parts["vlb"].shape == (4,) and np.all(np.isfinite(parts["vlb"]))


def test_image_model_guidance_and_likelihood():
    m = DDPM((1, 8, 8), num_classes=3, T=30, channels=8, num_res_blocks=1, learn_sigma=True,
             guidance=2.0, threshold="static")
    rng = np.random.default_rng(0)
    x = Tensor(np.rint(rng.uniform(0, 255, (4, 1, 8, 8))).astype(np.float32) / 127.5 - 1)
    loss = m.loss(Batch(x, np.array([0, 1, 2, 1])), default_rng(0))
    loss.backward()
    assert math.isfinite(loss.item())
    s = m.sample(3, cond=np.array([0, 1, 2]), rng=default_rng(1), steps=3)           # classifier-free (26)
    assert s.shape == (3, 1, 8, 8) and np.all(np.abs(s) <= 1.0 + 1e-6)
    assert m.sample(2, rng=default_rng(1), steps=2).shape == (2, 1, 8, 8)              # unconditional
    clf = NoisyClassifier((1, 8, 8), 3, T=30, channels=8)
    clf.loss(Batch(x, np.array([0, 1, 2, 1])), default_rng(0)).backward()
    s = m.sample(2, cond=np.array([2]), rng=default_rng(2), steps=3, guidance=0.0, classifier=clf,
                 classifier_scale=3.0)                                    # classifier (25)
    assert s.shape == (2, 1, 8, 8)
    elbo = m.elbo(x.data[:2], rng=default_rng(0))
    assert elbo.shape == (2,) and np.all(elbo < 0)                       # log P(pixels) < 0


def test_classifier_guidance_of_the_unconditional_mode():
    """unconditional=True: the network sees the null label and only the classifier sees cond.
    At scale 0 the guided sampler is then exactly the unconditional one (and without the flag,
    exactly the conditional one); at scale > 0 the classifier moves the samples."""
    m = DDPM((1, 8, 8), num_classes=3, T=30, channels=8, num_res_blocks=1)
    for p in m.parameters():  # a non-zero output head, so that labels change eps
        p.data += asarray(0.05 * np.random.default_rng(1).standard_normal(p.data.shape).astype(p.data.dtype))
    clf = NoisyClassifier((1, 8, 8), 3, T=30, channels=8)
    y = np.array([0, 1, 2])
    kw = dict(steps=4, threshold="none")
    uncond, cond = m.sample(3, **kw, rng=default_rng(5)), m.sample(3, cond=y, guidance=0.0, **kw, rng=default_rng(5))
    assert np.abs(uncond - cond).max() > 1e-4                            # the label matters
    g0 = m.sample(3, cond=y, classifier=clf, classifier_scale=0.0, unconditional=True, **kw, rng=default_rng(5))
    np.testing.assert_array_equal(g0, uncond)
    c0 = m.sample(3, cond=y, guidance=0.0, classifier=clf, classifier_scale=0.0, **kw, rng=default_rng(5))
    np.testing.assert_array_equal(c0, cond)
    g = m.sample(3, cond=y, classifier=clf, classifier_scale=50.0, unconditional=True, **kw, rng=default_rng(5))
    assert np.abs(g - uncond).max() > 1e-4
    with pytest.raises(ValueError, match="classifier"):
        m.sample(3, cond=y, unconditional=True, **kw, rng=default_rng(5))


def test_sampling_variance_override_equals_a_model_built_with_it():
    """sample(variance='beta') on a beta_tilde model draws exactly what the same weights built
    with variance='beta' draw; a learned-variance model refuses the override."""
    a = DDPM((2,), T=40, hidden=16, depth=1, variance="beta_tilde")
    b = DDPM((2,), T=40, hidden=16, depth=1, variance="beta")
    b.load_state_dict(a.state_dict())
    kw = dict(steps=5, sampler="ddpm")
    np.testing.assert_array_equal(a.sample(6, variance="beta", **kw, rng=default_rng(3)), b.sample(6, **kw, rng=default_rng(3)))
    assert np.abs(a.sample(6, **kw, rng=default_rng(3)) - b.sample(6, **kw, rng=default_rng(3))).max() > 1e-4  # the choice matters
    with pytest.raises(ValueError, match="variance"):
        DDPM((2,), T=40, hidden=16, depth=1, learn_sigma=True).sample(2, variance="beta", **kw, rng=default_rng(3))


@pytest.mark.parametrize("param,learn", [("eps", False), ("x0", False), ("v", False),
                                         ("eps", True)])
@on_backend("numpy")
def test_loss_value_is_l_simple_on_the_models_own_draws(param, learn):
    """m.loss at data_scale 2: t ~ U{1..T} and eps ~ N(0, I) from m.rng (in that order),
    x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps with x_0 = x / 2, and L_simple the mean square
    of (target - network output), the target eps, x_0 or v = sqrt(ab) eps - sqrt(1 - ab) x_0
    written here from the linear schedule's constants (T = 100: beta from 1e-3 to 0.2);
    with learn_sigma, loss = L_simple + 0.001 L_vlb (the default lambda)."""
    T = 100
    m = DDPM((2,), T=T, parameterization=param, learn_sigma=learn, hidden=16, depth=1,
             data_scale=2.0)
    x = np.random.default_rng(0).standard_normal((16, 2)).astype(np.float32)
    noise = np.random.default_rng(3)
    loss = float(m.loss(Batch(Tensor(x)), noise).item())
    rng = np.random.default_rng(3)
    t = rng.integers(1, T + 1, size=16)
    eps = rng.standard_normal((16, 2), dtype=np.float32).astype(np.float64)
    ab = np.cumprod(1 - np.linspace(1e-3, 0.2, T))[t - 1][:, None]
    x0 = x.astype(np.float64) / 2.0
    xt = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps
    out = m.net(Tensor(xt.astype(np.float32)), t, None, rng=rng).data.astype(np.float64)
    target = {"eps": eps, "x0": x0, "v": np.sqrt(ab) * eps - np.sqrt(1 - ab) * x0}[param]
    simple = ((target - out[:, :2]) ** 2).mean()
    if not learn:
        assert loss == pytest.approx(simple, rel=1e-5)
    else:
        assert m.last_stats["l_simple"] == pytest.approx(simple, rel=1e-5)
        assert loss == pytest.approx(simple + 0.001 * m.last_stats["l_vlb"], rel=1e-5)


def test_thresholding():
    host = np.array([[0.5, -0.2, 0.1], [3.0, -1.5, 0.2]])
    x0 = asarray(host)
    np.testing.assert_array_equal(to_numpy(threshold_x0(x0, "static")), np.clip(host, -1, 1))
    d = to_numpy(threshold_x0(x0, "dynamic", percentile=1.0))
    np.testing.assert_allclose(d[0], host[0])                            # |x0| <= 1: unchanged
    np.testing.assert_allclose(d[1], host[1] / 3.0)                      # s = 3: rescaled
    assert threshold_x0(x0, None) is x0


def test_dynamic_thresholding_at_its_default_and_a_generic_percentile():
    """s = max(quantile_p |x0|, 1) per sample, x0 -> clip(x0, -s, s) / s; the default p is
    Imagen's 0.995 (numpy.quantile's linear interpolation)."""
    host = np.random.default_rng(3).standard_normal((3, 40)) * np.array([[0.3], [1.5], [4.0]])
    for p, kw in ((0.995, {}), (0.8, dict(percentile=0.8))):
        s = np.maximum(np.quantile(np.abs(host), p, axis=1), 1.0)[:, None]
        got = to_numpy(threshold_x0(asarray(host), "dynamic", **kw))
        np.testing.assert_allclose(got, np.clip(host, -s, s) / s, rtol=1e-6)
        assert s[0, 0] == 1.0 and s[2, 0] > s[1, 0] > 1.0   # one untouched row, two rescaled


def test_score_is_eq21_in_data_space():
    """DDPM.score is eq. (21) applied to the network's eps at x / data_scale, mapped back to
    data space by the chain rule (a factor 1 / data_scale)."""
    m = DDPM((2,), T=100, data_scale=2.0, hidden=8, depth=1)
    for p in m.parameters():
        p.data = asarray(np.random.default_rng(0).normal(0, 0.3, p.shape).astype(np.float32))
    x = asarray(np.random.default_rng(1).standard_normal((5, 2)).astype(np.float32))
    z = x / 2.0
    out = m.net(Tensor(z), asarray(np.full(5, 40))).data
    pred = interpret(out, z, 40, m.schedule)
    np.testing.assert_allclose(to_numpy(m.score(x, 40)),
                               to_numpy(score_from_eps(m.schedule, z, 40, pred.eps) / 2), rtol=1e-5)


def test_short_training_learns_the_noise(tmp_path):
    """A few hundred steps on 8 Gaussians: L_simple falls well below its starting value of
    about 1 (predicting 0 for eps ~ N(0, I))."""
    from refgen import data
    from refgen.train import train
    ds = data.load("8gaussians", "train")
    m = DDPM((2,), T=200, hidden=64, depth=2)
    out = train(m, ds, steps=150, batch_size=128, lr=3e-3, out_dir=tmp_path, progress=False,
                samples=False, log_every=50)
    assert out["loss"] < 0.6
