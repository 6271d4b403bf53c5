"""The Gaussian-mixture baseline: exact log-density, sampling, and the model conventions."""
import math

import numpy as np
from refgen.backend import default_rng
import pytest
from hypothesis import given, strategies as st

from refgen import models
from refgen.autograd import Tensor
from refgen.backend import to_numpy
from refgen.models.base import Batch, constructor_kwargs
from refgen.models.baseline.gmm import GaussianMixture
from refgen.testing import check_grads, on_backend



def _set(model, logits, mu, log_sigma):
    model.load_state_dict({"logits": logits, "mu": mu, "log_sigma": log_sigma})


def _reference_log_prob(x, logits, mu, log_sigma):
    """log sum_k pi_k prod_d N(x_d; mu_kd, sigma_kd^2), straight from the formula, float64."""
    pi = np.exp(logits - logits.max())
    pi /= pi.sum()
    sigma = np.exp(log_sigma)
    dens = np.prod(np.exp(-0.5 * ((x[:, None, :] - mu) / sigma) ** 2) / (np.sqrt(2 * np.pi) * sigma),
                   axis=-1)  # (B, K)
    return np.log(dens @ pi)


def test_registered_with_the_model_conventions():
    cls = models.get("gmm")
    assert cls is GaussianMixture
    assert cls.data_spec.kinds == ("continuous",) and cls.data_spec.ndims == (1,)
    assert cls.demo is True and {"steps", "batch_size", "lr"} <= set(cls.default_train)
    kw = constructor_kwargs(cls, data_shape=(2,), num_classes=10, vocab_size=5, seed=3,
                            overrides={"components": 4})
    assert kw == {"data_shape": (2,), "seed": 3, "components": 4}  # no num_classes/vocab_size
    with pytest.raises(ValueError, match="no hyperparameter 'nope'.*components"):
        constructor_kwargs(cls, data_shape=(2,), overrides={"nope": 1})


def test_seeded_initialisation():
    a, b = GaussianMixture((3,), seed=1), GaussianMixture((3,), seed=1)
    c = GaussianMixture((3,), seed=2)
    for k, v in a.state_dict().items():
        assert v.dtype == np.float32
        assert np.array_equal(to_numpy(v), to_numpy(b.state_dict()[k]))
    assert not np.array_equal(to_numpy(a.mu.data), to_numpy(c.mu.data))


@given(k=st.integers(1, 3), d=st.integers(1, 3), b=st.integers(1, 4), seed=st.integers(0, 999))
def test_log_prob_is_the_mixture_formula(k, d, b, seed):
    rng = np.random.default_rng(seed)
    logits, mu = rng.normal(size=k), rng.normal(size=(k, d))
    log_sigma, x = 0.3 * rng.normal(size=(k, d)), 1.5 * rng.normal(size=(b, d))
    m = GaussianMixture((d,), components=k).double()
    _set(m, logits, mu, log_sigma)
    got = to_numpy(m.log_prob(Tensor(x)).data)
    assert got.shape == (b,)
    np.testing.assert_allclose(got, _reference_log_prob(x, logits, mu, log_sigma), rtol=1e-10, atol=1e-10)
    assert float(m.loss(Batch(Tensor(x)), default_rng(0)).item()) == pytest.approx(-got.mean(), rel=1e-12)


@on_backend("numpy")  # compares with NumPy in float64 / finite differences: run there
@given(k=st.integers(1, 3), d=st.integers(1, 2), seed=st.integers(0, 999))
def test_log_prob_gradients_in_x(k, d, seed):
    # d log p / dx is the model's score: first and second order checked by finite differences
    rng = np.random.default_rng(seed)
    m = GaussianMixture((d,), components=k, seed=seed).double()
    _set(m, rng.normal(size=k), rng.normal(size=(k, d)), 0.3 * rng.normal(size=(k, d)))
    check_grads(lambda x: m.log_prob(x), [rng.normal(size=(3, d))])


def test_density_integrates_to_one():
    m = GaussianMixture((2,), components=3).double()
    _set(m, np.array([0.0, 1.0, -1.0]), np.array([[0.0, 0.0], [1.5, -1.0], [-1.0, 2.0]]),
         np.log(np.array([[0.5, 0.7], [0.4, 0.4], [0.8, 0.3]])))
    g = np.linspace(-6, 6, 401)
    xx, yy = np.meshgrid(g, g)
    p = np.exp(to_numpy(m.log_prob(Tensor(np.stack([xx.ravel(), yy.ravel()], 1))).data))
    assert p.sum() * (g[1] - g[0]) ** 2 == pytest.approx(1.0, abs=1e-4)


def test_samples_follow_the_mixture():
    m = GaussianMixture((2,), components=2)
    w = np.array([0.25, 0.75])
    _set(m, np.log(w).astype(np.float32), np.array([[-5.0, 0.0], [5.0, 1.0]], np.float32),
         np.log(np.array([[0.5, 1.0], [1.0, 0.2]], np.float32)))
    x = to_numpy(m.sample(20000, rng=default_rng(0)))
    assert x.shape == (20000, 2) and x.dtype == np.float32
    left = x[:, 0] < 0
    assert left.mean() == pytest.approx(0.25, abs=0.015)  # mixing weights
    np.testing.assert_allclose(x[left].mean(0), [-5.0, 0.0], atol=0.05)
    np.testing.assert_allclose(x[left].std(0), [0.5, 1.0], rtol=0.05)
    np.testing.assert_allclose(x[~left].std(0), [1.0, 0.2], rtol=0.05)
    assert np.array_equal(x, to_numpy(m.sample(20000, rng=default_rng(0))))  # the rng decides everything


def test_sample_draws_from_its_rng_alone():
    m = GaussianMixture((2,))
    a = to_numpy(m.sample(10, rng=default_rng(5)))
    assert np.array_equal(a, to_numpy(m.sample(10, rng=default_rng(5))))
    with pytest.raises(TypeError, match="rng"):
        m.sample(10)                                      # no generator of its own to fall back on


def test_loss_gradient_reaches_every_parameter():
    m = GaussianMixture((2,), components=4)
    m.loss(Batch(Tensor(np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32))), default_rng(0)).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and np.all(np.isfinite(to_numpy(p.grad.data))), name
        assert p.grad.dtype == np.float32


def test_rejects_images():
    with pytest.raises(ValueError, match="vectors"):
        GaussianMixture((1, 28, 28))
    assert math.isfinite(float(GaussianMixture((5,)).log_prob(Tensor(np.zeros((1, 5), np.float32))).item()))
