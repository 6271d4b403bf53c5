"""Consistency models (refgen.models.diffusion.consistency): eq. (30)'s boundary condition,
its coefficients, the CD (31) and CT (32) targets against the exact consistency function of
Gaussian data (tests/models/diffusion/fewsteps_oracle.py), the schedules and sampling."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refgen import optim
from refgen.autograd import Tensor
from refgen.backend import default_rng
from refgen.models.base import Batch
from refgen.models.diffusion import DDPM
from refgen.models.diffusion.consistency import (ConsistencyDistillation, ConsistencyTraining,
                                                 c_in, c_noise, c_out, c_skip,
                                                 ct_mu, ct_N, distance, karras_times)
from refgen.nn import Module
from tests.models.diffusion.fewsteps_oracle import (M, S, consistency_exact, eps_exact_sigma,
                                                    flow, oracle)

pytestmark = pytest.mark.usefixtures("numpy_backend")


def _randomize(module, seed, scale=0.5):
    rng = np.random.default_rng(seed)
    for p in module.parameters():
        p.data = (rng.standard_normal(p.data.shape) * scale).astype(p.data.dtype)


@given(seed=st.integers(0, 10 ** 6), epsilon=st.floats(1e-3, 0.5), sigma_data=st.floats(0.1, 2.0))
def test_identity_at_epsilon_for_any_weights(seed, epsilon, sigma_data):
    """f_theta(x, epsilon) = x exactly (bit for bit), whatever the weights: the boundary
    condition the parameterisation of eq. (30) is built for."""
    cm = ConsistencyTraining((2,), seed=seed % 100, epsilon=epsilon, sigma_data=sigma_data,
                             hidden=16, depth=1)
    _randomize(cm.online, seed)
    x = np.random.default_rng(seed).standard_normal((7, 2)).astype(np.float32) * 3
    out = cm.online(Tensor(x), np.full(7, cm.epsilon)).data
    np.testing.assert_array_equal(out, x)
    assert np.abs(cm.online(Tensor(x), np.full(7, 2 * cm.epsilon + 0.3)).data - x).max() > 1e-4


def test_identity_at_epsilon_on_images():
    cm = ConsistencyTraining((1, 8, 8), channels=8, channel_mult=(1, 2), num_res_blocks=1,
                             groups=4, epsilon=0.002)
    _randomize(cm.online, 3, 0.2)
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(cm.online(Tensor(x), np.full(2, 0.002)).data, x)


def test_coefficients_match_their_formulas():
    t, eps, sd = np.array([0.002, 0.3, 1.7, 80.0]), 0.002, 0.5
    np.testing.assert_allclose(c_skip(t, eps, sd), sd ** 2 / ((t - eps) ** 2 + sd ** 2))
    np.testing.assert_allclose(c_skip(np.array(1.7), eps, sd), 0.25 / (1.698 ** 2 + 0.25), rtol=1e-14)
    np.testing.assert_allclose(c_out(np.array(1.7), eps, sd), 0.5 * 1.698 / math.sqrt(0.25 + 2.89),
                               rtol=1e-14)
    np.testing.assert_allclose(c_in(np.array(1.7), sd), 1 / math.sqrt(0.25 + 2.89), rtol=1e-14)
    np.testing.assert_allclose(c_noise(np.array(1.7)), 250 * math.log(1.7), rtol=1e-14)
    assert c_skip(np.array(eps), eps, sd) == 1.0 and c_out(np.array(eps), eps, sd) == 0.0
    assert c_skip(np.array(1e6), eps, sd) < 1e-12 and abs(c_out(np.array(1e6), eps, sd) - sd) < 1e-6


def test_forward_is_eq_30():
    """Eq. (30): f = c_skip x + c_out F(c_in x, c_noise), with F the network."""
    cm = ConsistencyTraining((2,), hidden=16, depth=1, sigma_data=0.7, epsilon=0.01)
    _randomize(cm.online, 1)
    x = np.random.default_rng(1).standard_normal((5, 2)).astype(np.float32)
    t = np.array([0.05, 0.5, 2.0, 10.0, 60.0])
    F_ = cm.online.net(Tensor(x * c_in(t, 0.7)[:, None].astype(np.float32)), c_noise(t)).data
    want = c_skip(t, 0.01, 0.7)[:, None] * x + c_out(t, 0.01, 0.7)[:, None] * F_
    np.testing.assert_allclose(cm.online(Tensor(x), t).data, want, rtol=1e-5, atol=1e-6)


def test_grid_and_ct_schedules():
    t = karras_times(18, 0.002, 80.0)
    assert t.shape == (18,) and math.isclose(t[0], 0.002) and math.isclose(t[-1], 80.0)
    assert np.all(np.diff(t) > 0)
    want = (0.002 ** (1 / 7) + 5 / 17 * (80 ** (1 / 7) - 0.002 ** (1 / 7))) ** 7
    assert math.isclose(t[5], want, rel_tol=1e-12)
    assert ct_N(0, 1000) == 2 and ct_N(1000, 1000) == 151
    assert ct_N(250, 1000) == math.ceil(math.sqrt(0.25 * (151 ** 2 - 4) + 4) - 1) + 1 == 76
    assert math.isclose(ct_mu(0, 1000), 0.9)                       # exp(2 log 0.9 / 2)
    assert math.isclose(ct_mu(250, 1000), math.exp(2 * math.log(0.9) / 76))
    assert ct_N(50, 1000, s0=10, s1=1280) == math.ceil(math.sqrt(0.05 * (1281 ** 2 - 100) + 100) - 1) + 1


def test_distances():
    x = Tensor(np.array([[1.0, -2.0], [0.5, 0.5]]))
    y = Tensor(np.array([[0.0, 1.0], [0.5, 0.0]]))
    np.testing.assert_allclose(distance(x, y, "l2").data, [10.0, 0.25])
    np.testing.assert_allclose(distance(x, y, "l1").data, [4.0, 0.5])
    with pytest.raises(ValueError, match="LPIPS"):
        distance(x, y, "lpips")


class _Exact(Module):
    """The exact consistency function of the oracle's Gaussian data, as a module."""

    def __init__(self, epsilon):
        super().__init__()
        self.epsilon = epsilon

    def forward(self, x, t):
        x = x.data if isinstance(x, Tensor) else x
        return Tensor(consistency_exact(np.asarray(x, np.float64), np.asarray(t), self.epsilon))


def test_exact_consistency_function_is_self_consistent():
    """f(x_t, t) = f(x_t', t') along the exact flow, and f(x, epsilon) = x."""
    x = np.random.default_rng(0).standard_normal((100, 2)) * 5
    f = lambda xx, t: consistency_exact(xx, np.full(len(xx), t), 0.002)
    np.testing.assert_allclose(f(x, 7.0), f(flow(x, 7.0, 0.4), 0.4), rtol=1e-12)
    np.testing.assert_allclose(f(x, 0.002), x, rtol=1e-14)


def _cd(solver, N=18):
    teacher = oracle("v")
    cd = ConsistencyDistillation((2,), teacher=teacher, N=N, solver=solver, hidden=8, depth=1)
    cd.online, cd.target = _Exact(cd.epsilon), _Exact(cd.epsilon)
    return cd


class _Wrong(_Exact):
    """m + (x - m) a(t)^0.9: right at t = epsilon, but not constant along the flow."""

    def forward(self, x, t):
        x = np.asarray(x.data if isinstance(x, Tensor) else x, np.float64)
        a = consistency_exact(M + np.ones_like(x), np.asarray(t), self.epsilon) - M
        return Tensor(M + (x - M) * a ** 0.9)


def test_cd_loss_of_the_exact_consistency_function_vanishes():
    """With f exact and Phi the oracle teacher's ODE step (31), the CD loss is zero up to the
    solver's error, which falls as the grid refines at the solver's order (per-step error h^2
    for Euler, h^3 for Heun: the squared distance falls 16x and 64x when N doubles); a
    function that is not constant along the flow keeps a loss orders larger."""
    data = np.random.default_rng(0).standard_normal((4000, 2)) * S + M
    batch = Batch(Tensor(data))
    loss = {(s, N): _cd(s, N).loss(batch, default_rng(0)).item() for s in ("euler", "heun") for N in (36, 72)}
    assert 10 < loss["euler", 36] / loss["euler", 72] < 30, loss
    assert 40 < loss["heun", 36] / loss["heun", 72] < 100, loss
    assert loss["heun", 72] < 1e-8
    wrong = _cd("heun", 72)
    wrong.online, wrong.target = _Wrong(wrong.epsilon), _Wrong(wrong.epsilon)
    assert wrong.loss(batch, default_rng(0)).item() > 1e4 * loss["heun", 72]


def test_cd_step_sign_the_paper_and_not_the_derivation_display():
    """Eq. (31)'s solver step: x_hat = x_{t_{n+1}} + (t_n - t_{n+1}) Phi (the paper) makes the
    exact f's loss vanish;
    the display x_{t_{n+1}} - (t_n - t_{n+1}) Phi does not: it steps up in noise."""
    cd = _cd("euler")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4000, 2)) * S + M
    t = karras_times(18, cd.epsilon, cd.T)
    i = rng.integers(0, 17, size=4000)
    t_n, t_next = t[i], t[i + 1]
    x_next = x + t_next[:, None] * rng.standard_normal(x.shape)
    online = consistency_exact(x_next, t_next, cd.epsilon)
    paper = cd.x_hat(x, x_next, t_n, t_next, None)
    display = x_next - (t_n - t_next)[:, None] * eps_exact_sigma(x_next, t_next)
    d = lambda a: np.mean(np.sum((online - consistency_exact(a, t_n, cd.epsilon)) ** 2, 1))
    assert d(paper) < 0.01 * d(display), (d(paper), d(display))


def test_ct_target_is_the_cd_euler_target_in_expectation():
    """E[x + t_n z | x + t_{n+1} z = y] = y + (t_n - t_{n+1}) Phi_exact(y, t_{n+1}) (Tweedie),
    so for the exact (affine) f, CT's target equals CD's Euler target with the exact score in
    expectation: CT's loss (32) and gradient are CD's (31) with no teacher (Theorem 2, exact
    here)."""
    ct = ConsistencyTraining((2,), hidden=8, depth=1)
    rng = np.random.default_rng(2)
    n = 400_000
    t_n, t_next = 0.6, 0.9
    x = rng.standard_normal((n, 2)) * S + M
    z = rng.standard_normal((n, 2))
    y = x + t_next * z
    target = ct.x_hat(x, y, np.full(n, t_n), np.full(n, t_next), z)
    for d in range(2):  # the regression of the CT target on y is the Euler step's map
        slope, icpt = np.polyfit(y[:, d], target[:, d], 1)
        e_slope = 1 + (t_n - t_next) * t_next / (S[d] ** 2 + t_next ** 2)
        assert abs(slope - e_slope) < 0.005, (d, slope, e_slope)
        assert abs(icpt - (1 - e_slope) * M[d]) < 0.01


def test_ema_target_update_and_ct_schedule_in_training():
    ct = ConsistencyTraining((2,), K=100, hidden=16, depth=1)
    opts = {"model": optim.Adam([p for p in ct.parameters() if p.requires_grad], lr=1e-2)}
    x = Tensor(np.random.default_rng(0).standard_normal((64, 2)).astype(np.float32))
    for k in range(3):
        before = [np.array(p.data) for p in ct.target.parameters()]
        info = ct.train_step(Batch(x), opts, default_rng(0))
        mu = ct_mu(k, 100)
        assert info["mu"] == mu and info["N"] == ct_N(k, 100)
        for b, p_minus, p in zip(before, ct.target.parameters(), ct.online.parameters()):
            np.testing.assert_allclose(p_minus.data, mu * b + (1 - mu) * p.data, rtol=1e-6, atol=1e-7)
    assert int(ct.k) == 3
    assert not any(p.requires_grad for p in ct.target.parameters())


def test_sampling_is_algorithm_1():
    """One step: f(T z, T); two steps: then f(x + sqrt(tau^2 - eps^2) z', tau)."""
    cd = _cd("heun")
    x1 = cd.sample(500, rng=default_rng(3), steps=1)
    z = default_rng(3).standard_normal((500, 2), dtype=np.float32)
    np.testing.assert_allclose(x1, consistency_exact(cd.T * z, np.full(500, cd.T), cd.epsilon), rtol=1e-6)
    times = cd.sample_times(2)
    assert times[0] == cd.T and cd.epsilon < times[1] < cd.T
    x2 = cd.sample(500, rng=default_rng(4), steps=2)
    g = default_rng(4)
    z1, z2 = g.standard_normal((500, 2), dtype=np.float32), g.standard_normal((500, 2), dtype=np.float32)
    first = consistency_exact(cd.T * z1, np.full(500, cd.T), cd.epsilon)
    want = consistency_exact(first + math.sqrt(times[1] ** 2 - cd.epsilon ** 2) * z2,
                             np.full(500, times[1]), cd.epsilon)
    np.testing.assert_allclose(x2, want, rtol=1e-5, atol=1e-6)
    # the exact f samples the data: mean M, spread S (up to the epsilon and T ends)
    big = cd.sample(20000, rng=default_rng(5), steps=2)
    np.testing.assert_allclose(big.mean(0), M, atol=0.05)
    np.testing.assert_allclose(big.std(0), S, rtol=0.05)


def test_cd_keeps_the_teachers_noise_range_and_scale():
    t = DDPM((2,), T=1000, hidden=8, depth=1, data_scale=2.0)
    cd = ConsistencyDistillation((2,), teacher=t, hidden=8, depth=1)
    assert cd.data_scale == 2.0 and math.isclose(cd.epsilon, math.sqrt(1e-4 / (1 - 1e-4)))
    assert cd.T == 80.0
    with pytest.raises(ValueError, match="solver"):
        ConsistencyDistillation((2,), teacher=t, solver="rk4")
    with pytest.raises(ValueError, match="no option"):
        ConsistencyTraining((2,), widht=3)
    with pytest.raises(ValueError, match="LPIPS"):
        ConsistencyTraining((2,), distance="lpips")


def _v_teacher(seed=0):
    t = DDPM((1, 8, 8), num_classes=10, T=100, schedule="cosine", parameterization="v",
             channels=8, channel_mult=(1, 2), num_res_blocks=1, groups=4)
    _randomize(t, seed, 0.2)
    return t


def test_v_network_is_eq_30_with_sigma_data_1():
    """A v-teacher's x_0 at step t is (30) with epsilon = 0, sigma_data = 1, F = -v and the
    teacher's time: TeacherF in a ConsistencyFunction reproduces the teacher's x_0 prediction
    at every integer step, for generic weights."""
    from refgen.models.diffusion.consistency import ConsistencyFunction, TeacherF
    from refgen.models.diffusion.distill import _x0
    from refgen.models.diffusion.ode import schedule_sigmas
    teacher = _v_teacher(1)
    F_ = TeacherF(teacher)
    f = ConsistencyFunction(F_, 0.0, 1.0, F_.time)
    steps = np.array([1, 7, 30, 64, 100])
    sig = schedule_sigmas(teacher.schedule)[steps]
    z = np.random.default_rng(2).standard_normal((5, 1, 8, 8)).astype(np.float32)   # z = x_t
    want = _x0(teacher, Tensor(z), steps).data
    x = z * np.sqrt(1 + sig ** 2)[:, None, None, None].astype(np.float32)  # x = x_t / sqrt(alpha_bar)
    np.testing.assert_allclose(f(Tensor(x), sig).data, want, rtol=1e-4, atol=1e-5)
    assert np.abs(want).max() > 0.1                                       # not a trivial zero
    # sigma_data 0.5 (the random init's) is not the v-parameterisation
    g = ConsistencyFunction(F_, 0.0, 0.5, F_.time)
    assert np.abs(g(Tensor(x), sig).data - want).max() > 1e-2


def test_cd_init_teacher_starts_at_the_teacher_and_trains_a_copy():
    """init='teacher': online and target start as the teacher's network (f(x, epsilon) = x
    still holds), sigma_data = 1; a training step moves the online copy, never the teacher."""
    teacher = _v_teacher(3)
    cd = ConsistencyDistillation((1, 8, 8), teacher=teacher, init="teacher", N=6)
    assert cd.sigma_data == 1.0 and cd.init == "teacher"
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(cd.online(Tensor(x), np.full(4, cd.epsilon)).data, x)
    t = np.full(4, 3.0)
    np.testing.assert_array_equal(cd.online(Tensor(x), t).data, cd.target(Tensor(x), t).data)
    # f = c_skip x + c_out (-v) with v the teacher's network at its own step, for CD's epsilon
    from refgen.models.diffusion.ode import schedule_sigmas
    steps = np.array([5, 20, 60, 90])
    sig = schedule_sigmas(teacher.schedule)[steps]
    z = x / np.sqrt(1 + sig ** 2)[:, None, None, None].astype(np.float32)
    v = teacher._net(Tensor(z), steps.astype(np.float64), teacher._labels(None, 4)).data
    want = (c_skip(sig, cd.epsilon, 1.0)[:, None, None, None] * x
            - c_out(sig, cd.epsilon, 1.0)[:, None, None, None] * v)
    np.testing.assert_allclose(cd.online(Tensor(x), sig).data, want, rtol=1e-4, atol=1e-5)
    before = {k: np.array(v) for k, v in cd.teacher.state_dict().items()}
    online0 = [np.array(p.data) for p in cd.online.parameters()]
    assert len(online0) == len(list(teacher.parameters()))
    opts = {"model": optim.Adam([p for p in cd.parameters() if p.requires_grad], lr=1e-3)}
    cd.train_step(Batch(Tensor(x * 0.5)), opts, default_rng(0))
    assert max(np.abs(p.data - b).max() for p, b in zip(cd.online.parameters(), online0)) > 0
    for k, v in cd.teacher.state_dict().items():
        np.testing.assert_array_equal(np.asarray(v), before[k])


def test_cd_init_teacher_bad_input():
    with pytest.raises(ValueError, match="init must be"):
        ConsistencyDistillation((1, 8, 8), teacher=_v_teacher(), init="pretrained")
    with pytest.raises(ValueError, match="sigma_data"):
        ConsistencyDistillation((1, 8, 8), teacher=_v_teacher(), init="teacher", sigma_data=0.5)
    with pytest.raises(ValueError, match="network options"):
        ConsistencyDistillation((1, 8, 8), teacher=_v_teacher(), init="teacher", channels=4)
    eps_teacher = DDPM((2,), T=50, hidden=8, depth=1)
    with pytest.raises(ValueError, match="predicts v"):
        ConsistencyDistillation((2,), teacher=eps_teacher, init="teacher")
