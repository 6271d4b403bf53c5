"""The dVAE of DALL-E: the Gumbel-softmax relaxation (its tau -> 0 limit is the categorical,
by a chi-square test; its straight-through gradient is the soft sample's Jacobian), the KL to
the uniform prior against its closed form log K - H(q), the loss as the ELBO with beta, the
temperature schedule, the codebook perplexity, and training through the loop."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refgen
import refgen.functional as F
from refgen import backend
from refgen.autograd import Tensor
from refgen.backend import default_rng
from refgen.models import create
from refgen.models.base import Batch
from refgen.models.text_to_image import codebook_perplexity, kl_uniform, temperature
from refgen.testing import check_grads
from refgen.testing.stats import chi2_sf


def t64(a):
    return Tensor(backend.asarray(np.asarray(a, dtype=np.float64)))


def np_(t):
    return backend.to_numpy(t.data if hasattr(t, "data") else t)


# ----------------------------------------------------------------------------- Gumbel-softmax
def test_gumbel_softmax_approaches_the_categorical_as_tau_goes_to_zero():
    """Soft samples at small tau are near one-hot (more so as tau falls), and their soft counts
    match the categorical's n p: a chi-square test."""
    # Jang et al. 2017
    p = np.array([0.45, 0.3, 0.15, 0.07, 0.03])
    n = 20000
    near_one_hot = []
    for tau in (0.3, 0.01):
        y = np_(F.gumbel_softmax(t64(np.broadcast_to(np.log(p), (n, 5))), tau=tau, rng=default_rng(3)))
        near_one_hot.append(np.mean(y.max(axis=1) > 0.95))
    assert near_one_hot[1] > 0.95 and near_one_hot[0] < near_one_hot[1] - 0.2
    counts = y.sum(axis=0)                                               # soft counts at tau = 0.01
    chi2 = ((counts - n * p) ** 2 / (n * p)).sum()
    assert chi2_sf(chi2, df=4) > 1e-3, (counts / n, p)


def test_gumbel_softmax_soft_mean_is_not_the_categorical_at_large_tau():
    """The same chi-square statistic rejects the relaxation at tau = 1 (so the test above can fail)."""
    p = np.array([0.45, 0.3, 0.15, 0.07, 0.03])
    n = 20000
    y = np_(F.gumbel_softmax(t64(np.broadcast_to(np.log(p), (n, 5))), tau=1.0, rng=default_rng(3)))
    counts = y.sum(axis=0)
    assert chi2_sf(((counts - n * p) ** 2 / (n * p)).sum(), df=4) < 1e-6


def test_straight_through_gradient_is_the_soft_jacobian():
    """hard=True: forward the one-hot of the argmax, backward d y_soft / d l =
    diag(y) - y y^T, over tau (the Jacobian of softmax((l + g) / tau))."""
    # Jang et al. 2017
    rng = np.random.default_rng(0)
    logits, w, tau = rng.standard_normal((4, 6)), rng.standard_normal((4, 6)), 0.37
    l = t64(logits)
    l.requires_grad = True
    y = F.gumbel_softmax(l, tau=tau, hard=True, rng=11)
    g = np_(refgen.grad(F.sum(y * t64(w)), [l])[0])
    soft = np_(F.gumbel_softmax(t64(logits), tau=tau, rng=11))           # the same noise (seed 11)
    np.testing.assert_array_equal(np_(y), np.eye(6)[soft.argmax(1)])
    jac = (np.einsum("bi,ij->bij", soft, np.eye(6)) - soft[:, :, None] * soft[:, None, :]) / tau
    np.testing.assert_allclose(g, np.einsum("bi,bij->bj", w, jac), rtol=1e-10, atol=1e-12)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10**6), st.floats(0.2, 2.0))
def test_gumbel_softmax_gradients_second_order(seed, tau):
    x = np.random.default_rng(seed).standard_normal((3, 4))
    check_grads(lambda l: F.gumbel_softmax(l, tau=tau, dim=1, rng=seed), [x], order=2)


# ----------------------------------------------------------------------------- the KL term
@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10**6), st.integers(2, 9))
def test_kl_to_uniform_is_log_k_minus_entropy(seed, k):
    # Ramesh et al. 2021, uniform prior
    logits = np.random.default_rng(seed).standard_normal((3, k, 2)) * 2.0
    q = np.exp(logits - logits.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    want = math.log(k) + (q * np.log(q)).sum(1)                          # log K - H(q)
    np.testing.assert_allclose(np_(kl_uniform(t64(logits), dim=1)), want, rtol=1e-10, atol=1e-12)
    check_grads(lambda t: kl_uniform(t, dim=1), [logits], order=2)


def test_kl_to_uniform_vanishes_at_uniform_and_is_log_k_at_one_hot():
    np.testing.assert_allclose(np_(kl_uniform(t64(np.full((2, 5), 0.7)), dim=1)), 0.0, atol=1e-12)
    np.testing.assert_allclose(np_(kl_uniform(t64([[60.0, 0, 0, 0]]), dim=1)), math.log(4), rtol=1e-9)


def small_dvae(**kw):
    kw = dict(dict(num_codes=5, code_dim=4, channels=4, beta=0.37), **kw)
    return create("dvae", data_shape=(1, 8, 8), seed=1, **kw)


def images(n=3, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 1, 8, 8)).astype(np.float32)


def test_dvae_kl_term_is_log_k_minus_the_entropy_of_the_encoder():
    # Ramesh et al. 2021, uniform prior
    m = small_dvae()
    x = images()
    _, kl, logits = m.terms(x, default_rng(0), tau=0.5)
    lg = np_(logits).astype(np.float64)                                   # (B, K, h, w)
    q = np.exp(lg - lg.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    h = -(q * np.log(q)).sum(1)                                           # (B, h, w)
    np.testing.assert_allclose(np_(kl), (math.log(5) - h).sum((1, 2)), rtol=1e-4)


def test_dvae_loss_is_reconstruction_plus_beta_kl_per_image():
    # Ramesh et al. 2021, ELBO
    m = small_dvae()
    x = images()
    rec, kl, _ = m.terms(x, default_rng(4), tau=m.tau())
    ink = (x + 1) / 2
    loss = m.loss(Batch(Tensor(backend.asarray(x))), rng=default_rng(4))
    np.testing.assert_allclose(float(np_(loss)), np_(rec).mean() + 0.37 * np_(kl).mean(), rtol=1e-5)
    # the reconstruction is the Bernoulli NLL of the ink, summed over pixels (nats per image)
    m.eval()
    y = F.gumbel_softmax(m.encode(x), tau=m.tau(), dim=1, rng=default_rng(4))
    p = 1 / (1 + np.exp(-np_(m.decode(y)).astype(np.float64)))
    nll = -(ink * np.log(p) + (1 - ink) * np.log(1 - p)).sum((1, 2, 3))
    np.testing.assert_allclose(np_(rec), nll, rtol=1e-4)


def test_temperature_anneals_geometrically_and_with_the_training_steps():
    # Ramesh et al. 2021, tau annealing
    assert temperature(0, 1.0, 1 / 16, 100) == 1.0
    assert temperature(50, 1.0, 1 / 16, 100) == pytest.approx(0.25)       # geometric midpoint
    assert temperature(100, 1.0, 1 / 16, 100) == pytest.approx(1 / 16)
    assert temperature(500, 1.0, 1 / 16, 100) == pytest.approx(1 / 16)
    m = small_dvae(anneal_steps=4, tau_start=2.0, tau_end=0.5)
    b = Batch(Tensor(backend.asarray(images())))
    taus = []
    for _ in range(5):
        m.loss(b, rng=default_rng(0))
        taus.append(m.last_stats["tau"])
    np.testing.assert_allclose(taus, [2.0, 2.0 * 0.25 ** 0.25, 1.0, 2.0 * 0.25 ** 0.75, 0.5], rtol=1e-12)
    m.eval()
    m.loss(b, rng=default_rng(0))
    assert int(m.step) == 5                                               # eval calls do not anneal


def test_codebook_perplexity():
    assert codebook_perplexity(np.arange(8).repeat(3), 8) == pytest.approx(8.0)
    assert codebook_perplexity(np.zeros(10, dtype=np.int64), 8) == pytest.approx(1.0)
    assert codebook_perplexity(np.array([0, 0, 0, 1]), 4) == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))


def test_tokens_and_decoding():
    # Ramesh et al. 2021, sec. 2.1
    m = small_dvae()
    z = m.tokens(images())
    assert z.shape == (3, 2, 2) and z.dtype.kind == "i"
    np.testing.assert_array_equal(np_(z), np_(m.encode(images()).data).argmax(1))
    x = np_(m.decode_tokens(z))
    assert x.shape == (3, 1, 8, 8) and x.min() >= -1 and x.max() <= 1
    s = np_(m.sample(4, rng=default_rng(0)))
    assert s.shape == (4, 1, 8, 8)


def test_bad_configuration():
    with pytest.raises(ValueError, match="multiples of 4"):
        create("dvae", data_shape=(1, 10, 10))
    with pytest.raises(ValueError, match="tau_end"):
        small_dvae(tau_start=0.5, tau_end=1.0)
    with pytest.raises(ValueError, match="num_codes"):
        small_dvae(num_codes=1)


def test_a_few_steps_lower_the_loss():
    from refgen.optim import Adam
    m = small_dvae(beta=0.1, channels=8, anneal_steps=50)
    x = Batch(Tensor(backend.asarray(np.tile(np.sign(images(4, 2)), (4, 1, 1, 1)))))  # 4 patterns
    opt = Adam(list(m.parameters()), lr=1e-2)
    first = float(np_(m.loss(x, rng=default_rng(0))))
    for i in range(100):
        opt.zero_grad()
        m.loss(x, rng=default_rng(i)).backward()
        opt.step()
    assert float(np_(m.loss(x, rng=default_rng(99)))) < 0.6 * first
