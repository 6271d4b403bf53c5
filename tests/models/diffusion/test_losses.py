"""The bound's terms, eqs. (13)-(18), and L_hybrid's stop-gradient."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import refgen
from refgen.backend import use_backend
from refgen.autograd import Tensor
from refgen.distributions import DiscretizedGaussian, kl_normal_logvar
from refgen.models.diffusion.losses import (eps_weight, hybrid_loss, prior_kl, vlb, vlb_term)
from refgen.models.diffusion.process import Prediction, interpret, q_sample
from refgen.models.diffusion.schedule import make_schedule

with use_backend("numpy"):
    SCH = make_schedule("linear", 1000)
pytestmark = pytest.mark.usefixtures("numpy_backend")  # closed-form oracles: float64 NumPy


@given(t=st.integers(2, 1000), variance=st.sampled_from(["beta", "beta_tilde"]),
       seed=st.integers(0, 2 ** 16))
def test_eq18_kl_is_the_weighted_eps_error(t, variance, seed):
    """eq. (18): the KL term L_{t-1} of eq. (16), KL(q(x_{t-1}|x_t,x_0) || p_theta) with the
    posterior of eq. (10) and mu_theta from eq. (17), equals
    beta^2 / (2 alpha (1 - alpha_bar) sigma^2) ||eps - eps_theta||^2 plus the variance-only
    constant, which is 0 for sigma^2 = beta_tilde. (The weight divides by sigma^2 once.)"""
    rng = np.random.default_rng(seed)
    x0, eps, eps_theta = rng.standard_normal((3, 2, 5))
    tt = np.full(2, t)
    xt = q_sample(SCH, x0, tt, eps)
    log_var = SCH.log_beta[t] if variance == "beta" else SCH.log_beta_tilde_clipped[t]
    pred = interpret(eps_theta, xt, tt, SCH, "eps", variance)
    kl = vlb_term(SCH, Tensor(x0), Tensor(xt), tt, pred, discrete=False).data
    lv_q, lv_p = math.log(SCH.beta_tilde[t]), log_var
    const = 5 * 0.5 * (lv_p - lv_q + math.exp(lv_q - lv_p) - 1.0)      # per example, 5 dims
    weighted = eps_weight(SCH, tt, np.full((2, 1), log_var), xt)[:, 0] * ((eps - eps_theta) ** 2).sum(1)
    np.testing.assert_allclose(kl, weighted + const, rtol=1e-7, atol=1e-10)
    if variance == "beta_tilde":
        assert const == 0.0


def test_kl_of_a_gaussian_with_itself_is_zero():
    mu, lv = np.linspace(-3, 3, 7), np.linspace(-9, 2, 7)
    np.testing.assert_array_equal(kl_normal_logvar(mu, lv, mu, lv).data, 0.0)


@given(mean=st.floats(-1.5, 1.5), log_scale=st.floats(-6, 1))
def test_discretized_decoder_bins_sum_to_one(mean, log_scale):
    bins = -1.0 + 2.0 * np.arange(256) / 255.0
    p = np.exp(DiscretizedGaussian(np.full(256, mean), np.full(256, log_scale)).log_prob(bins).data)
    assert abs(p.sum() - 1.0) < 1e-6 + 256e-12  # each bin is clamped below at 1e-12


# the linear schedule written out from its constants (Ho et al. 2020), independently of
# refgen's Schedule: beta_t from 1e-4 to 0.02 over T = 1000 steps
BETA = np.concatenate([[0.0], np.linspace(1e-4, 0.02, 1000)])
AB = np.cumprod(1.0 - BETA)                                       # alpha_bar_t, t = 0..T


def test_prior_term_closed_form_and_tiny():
    """L_T = KL(q(x_T | x_0) || N(0, I)) of eq. (16), with q(x_T | x_0) from eq. (3), is
    sum_d (ab_T x0^2 + (1 - ab_T) - 1 - log(1 - ab_T)) / 2 exactly, about 1e-5 bits/dim for images in [-1, 1]."""
    x0 = np.random.default_rng(0).uniform(-1, 1, (8, 1, 28, 28))
    ab = AB[-1]
    want = 0.5 * (ab * x0 ** 2 - ab - math.log(1 - ab)).sum((1, 2, 3))
    np.testing.assert_allclose(prior_kl(SCH, x0).data, want, rtol=1e-9)
    bpd = want / (784 * math.log(2))
    assert np.all((bpd > 1e-6) & (bpd < 1e-4))


def _phi(z):
    return 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))


def test_discrete_decoder_term_is_minus_log_of_its_erf_bin():
    """L_0 with the discretized decoder (eq. 13 of Ho et al.): at t = 1 vlb_term is
    -sum_d log of the probability of x_0's bin [x - 1/255, x + 1/255] under
    N(mu_theta(x_1), sigma_1^2), the edge bins taking the tails, from math.erf."""
    x0 = np.array([[-1.0, -1.0 + 2 / 255, 0.3 - 0.3 % (2 / 255), 1.0 - 2 / 255, 1.0]])
    x0 = np.round((x0 + 1) * 127.5) / 127.5 - 1                       # on the 256-level grid
    xt = x0 + np.array([[0.004, -0.006, 0.002, 0.009, -0.003]])
    eps = np.array([[0.3, -1.1, 0.7, 0.2, -0.4]])
    raw_v = np.array([[0.4, -0.2, 0.9, -0.7, 0.1]])                  # learned variance
    pred = interpret(np.concatenate([eps, raw_v], 1), xt, np.array([1]), SCH, "eps", "learned")
    got = vlb_term(SCH, Tensor(x0), Tensor(xt), np.array([1]), pred, discrete=True).data[0]
    mu = (xt - BETA[1] / math.sqrt(1 - AB[1]) * eps) / math.sqrt(1 - BETA[1])
    beta_tilde_2 = (1 - AB[1]) / (1 - AB[2]) * BETA[2]            # stands in for beta_tilde_1
    v = (raw_v + 1) / 2
    sigma = np.exp(0.5 * (v * math.log(BETA[1]) + (1 - v) * math.log(beta_tilde_2)))
    hi = np.where(x0 >= 1.0, 1.0, _phi((x0 + 1 / 255 - mu) / sigma))
    lo = np.where(x0 <= -1.0, 0.0, _phi((x0 - 1 / 255 - mu) / sigma))
    assert got == pytest.approx(-np.log(hi - lo).sum(), rel=1e-9)


def test_hybrid_loss_values_with_its_factor_T():
    """L_hybrid = L_simple + lam L_vlb with lam = 0.001 by default and
    L_vlb = T / D * mean_b L_{t-1}: every term from closed forms written here from the
    schedule's constants (posterior (10), mean (17), variance (23), KL of two Gaussians, L_0)."""
    rng = np.random.default_rng(7)
    b, d, T = 5, 3, 1000
    t = np.array([1, 2, 37, 500, 1000])
    x0 = rng.uniform(-1, 1, (b, d))
    eps = rng.standard_normal((b, d))
    out = rng.standard_normal((b, 2 * d)) * 0.5
    loss, simple, l_vlb = hybrid_loss(SCH, Tensor(x0), t, Tensor(eps), Tensor(out), "eps",
                                      discrete=False)
    ab, ab_prev, beta = AB[t][:, None], AB[t - 1][:, None], BETA[t][:, None]
    xt = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps
    e_theta, v = out[:, :d], (out[:, d:] + 1) / 2
    bt = lambda s: (1 - AB[s - 1]) / (1 - AB[s]) * BETA[s]           # noqa: E731
    log_bt = np.log(np.where(t == 1, bt(2), bt(np.maximum(t, 2))))[:, None]
    log_var_p = v * np.log(beta) + (1 - v) * log_bt                  # (23)
    mu_p = (xt - beta / np.sqrt(1 - ab) * e_theta) / np.sqrt(1 - beta)            # (17)
    mu_q = (np.sqrt(ab_prev) * beta * x0 + np.sqrt(1 - beta) * (1 - ab_prev) * xt) / (1 - ab)
    kl = 0.5 * (log_var_p - log_bt + np.exp(log_bt - log_var_p)
                + (mu_q - mu_p) ** 2 * np.exp(-log_var_p) - 1).sum(1)
    nll = (0.5 * (np.log(2 * np.pi) + log_var_p)
           + (x0 - mu_p) ** 2 / (2 * np.exp(log_var_p))).sum(1)
    terms = np.where(t == 1, nll, kl)
    want_vlb = T / d * terms.mean()
    want_simple = ((eps - e_theta) ** 2).mean()
    assert float(l_vlb.data) == pytest.approx(want_vlb, rel=1e-9)
    assert float(simple.data) == pytest.approx(want_simple, rel=1e-12)
    assert float(loss.data) == pytest.approx(want_simple + 0.001 * want_vlb, rel=1e-9)


def test_vlb_of_the_oracle_is_tight_with_sigma_beta():
    """The bound of eq. (16) for data N(0, s^2) in 1-D and the exact eps predictor,
    T = 1000: with sigma_t^2 = beta_t
    (near the true reverse variance for data this broad) the bound equals -log p(x_0) to
    within sampling error; with beta_tilde it stays above it, by about half a nat here (the
    small-t steps are under-dispersed). The stratified estimate agrees with the full sum."""
    s2 = 0.25

    def oracle(variance):
        def predict(xt, t):
            ab = SCH.alpha_bar[t][:, None]
            eps = np.sqrt(1 - ab) * xt.data / (ab * s2 + 1 - ab)
            return interpret(eps, xt.data, t, SCH, "eps", variance)
        return predict

    x0 = np.random.default_rng(1).normal(0, math.sqrt(s2), (2000, 1))
    nll = 0.5 * math.log(2 * math.pi * s2) + x0[:, 0] ** 2 / (2 * s2)   # -log p(x_0), exact
    gap = vlb(oracle("beta"), SCH, x0, np.random.default_rng(2), discrete=False)["vlb"] - nll
    se = gap.std() / math.sqrt(len(gap))
    assert -3 * se < gap.mean() < 0.01 + 3 * se
    few = vlb(oracle("beta"), SCH, x0, np.random.default_rng(3), discrete=False, timesteps=50)
    d = few["vlb"] - nll
    assert abs(d.mean()) < 4 * d.std() / math.sqrt(len(d))
    tilde = vlb(oracle("beta_tilde"), SCH, x0, np.random.default_rng(4), discrete=False,
                timesteps=50)["vlb"] - nll
    assert tilde.mean() > 0.3


def test_hybrid_vlb_term_sends_no_gradient_to_the_mean():
    """L_hybrid = L_simple (eq. (19)) + lambda L_VLB, with the learned variance of eq. (23):
    the L_VLB part trains only the variance (through var_frac): its gradient with
    respect to the network's mean output is exactly zero, that w.r.t. var_frac is not."""
    rng = np.random.default_rng(0)
    x0 = Tensor(rng.uniform(-1, 1, (4, 3)))
    t = np.array([1, 2, 500, 1000])
    eps = Tensor(rng.standard_normal((4, 3)))
    for param in ("eps", "x0", "v"):
        out = Tensor(rng.standard_normal((4, 6)) * 0.5, requires_grad=True)
        _, simple, l_vlb = hybrid_loss(SCH, x0, t, eps, out, param, discrete=False)
        (g,) = refgen.grad(l_vlb, [out])
        assert np.all(g.data[:, :3] == 0.0) and np.any(g.data[:, 3:] != 0.0)
        (g,) = refgen.grad(simple, [out])
        assert np.all(g.data[:, 3:] == 0.0) and np.any(g.data[:, :3] != 0.0)


def test_decoder_term_at_t1():
    """L_0 of eq. (16) is the decoder's NLL: at t = 1, vlb_term is
    -log N(x_0; mu_theta, sigma_1^2)."""
    x0, xt = np.array([[0.3]]), np.array([[0.31]])
    pred = interpret(np.array([[0.2]]), xt, np.array([1]), SCH, "eps", "beta")
    nll = vlb_term(SCH, Tensor(x0), Tensor(xt), np.array([1]), pred, discrete=False).data[0]
    mu = (0.31 - math.sqrt(SCH.beta[1]) * 0.2) / math.sqrt(SCH.alpha[1])
    var = SCH.beta[1]
    assert nll == pytest.approx(0.5 * math.log(2 * math.pi * var) + (0.3 - mu) ** 2 / (2 * var))
    assert isinstance(pred, Prediction)
