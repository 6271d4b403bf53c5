"""The reverse step and the training loss written out by hand: the ancestral step is a draw
from p_theta's Gaussian (eqs. (6), (17)), and DDPM.loss is L_simple (eq. (19)) at the x_t of
eq. (3), each compared with a direct float64 NumPy evaluation of the displayed formula."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from refgen.autograd import Tensor
from refgen.backend import asarray, default_rng, to_numpy, use_backend
from refgen.models.base import Batch
from refgen.models.diffusion import DDPM
from refgen.models.diffusion.losses import l_simple
from refgen.models.diffusion.process import Prediction
from refgen.models.diffusion.sampling import ddpm_step
from refgen.models.diffusion.schedule import make_schedule

with use_backend("numpy"):
    SCH = {k: make_schedule(k, 1000) for k in ("linear", "cosine")}


@given(kind=st.sampled_from(["linear", "cosine"]), t=st.integers(1, 1000),
       log_var=st.floats(-9.0, 0.5), seed=st.integers(0, 2**16))
def test_reverse_step_draws_from_p_theta(kind, t, log_var, seed):
    """eq. (6) with the mean of eq. (17): x_{t-1} = mu_theta + exp(log Sigma / 2) z, where
    mu_theta = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta) / sqrt(alpha_t); at t = 1 the
    step returns the mean itself (no noise at the last step)."""
    with use_backend("numpy"):
        sch = SCH[kind]
        rng = np.random.default_rng(seed)
        xt, eps, z = rng.standard_normal((3, 4, 3))
        lv = np.full((4, 3), log_var)
        pred = Prediction(eps=eps, x0=None, log_var=lv)
        a, b, ab = sch.alpha[t], sch.beta[t], sch.alpha_bar[t]
        mu = (xt - b / np.sqrt(1.0 - ab) * eps) / np.sqrt(a)          # (17), by hand
        expected = mu if t == 1 else mu + np.exp(0.5 * log_var) * z   # (6)
        np.testing.assert_allclose(ddpm_step(sch, xt, t, pred, z), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("param", ["eps", "x0", "v"])
def test_ddpm_loss_is_l_simple_at_the_forward_sample(param):
    """DDPM.loss is eq. (19): the mean of ||target - net(x_t, t)||^2 with t ~ U{1..T},
    eps ~ N(0, I) and x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (eq. (3)),
    replayed here from a generator seeded as the one handed to loss; the target is eps, x_0 or
    v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0."""
    m = DDPM((2,), T=50, parameterization=param, hidden=16, depth=1, data_scale=2.0, seed=1)
    x = np.random.default_rng(0).standard_normal((16, 2)).astype(np.float32) * 1.7
    replay = default_rng(5)
    loss = m.loss(Batch(Tensor(asarray(x))), default_rng(5)).item()

    t = to_numpy(replay.integers(1, m.T + 1, size=16))                 # the loss's own draws
    eps = to_numpy(replay.standard_normal((16, 2), dtype=np.float32)).astype(np.float64)
    x0 = x.astype(np.float64) / 2.0                                     # the model sees x / data_scale
    ab = to_numpy(m.schedule.alpha_bar)[t][:, None]
    xt = np.sqrt(ab) * x0 + np.sqrt(1.0 - ab) * eps                     # (3)
    out = to_numpy(m.net(Tensor(asarray(xt.astype(np.float32))),
                         asarray(t.astype(np.int64)), None).data).astype(np.float64)
    target = {"eps": eps, "x0": x0, "v": np.sqrt(ab) * eps - np.sqrt(1.0 - ab) * x0}[param]
    assert loss == pytest.approx(np.mean((target - out) ** 2), rel=1e-4)  # (19)
    assert 0.1 < loss < 10.0                                            # not a vacuous zero


def test_l_simple_is_the_mean_squared_error():
    """eq. (19)'s norm, averaged over batch and dimensions, at generic values."""
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((2, 5, 3))
    assert l_simple(Tensor(asarray(a)), Tensor(asarray(b))).item() == pytest.approx(
        np.mean((a - b) ** 2), rel=1e-6)
