"""The PF-ODE log-density against the exact log-density of a Gaussian mixture, the
Skilling-Hutchinson estimator's bias and variance, dequantised bits/dim, bad input."""
import math

import numpy as np
import pytest

from refgen.autograd import Tensor, enable_grad
from refgen.backend import use_backend
from refgen.score_matching import exact_divergence, hutchinson_divergence, rademacher
from refgen.models.score.likelihood import bits_per_dim, dequantize, ode_log_likelihood
from refgen.models.score.mixture import GaussianMixture
from refgen.models.score.sde import SubVPSDE, VESDE, VPSDE
from refgen.models.score.solvers import ODESolverError

pytestmark = pytest.mark.usefixtures("numpy_backend")


def on_numpy(*args):
    """A mixture made at import, on NumPy as the module's tests run (the suite may import
    it under the stand-in device backend, REFGEN_STRICT_DEVICE=1)."""
    with use_backend("numpy"):
        return GaussianMixture(*args)


MIX = on_numpy([0.2, 0.8], [[-2.0, -1.0], [1.5, 1.0]], [0.4, 0.5])
SDES = [VESDE(0.01, 20.0), VPSDE(0.1, 20.0), SubVPSDE(0.1, 20.0)]


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_pf_ode_log_density_is_exact_with_the_exact_trace(sde):
    """log p_eps(x) from the ODE (with p_1's exact log-density at the far end) equals the
    mixture's own log p_eps(x) within 1e-3 nats."""
    rng = np.random.default_rng(0)
    x = MIX.sample(20, rng)
    x[:3] = [[0.0, 0.0], [-3.0, 2.0], [2.5, -1.5]]           # between and away from the modes
    got = ode_log_likelihood(sde, MIX.sde_score(sde, tensor=True), x, rtol=1e-8, atol=1e-8,
                             prior_logp=MIX.sde_log_prob(sde, sde.T))
    want = MIX.sde_log_prob(sde, sde.eps)(x)
    assert np.abs(got - want).max() < 1e-3, np.abs(got - want).max()


def test_pf_ode_log_density_with_rk4_and_with_the_prior():
    """Fixed-step RK4 agrees with RK45; the VP prior N(0, I) in place of p_1 changes the result
    by no more than the largest |log N(z; 0, I) - log p_1(z)| over the region z(1) reaches."""
    sde = VPSDE()
    x = MIX.sample(10, np.random.default_rng(1))
    sc, p1 = MIX.sde_score(sde, tensor=True), MIX.sde_log_prob(sde, sde.T)
    a = ode_log_likelihood(sde, sc, x, rtol=1e-7, atol=1e-7, prior_logp=p1)
    b = ode_log_likelihood(sde, sc, x, method="rk4", steps=300, prior_logp=p1)
    assert np.abs(a - b).max() < 1e-3
    c = ode_log_likelihood(sde, sc, x, rtol=1e-7, atol=1e-7)
    g = np.stack(np.meshgrid(np.linspace(-4, 4, 81), np.linspace(-4, 4, 81)), -1).reshape(-1, 2)
    bound = np.abs(sde.prior_logp(g) - p1(g)).max()
    assert 0 < np.abs(c - a).max() <= bound < 0.05


def drift_at(sde, x, t):
    xt = Tensor(x, requires_grad=True)
    tb = np.full(len(x), t)
    with enable_grad():
        return sde.ode_drift(xt, tb, MIX.sde_score(sde, tensor=True)(xt, tb)), xt


def test_hutchinson_is_unbiased_and_its_variance_falls_as_one_over_probes():
    sde = VPSDE()
    x = np.repeat(np.array([[0.3, -0.4]]), 20_000, 0)
    rng = np.random.default_rng(2)
    drift, xt = drift_at(sde, x, 0.3)
    exact = exact_divergence(drift, xt).data[0]
    one = hutchinson_divergence(drift, xt, rademacher(x.shape, rng, np.float64)).data
    assert abs(one.mean() - exact) < 4 * one.std() / math.sqrt(len(one))
    var = {}
    for k in (1, 4, 16):
        est = np.mean([hutchinson_divergence(drift, xt, rng.standard_normal(x.shape)).data
                       for _ in range(k)], axis=0)
        assert abs(est.mean() - exact) < 4 * est.std() / math.sqrt(len(est))
        var[k] = est.var()
    assert 3.4 < var[1] / var[4] < 4.6 and 3.4 < var[4] / var[16] < 4.6, var


def test_hutchinson_likelihood_is_unbiased():
    sde = VPSDE()
    x = np.repeat(np.array([[1.0, 0.5]]), 400, 0)
    rng = np.random.default_rng(3)
    got = ode_log_likelihood(sde, MIX.sde_score(sde, tensor=True), x, divergence="hutchinson",
                             rng=rng, prior_logp=MIX.sde_log_prob(sde, sde.T))
    want = MIX.sde_log_prob(sde, sde.eps)(x[:1])[0]
    assert got.std() > 0.01                                        # the probes do vary it
    assert abs(got.mean() - want) < 4 * got.std() / math.sqrt(len(got))


def test_bits_per_dim_of_uniform_dequantised_data():
    """A density uniform on [-1, 1]^D gives log p = -D log 2 and exactly 8 bits/dim for 256
    levels; dequantised values stay in their own bins."""
    d = 5
    assert np.isclose(bits_per_dim(np.array([-d * math.log(2.0)]), d), 8.0)
    rng = np.random.default_rng(4)
    k = rng.integers(0, 256, (100, d))
    x = -1 + 2 * k / 255
    xd = dequantize(x, rng)
    assert ((xd >= -1 + 2 * k / 256) & (xd < -1 + 2 * (k + 1) / 256)).all()


def test_bad_input_one_clear_line():
    sde = VPSDE()
    sc = MIX.sde_score(sde, tensor=True)
    with pytest.raises(ValueError, match=r"outside this model's range \[-1, 1\]"):
        ode_log_likelihood(sde, sc, np.array([[0.5, 1.7]]), data_range=(-1.0, 1.0))
    with pytest.raises(ValueError, match="accepted: exact, hutchinson"):
        ode_log_likelihood(sde, sc, np.zeros((1, 2)), divergence="trace")
    with pytest.raises(ValueError, match="needs rng"):
        ode_log_likelihood(sde, sc, np.zeros((1, 2)), divergence="hutchinson")


def test_a_solver_failure_names_t_and_the_step_size():
    sde = VPSDE()
    bad = lambda x, t: x * (1.0 / (0.5 - t[0]) ** 3)  # noqa: E731  a score that blows up at t = 0.5
    with pytest.raises(ODESolverError, match=r"stuck at t=0\.4\d*, step size"):
        ode_log_likelihood(sde, bad, np.ones((2, 2)), rtol=1e-6, atol=1e-6, max_steps=300)
