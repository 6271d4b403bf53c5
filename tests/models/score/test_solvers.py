"""RK4's fourth order on a linear ODE, RK45 meeting its tolerance, and refusing when it cannot."""

import numpy as np
import pytest

from refgen.models.score.solvers import ODESolverError, rk4, rk45

pytestmark = pytest.mark.usefixtures("numpy_backend")

A = np.array([[-0.5, 2.0], [-2.0, -0.3]])       # a damped rotation: y' = A y


def exact(y0, t):
    w, v = np.linalg.eig(A)
    return (v @ np.diag(np.exp(w * t)) @ np.linalg.solve(v, y0.T)).real.T


def f(t, y):
    return y @ A.T


Y0 = np.array([[1.0, 0.5], [-0.3, 2.0]])


def test_rk4_error_falls_as_h_to_the_fourth():
    hs, errs = [], []
    for n in (10, 20, 40, 80):
        y, st = rk4(f, Y0, 0.0, 2.0, n)
        hs.append(2.0 / n)
        errs.append(np.abs(y - exact(Y0, 2.0)).max())
        assert st["nfev"] == 4 * n
    slope = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    assert 3.8 < slope < 4.2, slope


def test_rk4_backwards_in_time():
    y, _ = rk4(f, exact(Y0, 1.5), 1.5, 0.0, 200)
    assert np.allclose(y, Y0, atol=1e-8)


@pytest.mark.parametrize("tol", [1e-4, 1e-6, 1e-9])
def test_rk45_meets_its_tolerance(tol):
    y, st = rk45(f, Y0, 0.0, 3.0, rtol=tol, atol=tol)
    err = np.abs(y - exact(Y0, 3.0)).max()
    assert err < 30 * tol, (err, st)             # global error tracks the local tolerance
    assert st["steps"] > 0


def test_rk45_uses_fewer_steps_for_looser_tolerance_and_is_fifth_order_locally():
    _, loose = rk45(f, Y0, 0.0, 3.0, rtol=1e-4, atol=1e-4)
    _, tight = rk45(f, Y0, 0.0, 3.0, rtol=1e-8, atol=1e-8)
    assert loose["steps"] < tight["steps"]
    # step count grows like tol^(-1/5): 1e4 tighter -> about 10^(4/5) = 6.3 times the steps
    assert 3 < tight["steps"] / loose["steps"] < 12


def test_rk45_refuses_what_it_cannot_integrate():
    """y' = 1 / (1 - t)^2 blows up at t = 1: the solver must stop with t and the step size,
    not return a number."""
    blow = lambda t, y: np.ones_like(y) / (1.0 - t) ** 2  # noqa: E731
    with pytest.raises(ODESolverError, match=r"at t=0\.9999\d*, step size"):
        rk45(blow, np.zeros((1, 1)), 0.0, 2.0, rtol=1e-6, atol=1e-6, min_step=1e-9)


def test_rk45_max_steps():
    with pytest.raises(ODESolverError, match=r"more than 5 steps .* stuck at t=.*, step size"):
        rk45(f, Y0, 0.0, 3.0, rtol=1e-10, atol=1e-10, max_steps=5)


def test_rk45_bad_tolerance():
    with pytest.raises(ValueError, match="rtol > 0"):
        rk45(f, Y0, 0.0, 1.0, rtol=0.0)
