"""Schedules: the published numbers of the linear and cosine schedules, eq. (22), and the
quantities derived from the betas."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refgen.models.diffusion.schedule import (Schedule, cosine_betas, linear_betas,
                                              make_schedule, strided_timesteps)

pytestmark = pytest.mark.usefixtures("numpy_backend")  # closed-form oracles: float64 NumPy


def test_linear_alpha_bar_T():
    sch = make_schedule("linear", 1000)
    assert f"{float(sch.alpha_bar[-1]):.3e}" == "4.036e-05"
    assert sch.beta[1] == pytest.approx(1e-4) and sch.beta[-1] == pytest.approx(0.02)
    assert sch.alpha_bar.dtype == np.float64


def test_linear_scales_with_T():
    b = linear_betas(250)  # both ends times 1000 / T = 4
    assert b[0] == pytest.approx(4e-4) and b[-1] == pytest.approx(0.08) and len(b) == 250
    # the point of the scaling: alpha_bar_T stays of the same order
    assert 1e-6 < float(np.prod(1 - b)) < 1e-3
    with pytest.raises(ValueError, match="T > 20"):
        linear_betas(20)


def test_cosine_schedule_facts():
    """eq. (22): alpha_bar_t = f(t) / f(0) with beta_t clipped at 0.999, checked against the
    formula evaluated directly; beta_1 = 4.13e-5 and only beta_T reaches the clip."""
    b = cosine_betas(1000)
    assert b[0] == pytest.approx(4.13e-5, rel=2e-3)
    clipped = np.flatnonzero(b >= 0.999)
    assert clipped.tolist() == [999]  # only the last beta hits the clip
    # alpha_bar follows f(t)/f(0) wherever nothing was clipped
    t = np.arange(1, 1000)
    f = np.cos((t / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2
    f0 = math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    np.testing.assert_allclose(np.cumprod(1 - b)[:-1], f / f0, rtol=1e-10)


def test_derived_quantities():
    """alpha_bar_t = prod alpha_i (eq. (3)) and beta_tilde_t of eq. (10), recomputed directly."""
    sch = make_schedule("cosine", 100)
    t = np.arange(2, 101)
    np.testing.assert_allclose(sch.alpha_bar[t], sch.alpha_bar[t - 1] * (1 - sch.beta[t]))
    np.testing.assert_allclose(sch.beta_tilde[t],
                               (1 - sch.alpha_bar[t - 1]) / (1 - sch.alpha_bar[t]) * sch.beta[t])
    assert sch.beta_tilde[1] == 0.0 and sch.alpha_bar[0] == 1.0
    # the reverse process's log beta_tilde is finite at t = 1 (beta_tilde_2 stands in)
    assert sch.log_beta_tilde_clipped[1] == pytest.approx(math.log(sch.beta_tilde[2]))
    with pytest.raises(ValueError):
        make_schedule("quadratic", 10)


@given(S=st.integers(1, 60))
def test_strided_schedule_keeps_alpha_bar(S):
    sch = make_schedule("linear", 60)
    tau = strided_timesteps(60, S)
    assert len(tau) == S and tau[-1] == 60 and np.all(np.diff(tau) > 0)
    if S >= 2:
        assert tau[0] == 1
    short = sch.respace(tau)
    np.testing.assert_allclose(short.alpha_bar[1:], sch.alpha_bar[tau], rtol=1e-9)
    assert short.net_t[1:].tolist() == tau.tolist()
    assert sch.strided(60) is sch


def test_schedule_rejects_bad_betas():
    with pytest.raises(ValueError):
        Schedule(np.array([0.1, 1.2]))
