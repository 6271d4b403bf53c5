"""VE, VP and sub-VP SDEs: perturbation kernels against Euler-Maruyama simulation of the
forward SDE, the VP kernel against DDPM's q(x_t | x_0), priors, bad ladders."""
import math

import numpy as np
import pytest

from refgen.models.diffusion.schedule import make_schedule
from refgen.models.score.samplers import check_sigmas
from refgen.models.score.sde import SubVPSDE, VESDE, VPSDE, make_sde

pytestmark = pytest.mark.usefixtures("numpy_backend")


@pytest.mark.parametrize("sde", [VESDE(0.05, 5.0), VPSDE(0.1, 20.0), SubVPSDE(0.1, 20.0),
                                 VPSDE(0.5, 7.0)], ids=repr)
@pytest.mark.parametrize("t_end", [0.3, 0.8])
def test_kernel_matches_euler_maruyama_simulation(sde, t_end):
    """Simulate dx = f dt + g dw from a fixed x_0 in 2000 small steps; the cloud's mean and
    variance must be the kernel's m(t) x_0 and s(t)^2 (to Monte Carlo error)."""
    rng = np.random.default_rng(1)
    n, steps = 20_000, 2000
    x0 = np.array([1.3, -0.7])
    x = np.broadcast_to(x0, (n, 2)).copy()
    dt = t_end / steps
    for i in range(steps):
        t = np.full(n, i * dt)
        x = x + sde.drift(x, t) * dt + sde.diffusion(t)[:, None] * math.sqrt(dt) * rng.standard_normal((n, 2))
    m, s = sde.marginal(np.array(t_end))
    sd = float(s)
    assert np.allclose(x.mean(0), float(m) * x0, atol=4 * sd / math.sqrt(n) + 2e-3 * abs(x0).max())
    assert np.allclose(x.var(0), sd ** 2, rtol=0.04)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_vp_kernel_from_a_schedule_is_ddpm_q_at_every_step(kind):
    """m(i/N)^2 = alpha_bar_i and s(i/N)^2 = 1 - alpha_bar_i: eq. (3) at the matching step."""
    sch = make_schedule(kind, 200)
    sde = VPSDE.from_schedule(sch)
    i = np.arange(0, 201)
    m, s = sde.marginal(i / 200)
    assert np.allclose(m ** 2, sch.alpha_bar[i], rtol=1e-12, atol=0)
    assert np.allclose(s ** 2, 1 - sch.alpha_bar[i], rtol=1e-12, atol=1e-300)
    # beta(t) is B's derivative, positive and continuous (no jumps at the grid points)
    t = np.linspace(0.0005, 0.9995, 3001)
    h = 1e-7
    assert np.allclose(sde.beta(t), (sde.B(t + h) - sde.B(t - h)) / (2 * h), rtol=1e-5)
    assert (sde.beta(t) > 0).all()
    g = np.arange(1, 200) / 200
    assert np.allclose(sde.beta(g - 1e-12), sde.beta(g + 1e-12), rtol=1e-8)


def test_linear_vp_is_the_limit_of_ddpm_linear_schedule():
    """beta_min = N beta_1, beta_max = N beta_N: log alpha_bar_i = -B(i/N) (1 + O(1/i))."""
    sch = make_schedule("linear", 1000)
    sde = VPSDE(0.1, 20.0)
    i = np.array([100, 500, 1000])
    m, _ = sde.marginal(i / 1000)
    assert np.allclose(np.log(m ** 2), np.log(sch.alpha_bar[i]), rtol=1e-2)


def test_subvp_variance_is_below_vp():
    t = np.linspace(0.01, 1, 50)
    assert (SubVPSDE().marginal(t)[1] < VPSDE().marginal(t)[1]).all()


@pytest.mark.parametrize("sde", [VESDE(0.01, 7.0), VPSDE()], ids=repr)
def test_prior_logp_is_the_gaussian_density(sde):
    rng = np.random.default_rng(0)
    z = sde.prior_sample((5, 3), rng)
    s = sde.prior_std()
    want = (-0.5 * z ** 2 / s ** 2 - 0.5 * np.log(2 * np.pi * s ** 2)).sum(1)
    assert np.allclose(sde.prior_logp(z), want)


def test_ve_diffusion_is_the_derivative_of_the_variance():
    sde = VESDE(0.02, 30.0)
    t, h = 0.37, 1e-6
    var = lambda u: sde.marginal(np.array(u))[1] ** 2  # noqa: E731
    assert np.isclose(sde.diffusion(t) ** 2, (var(t + h) - var(t - h)) / (2 * h), rtol=1e-6)


def test_bad_input_one_clear_line():
    with pytest.raises(ValueError, match="strictly decreasing"):
        check_sigmas([1.0, 2.0, 0.5])
    with pytest.raises(ValueError, match="strictly decreasing"):
        check_sigmas([1.0, 1.0])
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        VESDE(5.0, 1.0)
    with pytest.raises(ValueError, match="accepted: ve, vp, subvp"):
        make_sde("vv")
