"""Worked examples with a known answer: for Gaussian and Gaussian-mixture data the optimal
eps predictor E[eps | x_t] is known in closed form, so the samplers and guidance can be run
without training anything and compared with the exact distributions.

For data sum_k pi_k N(mu_k, s_k^2 I), the noised marginal at t is
sum_k pi_k N(sqrt(ab) mu_k, v_k I) with v_k = ab s_k^2 + 1 - ab, and

    E[eps | x_t] = sum_k r_k(x_t) sqrt(1 - ab) (x_t - sqrt(ab) mu_k) / v_k,

r_k the posterior responsibilities; the exact classifier is p(k | x_t) = r_k(x_t).
"""
import math

import numpy as np
import pytest

import refgen.functional as F
from refgen.backend import use_backend
from refgen.autograd import Tensor
from refgen.models.diffusion.guidance import (cfg_eps, classifier_guided_eps, log_prob_grad)
from refgen.models.diffusion.process import interpret, score_from_eps
from refgen.models.diffusion.sampling import sample_loop
from refgen.models.diffusion.schedule import make_schedule

with use_backend("numpy"):
    SCH = make_schedule("linear", 1000)
pytestmark = pytest.mark.usefixtures("numpy_backend")  # closed-form oracles: float64 NumPy
MU = np.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]])
S = np.array([0.3, 0.3, 0.3])
PI = np.array([0.5, 0.3, 0.2])


def _ab(sch, t, x):
    return float(sch.alpha_bar[t]) if np.ndim(t) == 0 else sch.alpha_bar[t].reshape(-1, 1)


def gmm_terms(x, ab):
    """log pi_k N(x; sqrt(ab) mu_k, v_k I) (B, K) and v_k (K,)."""
    v = ab * S ** 2 + 1 - ab
    d2 = ((x[:, None, :] - math.sqrt(ab) * MU[None]) ** 2).sum(-1)
    return np.log(PI) - d2 / (2 * v) - MU.shape[1] / 2 * np.log(2 * np.pi * v), v


def gmm_eps(x, ab, k=None):
    """E[eps | x_t] for the mixture (or for component k alone)."""
    logp, v = gmm_terms(x, ab)
    r = np.exp(logp - logp.max(1, keepdims=True))
    r /= r.sum(1, keepdims=True)
    if k is not None:
        r = np.zeros_like(r)
        r[:, k] = 1.0
    per = math.sqrt(1 - ab) * (x[:, None, :] - math.sqrt(ab) * MU[None]) / v[None, :, None]
    return (r[:, :, None] * per).sum(1)


def gauss_eps(x, ab, m, s2):
    return math.sqrt(1 - ab) * (x - math.sqrt(ab) * m) / (ab * s2 + 1 - ab)


def oracle(sch, eps_fn, variance="beta_tilde"):
    def predict(x, t):
        return interpret(eps_fn(x, _ab(sch, t, x)), x, t, sch, "eps", variance)
    return predict


def exact_ddpm_std(sch, s2, variance):
    """The oracle chain is linear-Gaussian for Gaussian data: x_{t-1} = k_t x_t + sigma_t z, so
    its output variance follows V <- k_t^2 V + sigma_t^2 from V = 1."""
    V = 1.0
    for t in range(sch.T, 0, -1):
        ab, b, a = sch.alpha_bar[t], sch.beta[t], sch.alpha[t]
        k = (1 - b / (ab * s2 + 1 - ab)) / math.sqrt(a)        # eq. (12) with the oracle eps
        var = sch.beta[t] if variance == "beta" else math.exp(sch.log_beta_tilde_clipped[t])
        V = k * k * V + (var if t > 1 else 0.0)
    return math.sqrt(V)


def test_ddpm_reproduces_a_gaussian():
    """N(0, 0.5^2) data, 1000 ancestral steps (17) with the oracle: the sample std is that of
    the exact chain within sampling error; the chain's own std is 0.4961 with
    sigma^2 = beta_tilde and 0.5008 with beta, both within 0.005 of the data's."""
    n = 40_000
    x = sample_loop(oracle(SCH, lambda x, ab: gauss_eps(x, ab, 0.0, 0.25)), SCH, (n, 1),
                    np.random.default_rng(0), dtype=np.float64)
    want = exact_ddpm_std(SCH, 0.25, "beta_tilde")
    assert abs(x.std() - want) < 4 * want / math.sqrt(2 * n), (x.std(), want)
    assert abs(x.mean()) < 4 * want / math.sqrt(n)
    assert abs(want - 0.4961) < 1e-4 and abs(exact_ddpm_std(SCH, 0.25, "beta") - 0.5008) < 1e-4


def test_ddim_eta0_is_deterministic_and_converges():
    """DDIM with eta = 0 (eq. (27) with sigma_t = 0) maps x_T to x_0 by the discretised
    probability-flow ODE, which for
    Gaussian data is the affine map keeping (x - mean_t) / std_t; its error shrinks as the
    number of steps grows (first order: about 4x smaller for 4x the steps), and the noise
    generator plays no part."""
    m, s2 = 0.5, 0.25
    eps_fn = lambda x, ab: gauss_eps(x, ab, m, s2)  # noqa: E731
    x_T = np.random.default_rng(0).standard_normal((500, 1))
    ab_T = SCH.alpha_bar[-1]
    exact = m + math.sqrt(s2) * (x_T - math.sqrt(ab_T) * m) / math.sqrt(ab_T * s2 + 1 - ab_T)
    errors = []
    for steps in (10, 40, 160):
        sch = SCH.strided(steps)
        runs = [sample_loop(oracle(sch, eps_fn), sch, x_T.shape, np.random.default_rng(seed),
                            sampler="ddim", eta=0.0, x_T=x_T, dtype=np.float64) for seed in (1, 2)]
        np.testing.assert_array_equal(runs[0], runs[1])
        errors.append(np.abs(runs[0] - exact).max())
    assert errors[0] > 3 * errors[1] > 9 * errors[2] and errors[2] < 0.05, errors


def test_ddim_eta1_is_ddpm_with_beta_tilde():
    """With sigma_t^2 = beta_tilde_t (eta = 1 in eq. (28)) the DDIM step of eqs. (27) and
    (29) is the ancestral step (17):
    one seed gives the same samples, also on a strided schedule."""
    eps_fn = lambda x, ab: gmm_eps(x, ab)  # noqa: E731
    for sch in (SCH.strided(50), make_schedule("cosine", 100)):
        a = sample_loop(oracle(sch, eps_fn), sch, (300, 2), np.random.default_rng(5),
                        sampler="ddim", eta=1.0, dtype=np.float64)
        b = sample_loop(oracle(sch, eps_fn), sch, (300, 2), np.random.default_rng(5),
                        sampler="ddpm", dtype=np.float64)
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)


def test_ddim_fractional_eta_follows_the_paper():
    """eta = 0.5 against DDIM's eq. (12) with sigma_t = eta sqrt((1 - ab_s) / (1 - ab_t))
    sqrt(1 - ab_t / ab_s) (Song et al. 2021, eq. 16), written here from alpha_bar alone and
    run with the same noise draws on a strided schedule: one z per step t > 1."""
    eta, m, s2 = 0.5, 0.5, 0.25
    eps_fn = lambda x, ab: gauss_eps(x, ab, m, s2)  # noqa: E731
    sch = SCH.strided(20)
    x_T = np.random.default_rng(0).standard_normal((400, 1))
    got = sample_loop(oracle(sch, eps_fn), sch, x_T.shape, np.random.default_rng(3),
                      sampler="ddim", eta=eta, x_T=x_T, dtype=np.float64)
    rng, x = np.random.default_rng(3), x_T
    for t in range(sch.T, 0, -1):
        ab_t, ab_s = sch.alpha_bar[t], sch.alpha_bar[t - 1]
        eps = eps_fn(x, ab_t)
        x0 = (x - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
        sigma = eta * math.sqrt((1 - ab_s) / (1 - ab_t)) * math.sqrt(1 - ab_t / ab_s)
        x = math.sqrt(ab_s) * x0 + math.sqrt(1 - ab_s - sigma ** 2) * eps
        if t > 1:
            x = x + sigma * rng.standard_normal(x_T.shape)
    np.testing.assert_allclose(got, x, rtol=1e-10, atol=1e-12)
    # the seed's sigma_t^2 = eta * beta_tilde_t would give a visibly different chain
    seeds_eta = sample_loop(oracle(sch, eps_fn), sch, x_T.shape, np.random.default_rng(3),
                            sampler="ddim", eta=eta ** 0.5, x_T=x_T, dtype=np.float64)
    assert np.abs(seeds_eta - got).max() > 1e-2


def test_score_from_the_oracle_eps_is_the_analytic_score():
    """eq. (21): -E[eps | x_t] / sqrt(1 - ab) is grad log q(x_t) of the noised mixture,
    checked against central differences of its log-density."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 2)) * 2
    for t in (1, 30, 300, 1000):
        ab = float(SCH.alpha_bar[t])
        score = score_from_eps(SCH, x, t, gmm_eps(x, ab))

        def log_q(z):
            logp, _ = gmm_terms(z, ab)
            mx = logp.max(1)
            return mx + np.log(np.exp(logp - mx[:, None]).sum(1))

        h = 1e-5
        num = np.stack([(log_q(x + h * e) - log_q(x - h * e)) / (2 * h) for e in np.eye(2)], 1)
        np.testing.assert_allclose(score, num, rtol=1e-5, atol=1e-5 / math.sqrt(1 - ab))


def _exact_classifier_logits(x, ab):
    """log pi_k N(x; sqrt(ab) mu_k, v_k I) as refgen ops (B, K): log_softmax of it is log p(k | x_t)."""
    v = ab * S ** 2 + 1 - ab
    diff = F.unsqueeze(x, 1) - Tensor(math.sqrt(ab) * MU[None])          # (B, K, 2)
    return Tensor(np.log(PI) - np.log(2 * np.pi * v)) - F.sum(diff * diff, -1) * Tensor(1 / (2 * v))


def test_classifier_guidance_with_the_exact_classifier_samples_the_component():
    """eq. (25) with w = 1 and the exact p(y | x_t) turns the mixture's score into component
    k's score, eq. (24): the sampler then draws from N(mu_k, s_k^2 I) alone."""
    sch = SCH.strided(200)
    k, n = 2, 1000

    def predict(x, t):
        ab = _ab(sch, t, x)
        eps = gmm_eps(x, ab)
        g = log_prob_grad(lambda xx: _exact_classifier_logits(xx, ab), x, np.full(n, k))
        eps = classifier_guided_eps(sch, x, t, eps, g, 1.0)               # (25)
        return interpret(eps, x, t, sch, "eps", "beta_tilde")

    x = sample_loop(predict, sch, (n, 2), np.random.default_rng(0), dtype=np.float64)
    nearest = ((x[:, None] - MU[None]) ** 2).sum(-1).argmin(1)
    assert (nearest == k).mean() > 0.995
    assert np.all(np.abs(x.mean(0) - MU[k]) < 4 * S[k] / math.sqrt(n) + 0.01)
    assert np.all(np.abs(x.std(0) - S[k]) < 0.03)
    # unguided, the same sampler gives the mixture with its weights
    x = sample_loop(oracle(sch, lambda x, ab: gmm_eps(x, ab)), sch, (n, 2), np.random.default_rng(1),
                    dtype=np.float64)
    share = np.bincount(((x[:, None] - MU[None]) ** 2).sum(-1).argmin(1), minlength=3) / n
    assert np.all(np.abs(share - PI) < 4 * np.sqrt(PI * (1 - PI) / n))


def test_classifier_free_guidance_is_classifier_guidance_on_the_implicit_classifier():
    """eq. (26) with the exact conditional and unconditional eps equals eq. (25) on the
    unconditional eps with the exact classifier and weight w + 1."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((20, 2)) * 2
    for t, w in ((10, 0.5), (400, 2.0), (900, 4.0)):
        ab = float(SCH.alpha_bar[t])
        k = 1
        cfg = cfg_eps(gmm_eps(x, ab, k), gmm_eps(x, ab), w)              # (26)
        g = log_prob_grad(lambda xx: _exact_classifier_logits(xx, ab), x, np.full(len(x), k))
        cg = classifier_guided_eps(SCH, x, t, gmm_eps(x, ab), g, w + 1.0)  # (25)
        np.testing.assert_allclose(cfg, cg, rtol=1e-8, atol=1e-10)
