"""Distributions: log-densities against closed forms, KL against Monte Carlo, the discretized
Gaussian's bins, sampling moments, and gradient checks."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refgen import distributions as D
from refgen.autograd import Tensor
from refgen.testing import check_grads

seeds = st.integers(0, 2 ** 16)


def _rng(seed):
    return np.random.default_rng(seed)


def _np(t):
    return t.numpy()


# --- Normal --------------------------------------------------------------------------------

def test_normal_log_prob_cdf_entropy_closed_form():
    r = _rng(0)
    mu, sigma, x = r.standard_normal(6), np.exp(r.standard_normal(6)), r.standard_normal(6)
    d = D.Normal(Tensor(mu), Tensor(sigma))
    density = np.exp(-(x - mu) ** 2 / (2 * sigma ** 2)) / (sigma * math.sqrt(2 * math.pi))
    np.testing.assert_allclose(_np(d.log_prob(x)), np.log(density), rtol=1e-12)
    cdf = [0.5 * (1 + math.erf((a - m) / (s * math.sqrt(2)))) for a, m, s in zip(x, mu, sigma)]
    np.testing.assert_allclose(_np(d.cdf(Tensor(x))), cdf, rtol=1e-12)
    # entropy = -integral p log p, by the trapezoid rule on a wide grid
    grid = np.linspace(-12, 12, 200001)
    for m, s, h in zip(mu, sigma, _np(d.entropy())):
        z = (grid * s + m - m) / s
        p = np.exp(-z ** 2 / 2) / (s * math.sqrt(2 * math.pi))
        numeric = -np.trapezoid(p * np.log(p), grid * s) if hasattr(np, "trapezoid") else \
            -np.trapz(p * np.log(p), grid * s)
        assert h == pytest.approx(numeric, rel=1e-9)
    assert D.Normal(0.0, Tensor(np.ones(3))).entropy().shape == (3,)


def test_normal_float32_stays_float32():
    d = D.Normal(Tensor(np.zeros(3, np.float32)), 1.0)
    assert d.log_prob(0.5).dtype == np.float32
    assert d.rsample(0).dtype == np.float32 and d.entropy().dtype == np.float32


def test_normal_sampling_moments_and_reparameterization():
    mu, sigma = np.array([-1.0, 2.0]), np.array([0.5, 3.0])
    loc, scale = Tensor(mu, requires_grad=True), Tensor(sigma, requires_grad=True)
    n = 100_000
    x = D.Normal(loc, scale).rsample(_rng(1), sample_shape=(n,))  # (n, 2)
    assert x.shape == (n, 2) and x.requires_grad
    s = _np(x)
    se_mean = sigma / math.sqrt(n)
    assert np.all(np.abs(s.mean(0) - mu) < 4 * se_mean)
    se_std = sigma / math.sqrt(2 * n)
    assert np.all(np.abs(s.std(0) - sigma) < 4 * se_std)
    # d x / d mu = 1 and d x / d sigma = eps = (x - mu) / sigma
    x.sum().backward()
    np.testing.assert_allclose(_np(loc.grad), [n, n])
    np.testing.assert_allclose(_np(scale.grad), ((s - mu) / sigma).sum(0), rtol=1e-9)
    sample = D.Normal(loc, scale).sample(_rng(1), sample_shape=3)
    assert sample.shape == (3, 2) and not sample.requires_grad
    np.testing.assert_array_equal(_np(sample), s[:3])  # same generator state, same draw


def test_normal_from_logvar():
    d = D.Normal.from_logvar(Tensor(np.zeros(2)), Tensor(np.log([4.0, 0.25])))
    np.testing.assert_allclose(_np(d.stddev), [2.0, 0.5], rtol=1e-12)
    np.testing.assert_allclose(_np(d.variance), [4.0, 0.25], rtol=1e-12)


def test_kl_normal_matches_monte_carlo():
    mq, sq = np.array([0.3, -1.0, 0.0]), np.array([0.7, 1.5, 1.0])
    mp, sp = np.array([0.0, 0.5, 0.0]), np.array([1.0, 2.0, 1.3])
    q, p = D.Normal(Tensor(mq), Tensor(sq)), D.Normal(Tensor(mp), Tensor(sp))
    kl = _np(D.kl_normal(q, p))
    n = 200_000
    x = q.sample(_rng(2), sample_shape=(n,))
    ratio = _np(q.log_prob(x) - p.log_prob(x))  # (n, 3): log q - log p under q
    mc, se = ratio.mean(0), ratio.std(0) / math.sqrt(n)
    assert np.all(np.abs(kl - mc) < 4 * se + 1e-12), (kl, mc, se)
    # the log-variance and standard-normal forms agree with the general one
    lv = D.kl_normal_logvar(Tensor(mq), Tensor(2 * np.log(sq)), Tensor(mp), Tensor(2 * np.log(sp)))
    np.testing.assert_allclose(_np(lv), kl, rtol=1e-12)
    std = D.kl_normal_std(Tensor(mq), Tensor(2 * np.log(sq)))
    ref = D.kl_normal(q, D.Normal(0.0, Tensor(np.ones(3))))
    np.testing.assert_allclose(_np(std), _np(ref), rtol=1e-12)
    assert np.allclose(_np(D.kl_normal(q, q)), 0.0)


@given(seed=seeds)
def test_normal_gradcheck(seed):
    r = _rng(seed)
    x, mu, log_s = r.standard_normal((2, 3)), r.standard_normal((2, 3)), 0.5 * r.standard_normal(3)
    check_grads(lambda x, m, ls: D.Normal(m, ls.exp()).log_prob(x), [x, mu, log_s])
    check_grads(lambda m, ls: D.Normal(m, ls.exp()).entropy(), [mu, log_s])


@given(seed=seeds)
def test_kl_gradcheck(seed):
    a, b, c, d = (_rng(seed).standard_normal(4) * 0.7 for _ in range(4))
    check_grads(lambda a, b, c, d: D.kl_normal(D.Normal(a, b.exp()), D.Normal(c, d.exp())),
                [a, b, c, d])
    check_grads(D.kl_normal_logvar, [a, b, c, d])
    check_grads(D.kl_normal_std, [a, b])


# --- Bernoulli ------------------------------------------------------------------------------

def test_bernoulli_log_prob_entropy_and_stability():
    logits = np.array([-3.0, -0.2, 0.0, 1.5, 4.0])
    p = 1 / (1 + np.exp(-logits))
    d = D.Bernoulli(Tensor(logits))
    np.testing.assert_allclose(_np(d.log_prob(np.ones(5))), np.log(p), rtol=1e-12)
    np.testing.assert_allclose(_np(d.log_prob(np.zeros(5))), np.log1p(-p), rtol=1e-12)
    np.testing.assert_allclose(_np(d.entropy()), -(p * np.log(p) + (1 - p) * np.log1p(-p)),
                               rtol=1e-12)
    np.testing.assert_allclose(_np(d.probs), p, rtol=1e-12)
    far = D.Bernoulli(Tensor(np.array([-1e4, 1e4])))
    np.testing.assert_allclose(_np(far.log_prob(np.array([1.0, 0.0]))), [-1e4, -1e4])
    assert np.all(np.isfinite(_np(far.entropy())))


def test_bernoulli_sampling():
    logits = np.array([-1.0, 0.0, 2.0])
    s = _np(D.Bernoulli(Tensor(logits)).sample(_rng(3), sample_shape=(40_000,)))
    assert s.shape == (40_000, 3) and set(np.unique(s)) <= {0.0, 1.0}
    p = 1 / (1 + np.exp(-logits))
    assert np.all(np.abs(s.mean(0) - p) < 4 * np.sqrt(p * (1 - p) / 40_000))


@given(seed=seeds)
def test_bernoulli_gradcheck(seed):
    r = _rng(seed)
    logits, x = 2 * r.standard_normal(5), (r.random(5) < 0.5).astype(float)
    check_grads(lambda l: D.Bernoulli(l).log_prob(x), [logits])
    check_grads(lambda l: D.Bernoulli(l).entropy(), [logits])


# --- Categorical ------------------------------------------------------------------------------

def test_categorical_log_prob_and_entropy():
    logits = _rng(4).standard_normal((3, 5)) * 2
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    d = D.Categorical(Tensor(logits))
    x = np.array([0, 4, 2])
    np.testing.assert_allclose(_np(d.log_prob(x)), logp[np.arange(3), x], rtol=1e-12)
    np.testing.assert_allclose(_np(d.entropy()), -(np.exp(logp) * logp).sum(-1), rtol=1e-12)
    np.testing.assert_allclose(_np(d.probs).sum(-1), 1.0, rtol=1e-12)
    # indices with leading sample dims broadcast against the batch
    xs = np.array([[0, 1, 2], [4, 4, 4]])
    np.testing.assert_allclose(_np(d.log_prob(xs)), logp[np.arange(3), xs], rtol=1e-12)
    # an impossible class contributes nothing to the entropy
    logits = Tensor(np.array([0.0, -np.inf, 0.0]), requires_grad=True)
    masked = D.Categorical(logits)
    assert _np(masked.entropy()) == pytest.approx(math.log(2))
    assert _np(masked.log_prob(np.array(0))) == pytest.approx(-math.log(2))
    assert _np(masked.log_prob(np.array(1))) == -np.inf
    (masked.entropy() + masked.log_prob(np.array(2))).backward()
    assert np.all(np.isfinite(_np(logits.grad)))


def test_categorical_sampling_frequencies():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    n = 50_000
    s = _np(D.Categorical(Tensor(np.log(probs))).sample(_rng(5), sample_shape=(n,)))
    assert s.shape == (n,) and s.dtype.kind == "i"
    freq = np.bincount(s, minlength=4) / n
    assert np.all(np.abs(freq - probs) < 4 * np.sqrt(probs * (1 - probs) / n))
    batch = D.Categorical(Tensor(np.array([[0.0, -np.inf], [-np.inf, 0.0]])))
    np.testing.assert_array_equal(_np(batch.sample(_rng(6), sample_shape=(10,))), [[0, 1]] * 10)


@given(seed=seeds)
def test_categorical_gradcheck(seed):
    r = _rng(seed)
    logits, x = r.standard_normal((2, 4)), r.integers(0, 4, size=2)
    check_grads(lambda l: D.Categorical(l).log_prob(x), [logits])
    check_grads(lambda l: D.Categorical(l).entropy(), [logits])


# --- support ------------------------------------------------------------------------------------

def test_values_outside_the_support_are_refused():
    logits = Tensor(np.array([[0.3, -1.2, 2.0], [0.0, 0.5, -0.5]]))
    cat = D.Categorical(logits)
    for bad in (np.array([0, 3]), np.array([-1, 0]), np.array([0.5, 1.0])):
        with pytest.raises(ValueError, match="class index in 0..2"):
            cat.log_prob(bad)
    with pytest.raises(ValueError, match="0 or 1"):
        D.Bernoulli(Tensor(np.zeros(3))).log_prob(np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="0 or 1"):
        D.Bernoulli(Tensor(np.zeros(2))).log_prob(np.array([0.0, 0.3]))
    for scale in (-0.5, 0.0, np.nan):
        with pytest.raises(ValueError, match="scale must be positive"):
            D.Normal(np.zeros(2), np.array([1.0, scale]))
    # integer-valued floats are class indices too; validate_args=False skips the checks
    np.testing.assert_allclose(_np(cat.log_prob(np.array([2.0, 1.0]))),
                               _np(cat.log_prob(np.array([2, 1]))), rtol=0)
    assert np.isfinite(_np(D.Bernoulli(Tensor(np.zeros(1)), validate_args=False)
                           .log_prob(np.array([0.3])))).all()
    D.Normal(0.0, -1.0, validate_args=False)


# --- DiscretizedGaussian ------------------------------------------------------------------------

CENTERS = np.linspace(-1.0, 1.0, 256)


@pytest.mark.parametrize("mean, log_scale", [(0.0, -3.0), (0.9, -1.0), (-1.3, 0.5), (0.2, -6.0),
                                             (1.0, -5.0), (-0.4, 2.0)])
def test_discretized_bins_sum_to_one(mean, log_scale):
    d = D.DiscretizedGaussian(Tensor(np.full(256, mean)), Tensor(np.full(256, log_scale)))
    p = np.exp(_np(d.log_prob(CENTERS)))
    assert p.sum() == pytest.approx(1.0, abs=1e-6)


def test_discretized_matches_erf_and_edges_take_tails():
    mean, log_scale = 0.1, -2.0
    s = math.exp(log_scale)

    def phi(z):
        return 0.5 * (1 + math.erf(z / math.sqrt(2)))

    d = D.DiscretizedGaussian(Tensor(np.array([mean])), Tensor(np.array([log_scale])))
    half = 1 / 255
    for k in (0, 1, 100, 140, 254, 255):
        c = CENTERS[k]
        if k == 0:
            ref = phi((c + half - mean) / s)
        elif k == 255:
            ref = 1 - phi((c - half - mean) / s)
        else:
            ref = phi((c + half - mean) / s) - phi((c - half - mean) / s)
        got = np.exp(_np(d.log_prob(np.array([c])))).item()
        assert got == pytest.approx(max(ref, 1e-12), rel=1e-9, abs=1e-15), k
        # any x inside the bin gets that bin's probability
        inside = np.exp(_np(d.log_prob(np.array([c + 0.4 * half])))).item()
        assert inside == pytest.approx(got, rel=1e-12)
    # values beyond [-1, 1] fall in the edge bins
    edge = _np(d.log_prob(np.array([-1.5, 1.5])))
    np.testing.assert_allclose(edge, _np(d.log_prob(np.array([-1.0, 1.0]))))


def test_discretized_sampling_lands_on_bins():
    d = D.DiscretizedGaussian(Tensor(np.array([0.3, -0.95])), Tensor(np.log([0.2, 0.1])))
    s = _np(d.sample(_rng(7), sample_shape=(20_000,)))
    k = (s + 1) * 127.5
    np.testing.assert_allclose(k, np.round(k), atol=1e-9)
    assert s.min() >= -1 and s.max() <= 1
    # sample mean against the exact mean of the discretized law
    for j, (m, ls) in enumerate([(0.3, math.log(0.2)), (-0.95, math.log(0.1))]):
        dj = D.DiscretizedGaussian(Tensor(np.full(256, m)), Tensor(np.full(256, ls)))
        p = np.exp(_np(dj.log_prob(CENTERS)))
        mean = (p * CENTERS).sum()
        sd = math.sqrt((p * CENTERS ** 2).sum() - mean ** 2)
        assert abs(s[:, j].mean() - mean) < 4 * sd / math.sqrt(20_000)


@given(seed=seeds)
def test_discretized_gradcheck(seed):
    # x within two sigma of the mean: far tails are 1 - Phi computed from erf, whose absolute
    # error (~1e-16) swamps a finite difference once a bin's probability is below ~1e-9
    r = _rng(seed)
    mean = r.uniform(-1, 1, 4)
    log_scale = r.uniform(-2.5, 0.0, 4)
    x = np.clip(mean + np.exp(log_scale) * r.uniform(-2, 2, 4), -1, 1)
    x = np.round((x + 1) * 127.5) / 127.5 - 1  # bin centers
    mean[:2] = [-0.97, 0.96]  # the two edge bins, which take the tails
    x[:2] = [-1.0, 1.0]
    check_grads(lambda m, ls: D.DiscretizedGaussian(m, ls).log_prob(x), [mean, log_scale])
