"""The forward process and its posterior, eqs. (1), (3), (9)-(12), checked against results
computed independently (composition and products of Gaussians, simulation)."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from refgen.backend import use_backend
from refgen.models.diffusion.process import (eps_from_x0, interpret, mean_from_eps, q_posterior,
                                             q_sample, q_step, v_from, x0_eps_from_v,
                                             x0_from_eps)
from refgen.models.diffusion.schedule import make_schedule

with use_backend("numpy"):
    SCH = {k: make_schedule(k, 1000) for k in ("linear", "cosine")}
pytestmark = pytest.mark.usefixtures("numpy_backend")  # closed-form oracles: float64 NumPy


@given(kind=st.sampled_from(["linear", "cosine"]), t=st.integers(1, 999))
def test_q_xt_x0_is_the_composition_of_single_steps(kind, t):
    """x_t = a x_{t-1} + sqrt(beta_t) e is affine-Gaussian: composing t of them from x_0 gives
    N(m_t x_0, v_t) with m_t = prod sqrt(alpha_i), v_t = alpha_t v_{t-1} + beta_t, which must
    be eq. (3)."""
    sch = SCH[kind]
    m, v = 1.0, 0.0
    for i in range(1, t + 1):
        m, v = np.sqrt(sch.alpha[i]) * m, sch.alpha[i] * v + sch.beta[i]
    assert np.isclose(m, sch.sqrt_alpha_bar[t], rtol=1e-12)
    assert np.isclose(v, 1 - sch.alpha_bar[t], rtol=1e-9, atol=1e-15)


def test_q_xt_x0_by_simulation():
    """300 single forward steps of eq. (1) and one reparameterized jump (eqs. (2), (3)) from
    the same x_0 both have the mean sqrt(alpha_bar_t) x_0 and the std sqrt(1 - alpha_bar_t)."""
    sch = SCH["linear"]
    rng = np.random.default_rng(0)
    n, t = 20_000, 300
    x0 = np.array([1.5, -0.5])
    x = np.broadcast_to(x0, (n, 2)).copy()
    for i in range(1, t + 1):                         # t single steps, eq. (1)
        x = q_step(sch, x, i, rng.standard_normal((n, 2)))
    jump = q_sample(sch, np.broadcast_to(x0, (n, 2)), t, rng.standard_normal((n, 2)))  # eq. (3)
    mean, sd = np.sqrt(sch.alpha_bar[t]) * x0, np.sqrt(1 - sch.alpha_bar[t])
    for s in (x, jump):
        assert np.all(np.abs(s.mean(0) - mean) < 4 * sd / np.sqrt(n))
        assert np.all(np.abs(s.std(0) - sd) < 4 * sd / np.sqrt(2 * n))


@given(kind=st.sampled_from(["linear", "cosine"]), t=st.integers(2, 1000),
       x0=st.floats(-2, 2), xt=st.floats(-3, 3))
def test_posterior_is_the_product_of_gaussians(kind, t, x0, xt):
    """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0), eq. (9): precisions add and
    the mean is precision-weighted, which must equal the variance beta_tilde_t of eq. (7) and
    the means of eqs. (10) and (12)."""
    sch = SCH[kind]
    a, b, ab_prev = sch.alpha[t], sch.beta[t], sch.alpha_bar[t - 1]
    # as a function of x_{t-1}: N(x_t; sqrt(a) x_{t-1}, b) has precision a / b and mean x_t / sqrt(a)
    prec = a / b + 1.0 / (1.0 - ab_prev)
    mean = (np.sqrt(a) / b * xt + np.sqrt(ab_prev) / (1.0 - ab_prev) * x0) / prec
    mu, var = q_posterior(sch, np.array([x0]), np.array([xt]), t)
    assert np.isclose(var, 1.0 / prec, rtol=1e-9)
    assert np.isclose(mu[0], mean, rtol=1e-9, atol=1e-12)
    # eq. (12) with the eps that eq. (11) pairs with (x_t, x_0) is the same mean
    eps = eps_from_x0(sch, np.array([xt]), t, np.array([x0]))
    assert np.isclose(mean_from_eps(sch, np.array([xt]), t, eps)[0], mean, rtol=1e-8, atol=1e-10)


@given(t=st.integers(1, 1000), param=st.sampled_from(["eps", "x0", "v"]))
def test_parameterizations_agree(t, param):
    """eps, x_0 and v targets describe the same (x_0, eps) pair through eq. (11)."""
    sch = SCH["cosine"] if t < 1000 else SCH["linear"]
    rng = np.random.default_rng(t)
    x0, eps = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    xt = q_sample(sch, x0, t, eps)
    np.testing.assert_allclose(x0_from_eps(sch, xt, t, eps), x0, rtol=1e-6, atol=1e-6)
    x0_v, eps_v = x0_eps_from_v(sch, xt, t, v_from(sch, x0, t, eps))
    np.testing.assert_allclose(x0_v, x0, atol=1e-9)
    np.testing.assert_allclose(eps_v, eps, atol=1e-9)
    out = {"eps": eps, "x0": x0, "v": v_from(sch, x0, t, eps)}[param]
    pred = interpret(out, xt, t, sch, param, "beta")
    np.testing.assert_allclose(pred.eps, eps, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pred.x0, x0, rtol=1e-5, atol=1e-5)


def test_learned_variance_interpolates():
    """eq. (23): var_frac = 1 gives beta_t, var_frac = 0 gives beta_tilde_t, in between a
    weighted geometric mean (var_frac = 0.7, where it and 1 - var_frac differ, as well as the
    symmetric 1/2)."""
    sch = SCH["linear"]
    xt, t = np.zeros((3, 1)), np.array([5, 500, 1000])
    for raw, want in ((1.0, sch.log_beta[t]), (-1.0, sch.log_beta_tilde_clipped[t]),
                      (0.0, 0.5 * (sch.log_beta[t] + sch.log_beta_tilde_clipped[t])),
                      (0.4, 0.7 * sch.log_beta[t] + 0.3 * sch.log_beta_tilde_clipped[t])):
        out = np.concatenate([np.zeros((3, 1)), np.full((3, 1), raw)], axis=1)
        pred = interpret(out, xt, t, sch, "eps", "learned")
        np.testing.assert_allclose(pred.log_var[:, 0], want)
