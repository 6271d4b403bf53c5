"""The probability-flow ODE in sigma-time (refgen.models.diffusion.ode), checked against the
exact flow of Gaussian data (tests/models/diffusion/fewsteps_oracle.py)."""
import math

import numpy as np
import pytest

from refgen.backend import default_rng
from refgen.models.diffusion import DDPM
from refgen.models.diffusion.ode import (eps_in_sigma, euler_step, heun_step, karras_sigmas,
                                         ode_sample, ode_solve, schedule_sigmas, sigma_to_t)
from refgen.models.diffusion.process import interpret
from tests.models.diffusion.fewsteps_oracle import M, S, eps_exact_sigma, flow, oracle

pytestmark = pytest.mark.usefixtures("numpy_backend")


def test_karras_grid_matches_its_formula():
    s = karras_sigmas(5, 0.02, 80.0, rho=7.0)
    assert s.shape == (6,) and s[-1] == 0.0
    assert math.isclose(s[0], 80.0, rel_tol=1e-12) and math.isclose(s[4], 0.02, rel_tol=1e-12)
    i = 2 / 4  # the middle point, by hand
    want = (80.0 ** (1 / 7) + i * (0.02 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    assert math.isclose(s[2], want, rel_tol=1e-12)
    assert np.all(np.diff(s) < 0)
    with pytest.raises(ValueError, match="sigma_min"):
        karras_sigmas(5, 0.0, 80.0)


def test_sigma_time_of_the_schedule():
    m = DDPM((2,), T=200, schedule="cosine", hidden=8, depth=1)
    sch = m.schedule
    sig = schedule_sigmas(sch)
    t = np.array([1, 17, 150, 200])
    np.testing.assert_allclose(sig[t], np.sqrt((1 - sch.alpha_bar[t]) / sch.alpha_bar[t]))
    np.testing.assert_allclose(sigma_to_t(sch, sig[t]), t, atol=1e-9)          # integer steps
    mid = math.sqrt(sig[40] * sig[41])                                         # halfway in log sigma
    assert math.isclose(float(sigma_to_t(sch, mid)), 40.5, rel_tol=1e-9)


@pytest.mark.parametrize("param", ["eps", "x0", "v"])
def test_eps_in_sigma_is_the_networks_eps_at_integer_steps(param):
    """At sigma = sigma_t, x = x_t / sqrt(alpha_bar_t): the same eps as the network's at t,
    whichever target it predicts (converted to eps by eq. (11))."""
    m = DDPM((2,), T=100, parameterization=param, hidden=16, depth=1, seed=3)
    rng = np.random.default_rng(0)
    for p in m.parameters():
        p.data = rng.standard_normal(p.data.shape).astype(p.data.dtype) * 0.3
    t = np.array([3, 40, 77, 100])
    xt = rng.standard_normal((4, 2)).astype(np.float32)
    want = interpret(m._net(xt, t, None), xt, t, m.schedule, param, m.variance).eps.data
    x = xt / np.sqrt(m.schedule.alpha_bar[t]).reshape(-1, 1)
    got = eps_in_sigma(m, x.astype(np.float32), schedule_sigmas(m.schedule)[t])
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


def _solve_errors(method, ns, s_max=20.0, s_min=0.05):
    x = np.random.default_rng(1).standard_normal((64, 2)) * 3
    f = lambda xx, s: eps_exact_sigma(xx, s)
    exact = flow(x, s_max, s_min)
    return [np.abs(ode_solve(f, x, karras_sigmas(n, s_min, s_max, zero=False), method) - exact).max()
            for n in ns]


@pytest.mark.parametrize("method,order", [("euler", 1.0), ("heun", 2.0)])
def test_solver_order_on_the_exact_ode(method, order):
    """Global error ~ n^-order on a rho-spaced grid: slope 1 for Euler, 2 for Heun."""
    ns = np.array([16, 32, 64, 128])
    err = _solve_errors(method, ns)
    slope = -np.polyfit(np.log(ns), np.log(err), 1)[0]
    assert abs(slope - order) < 0.2, (method, slope, err)


def test_steps_move_down_in_sigma_with_the_papers_sign():
    """One step from sigma to sigma' < sigma: x + (sigma' - sigma) Phi is within O(h^2) of the
    exact flow (O(h^3) for Heun); the sign written x - (sigma' - sigma) Phi is off by O(h)."""
    x = np.random.default_rng(2).standard_normal((256, 2)) * 2
    f = lambda xx, s: eps_exact_sigma(xx, s)
    errs = {}
    for h in (0.2, 0.1, 0.05):
        s, s2 = 1.0, 1.0 - h
        exact = flow(x, s, s2)
        errs[h] = (np.abs(euler_step(f, x, s, s2) - exact).max(),
                   np.abs(heun_step(f, x, s, s2) - exact).max(),
                   np.abs(x - (s2 - s) * f(x, s) - exact).max())
    for k in range(3):  # error ratios when h halves: 4 (Euler), 8 (Heun), 2 (wrong sign)
        r = errs[0.1][k] / errs[0.05][k]
        assert abs(math.log2(r) - (2, 3, 1)[k]) < 0.35, (k, r)
    assert errs[0.05][2] > 20 * errs[0.05][0]


def test_ode_sampler_is_the_ode_of_the_networks_eps():
    """The oracle DDPM's ODE sampler (through its network, fractional steps and all) equals
    Heun on the exact drift; both approach the exact flow of the prior draw at second order,
    and the samples have the data's mean and spread."""
    m = oracle("v")
    z = np.random.default_rng(5).standard_normal((4000, 2))
    sig = schedule_sigmas(m.schedule)
    s_1, s_T = float(sig[1]), float(sig[-1])
    want = flow(z * math.sqrt(1 + s_T ** 2), s_T, 0.0)
    errs = []
    for n in (36, 72):
        got = ode_sample(m, 4000, default_rng(0), steps=n, x_T=z, dtype=np.float64)
        exact_drift = ode_solve(eps_exact_sigma, z * math.sqrt(1 + s_T ** 2),
                                karras_sigmas(n, s_1, s_T), "heun")
        np.testing.assert_allclose(got, exact_drift, rtol=1e-9, atol=1e-9)
        errs.append(np.abs(got - want).max())
    assert 3.0 < errs[0] / errs[1] < 5.5, errs                          # second order
    np.testing.assert_allclose(got.mean(0), M, atol=0.06)
    np.testing.assert_allclose(got.std(0), S, rtol=0.04)
    euler = m.sample(4000, rng=default_rng(0), sampler="euler", steps=72, x_T=z)
    assert np.abs(euler - want).max() > 5 * errs[1]                     # first order is worse
