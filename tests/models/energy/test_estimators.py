"""The estimators' math, checked against enumeration, closed forms and quadrature (float64,
NumPy, seeded; each statistical check states the Monte Carlo error it allows)."""
import itertools
import math

import numpy as np
import pytest

from refgen import optim
from refgen.autograd import Tensor, grad
from refgen.backend import default_rng
from refgen.models.energy import MLPEnergy, contrastive_loss, gaussian_log_prob, nce_loss
from refgen.score_matching import (energy_score, exact_divergence, exact_score_matching,
                                   sliced_score_matching)
from refgen.testing import check_grads

pytestmark = pytest.mark.usefixtures("numpy_backend")


# ----------------------------------------------------------------------------- contrastive gradient
STATES = np.array(list(itertools.product([0.0, 1.0], repeat=9)))          # all 512 3x3 images
_G = np.arange(9).reshape(3, 3)
PAIRS = [(a, b) for a, b in zip(_G[:, :2].ravel(), _G[:, 1:].ravel())] + \
        [(a, b) for a, b in zip(_G[:2].ravel(), _G[1:].ravel())]             # 12 neighbour pairs


def stats(x):
    """Sufficient statistics T(x): 9 pixels and 12 neighbour products, (N, 21)."""
    return np.concatenate([x, np.stack([x[:, a] * x[:, b] for a, b in PAIRS], 1)], 1)


def exact_log_probs(theta):
    """log p_theta of all 512 states, E_theta(x) = -theta . T(x), by enumeration."""
    neg_e = stats(STATES) @ theta
    return neg_e - np.logaddexp.reduce(neg_e)


def draw(theta, n, seed):
    p = np.exp(exact_log_probs(theta))
    return STATES[np.random.default_rng(seed).choice(512, size=n, p=p)]


def test_the_contrastive_gradient_is_the_log_likelihood_gradient():
    # Exact: grad_theta mean log p(x+) = mean T(x+) - E_p[T]. The contrastive loss's
    # gradient with M = 20,000 exact negatives must be its negative within 5 standard
    # errors of the negatives' mean, sd_p(T_k) / sqrt(M), in each of the 21 coordinates.
    rng = np.random.default_rng(0)
    theta0 = 0.5 * rng.standard_normal(21)
    x_pos = draw(0.8 * rng.standard_normal(21), 300, seed=1)                # data from another model
    x_neg = draw(theta0, 20000, seed=2)
    theta = Tensor(theta0.copy(), requires_grad=True)
    energy = lambda x: -(Tensor(stats(x)) @ theta)
    (g,) = grad(contrastive_loss(energy(x_pos), energy(x_neg)), theta)
    p = np.exp(exact_log_probs(theta0))
    t_all = stats(STATES)
    exact = stats(x_pos).mean(0) - p @ t_all                               # grad log-likelihood
    se = np.sqrt(p @ t_all ** 2 - (p @ t_all) ** 2) / math.sqrt(len(x_neg))
    assert np.all(np.abs(-g.data - exact) < 5 * se)
    # the survey's display, -grad E(x+) - E[grad E(x-)], is another vector altogether
    (g_seed,) = grad(energy(x_pos).mean() + energy(x_neg).mean(), theta)
    assert np.max(np.abs(-g_seed.data - exact) / se) > 50
    # a step down the contrastive loss raises the exact log-likelihood of the data
    ll = lambda th: exact_log_probs(th)[(x_pos @ (2 ** np.arange(8, -1, -1))).astype(int)].mean()
    assert ll(theta0 - 0.1 * g.data) > ll(theta0) + 1e-3


def test_the_state_index_matches_the_enumeration():
    idx = (STATES @ (2 ** np.arange(8, -1, -1))).astype(int)
    np.testing.assert_array_equal(idx, np.arange(512))


def test_the_energy_regulariser_adds_alpha_times_mean_squares():
    ep, en = Tensor(np.array([0.5, -1.0, 2.0])), Tensor(np.array([1.5, 0.2]))
    got = contrastive_loss(ep, en, alpha=0.3).item()
    want = (0.5 - 1 + 2) / 3 - 1.7 / 2 + 0.3 * ((0.25 + 1 + 4) / 3 + (2.25 + 0.04) / 2)
    assert got == pytest.approx(want, rel=1e-12)


# ----------------------------------------------------------------------------- NCE
def test_nce_recovers_the_log_normaliser_of_a_gaussian():
    # Model: the correct unnormalised Gaussian exp(-|x - m|^2 / (2 s^2)), with its log Z
    # = log(2 pi s^2) left to NCE as the free constant c. 10,000 data and 10,000 noise
    # draws give c a standard error of about 0.015; we allow 4 of them, 0.06.
    m, s, noise_std = np.array([0.5, -0.3]), 0.7, 2.0
    rng = np.random.default_rng(0)
    x = Tensor(m + s * rng.standard_normal((10000, 2)))
    y = Tensor(noise_std * rng.standard_normal((10000, 2)))
    c = Tensor(np.zeros(()), requires_grad=True)
    log_ratio = lambda t: -((t - Tensor(m)) ** 2).sum(1) / (2 * s ** 2) - c - gaussian_log_prob(t, noise_std)
    opt = optim.Adam([c], lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        nce_loss(log_ratio(x), log_ratio(y)).backward()
        opt.step()
    assert float(c.data) == pytest.approx(math.log(2 * math.pi * s ** 2), abs=0.06)


def test_the_nce_loss_is_the_logistic_loss():
    gx, gy = np.array([0.3, -1.2]), np.array([2.0, -0.5, 0.1])
    want = -np.log(1 / (1 + np.exp(-gx))).mean() - np.log(1 - 1 / (1 + np.exp(-gy))).mean()
    assert nce_loss(Tensor(gx), Tensor(gy)).item() == pytest.approx(want, rel=1e-12)


def test_the_gaussian_log_prob_integrates_to_its_closed_form():
    x = np.array([[0.3, -1.0], [2.0, 0.5]])
    want = -0.5 * (x ** 2).sum(1) / 4.0 - 2 * math.log(2.0) - math.log(2 * math.pi)
    np.testing.assert_allclose(gaussian_log_prob(Tensor(x), 2.0).data, want, rtol=1e-12)


# ----------------------------------------------------------------------------- score matching
def _net(dim, seed=0, hidden=(16, 16)):
    net = MLPEnergy(dim, hidden, rng=seed).double()
    rng = np.random.default_rng(seed + 100)
    for p in net.parameters():                                 # generic weights, O(1) outputs
        p.data = p.data + 0.3 * rng.standard_normal(p.shape)
    return net


def test_the_score_of_an_energy_is_minus_its_gradient():
    # E = |x - m|^2 / (2 s^2): s(x) = -(x - m) / s^2
    m = np.array([0.5, -1.0, 2.0])
    x = np.random.default_rng(0).standard_normal((4, 3))
    energy = lambda t: ((t - Tensor(m)) ** 2).sum(1) / (2 * 0.7 ** 2)
    got = energy_score(energy)(Tensor(x, requires_grad=True)).data
    np.testing.assert_allclose(got, -(x - m) / 0.7 ** 2, rtol=1e-12)


def test_the_hessian_trace_by_double_backward_equals_finite_differences():
    net = _net(3)
    score = energy_score(net)
    x = np.random.default_rng(1).standard_normal((5, 3))
    xt = Tensor(x, requires_grad=True)
    got = exact_divergence(score(xt), xt).data
    h, fd = 1e-5, np.zeros(5)
    for i in range(3):
        e = np.zeros(3)
        e[i] = h
        s_plus = score(Tensor(x + e, requires_grad=True)).data[:, i]
        s_minus = score(Tensor(x - e, requires_grad=True)).data[:, i]
        fd += (s_plus - s_minus) / (2 * h)
    np.testing.assert_allclose(got, fd, rtol=1e-6, atol=1e-8)


def test_score_matching_equals_its_explicit_form_by_quadrature():
    # p = N(m, diag(sd^2)), a generic MLP energy E. Hyvarinen: the integrated loss
    #   int p [tr grad s + 1/2 |s|^2]  =  1/2 int p |s - grad log p|^2 - 1/2 int p |grad log p|^2
    # both sides by the midpoint rule on [-6, 6]^2 at spacing 0.06 (Gaussian tails beyond
    # 7 sd are below 1e-11; the rule's error on these smooth integrands is ~1e-6).
    m, sd = np.array([0.4, -0.2]), np.array([0.8, 0.6])
    c = -6 + 0.06 * (np.arange(200) + 0.5)
    x = np.stack(np.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2)
    p = np.exp(-0.5 * (((x - m) / sd) ** 2).sum(1)) / (2 * np.pi * sd.prod()) * 0.06 ** 2
    net = _net(2, seed=3)
    implicit = p @ exact_score_matching(energy_score(net), x, reduction="none").data
    s = energy_score(net)(Tensor(x, requires_grad=True)).data
    data_score = -(x - m) / sd ** 2
    explicit = 0.5 * p @ ((s - data_score) ** 2).sum(1) - 0.5 * p @ (data_score ** 2).sum(1)
    assert p.sum() == pytest.approx(1.0, abs=1e-9)
    assert implicit == pytest.approx(explicit, abs=1e-6)
    assert abs(implicit) > 0.05                                 # not a trivially zero case


def test_sliced_score_matching_is_unbiased_for_the_exact_loss():
    # 4 points, each repeated 10,000 times with independent directions: the mean of the
    # sliced per-example loss must match the exact one within 5 standard errors.
    net = _net(3, seed=5)
    x = np.random.default_rng(2).standard_normal((4, 3))
    exact = exact_score_matching(energy_score(net), x, reduction="none").data
    for dist in ("normal", "rademacher"):
        for vr in (False, True):
            per = sliced_score_matching(energy_score(net), np.repeat(x, 10000, 0), rng=default_rng(0),
                                        dist=dist, variance_reduced=vr, reduction="none").data
            per = per.reshape(4, 10000)
            se = per.std(1) / math.sqrt(10000)
            assert np.all(np.abs(per.mean(1) - exact) < 5 * se + 1e-12), (dist, vr)


def test_score_matching_losses_differentiate_to_their_parameters():
    x = np.random.default_rng(0).standard_normal((6, 2))
    rng = np.random.default_rng(1)
    w1, w2 = rng.standard_normal((5, 2)), rng.standard_normal((1, 5))

    def loss(w1, w2):
        energy = lambda t: ((t @ w1.T).tanh() @ w2.T).sum(1) + 0.1 * (t * t).sum(1)
        return exact_score_matching(energy_score(energy), x)

    check_grads(loss, [w1, w2], order=1)


def test_score_matching_reductions_and_bad_input():
    net = _net(2)
    x = np.random.default_rng(0).standard_normal((7, 2))
    per = exact_score_matching(energy_score(net), x, reduction="none").data
    assert per.shape == (7,)
    assert exact_score_matching(energy_score(net), x).item() == pytest.approx(per.mean(), rel=1e-12)
    with pytest.raises(ValueError, match="reduction must be"):
        exact_score_matching(energy_score(net), x, reduction="sum")
    with pytest.raises(ValueError, match="dist must be"):
        sliced_score_matching(energy_score(net), x, rng=default_rng(0), dist="uniform")
    with pytest.raises(ValueError, match="exactly one of rng"):
        sliced_score_matching(energy_score(net), x)
