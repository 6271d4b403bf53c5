"""Progressive distillation (refgen.models.diffusion.distill), with the exact x_0 of Gaussian
data as the teacher (tests/models/diffusion/fewsteps_oracle.py)."""
import math

import numpy as np
import pytest

from refgen import optim
from refgen.autograd import Tensor
from refgen.backend import default_rng
from refgen.models.base import Batch
from refgen.models.diffusion import DDPM
from refgen.models.diffusion.distill import (ProgressiveDistillation, ddim_move, ddim_sample,
                                             distillation_target, pd_grid, snr_weight)
from refgen.models.diffusion.schedule import make_schedule
from tests.models.diffusion.fewsteps_oracle import M, S, oracle, x0_exact

pytestmark = pytest.mark.usefixtures("numpy_backend")


def test_grids_are_nested():
    for T in (1000, 1024, 77):
        for N in (1, 2, 4, 8, 32):
            g = pd_grid(T, N)
            assert g[0] == 0 and g[-1] == T and np.all(np.diff(g) > 0)
            np.testing.assert_array_equal(g, pd_grid(T, 2 * N)[::2])
    np.testing.assert_array_equal(pd_grid(1000, 8), [0, 125, 250, 375, 500, 625, 750, 875, 1000])
    with pytest.raises(ValueError, match="steps"):
        pd_grid(10, 11)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_one_student_step_equals_two_teacher_steps(schedule):
    """x_tilde makes one student DDIM step t -> t'' land exactly where two teacher steps land."""
    sch = make_schedule(schedule, 1000)
    rng = np.random.default_rng(0)
    teacher = lambda z, t: x0_exact(sch, z, t)
    for N in (1, 4, 64):
        grid = pd_grid(sch.T, 2 * N)
        i = rng.integers(1, N + 1, size=256)
        t, t_mid, t_next = grid[2 * i], grid[2 * i - 1], grid[2 * i - 2]
        z = rng.standard_normal((256, 2)) * 1.5
        two = ddim_move(sch, ddim_move(sch, z, t, t_mid, teacher(z, t)), t_mid, t_next,
                        teacher(ddim_move(sch, z, t, t_mid, teacher(z, t)), t_mid))
        x_tilde = distillation_target(sch, teacher, z, t, t_mid, t_next)
        np.testing.assert_allclose(ddim_move(sch, z, t, t_next, x_tilde), two, rtol=1e-9, atol=1e-9)
        # and it is not the teacher's own one-step x_hat (the two steps differ from one)
        assert np.abs(x_tilde - teacher(z, t)).max() > 1e-3
    # at t'' = 0 the target is the two-step output itself
    t, t_mid, t_next = np.full(8, 250), np.full(8, 125), np.zeros(8, dtype=np.int64)
    z = rng.standard_normal((8, 2))
    z_mid = ddim_move(sch, z, t, t_mid, teacher(z, t))
    np.testing.assert_allclose(distillation_target(sch, teacher, z, t, t_mid, t_next),
                               teacher(z_mid, t_mid), rtol=1e-12)


def test_ddim_move_is_ddim_on_the_exact_x0():
    """ddim_move with x0 = the true x_0 keeps q(x_s | x_0) and the same eps (eq. (27), sigma = 0)."""
    sch = make_schedule("linear", 1000)
    rng = np.random.default_rng(1)
    x0, eps = rng.standard_normal((5, 2)), rng.standard_normal((5, 2))
    t, s = np.array([900, 700, 400, 10, 2]), np.array([300, 699, 0, 3, 1])
    a = lambda k: np.sqrt(sch.alpha_bar[k]).reshape(-1, 1)
    z_t = a(t) * x0 + np.sqrt(1 - a(t) ** 2) * eps
    np.testing.assert_allclose(ddim_move(sch, z_t, t, s, x0), a(s) * x0 + np.sqrt(1 - a(s) ** 2) * eps,
                               rtol=1e-10, atol=1e-12)


def test_truncated_snr_weight():
    sch = make_schedule("cosine", 1000)
    t = np.array([1, 300, 500, 900])
    ab = sch.alpha_bar[t]
    np.testing.assert_allclose(snr_weight(sch, t, np.zeros((4, 2))).ravel(),
                               np.maximum(ab / (1 - ab), 1.0))
    assert snr_weight(sch, np.array([900]), np.zeros((1, 2))).item() == 1.0   # truncated
    assert snr_weight(sch, np.array([1]), np.zeros((1, 2))).item() > 100


def test_student_starts_as_the_teacher_and_refuses_eps_teachers():
    t = DDPM((2,), T=100, parameterization="v", hidden=16, depth=1)
    rng = np.random.default_rng(0)
    for p in t.parameters():
        p.data = rng.standard_normal(p.data.shape).astype(np.float32) * 0.3
    pd = ProgressiveDistillation((2,), teacher=t, teacher_steps=8)
    z = rng.standard_normal((6, 2)).astype(np.float32)
    # before training, the student's 4 steps are the teacher's 4 steps (theta <- eta)
    x4 = pd.sample(6, steps=4, x_T=z, rng=default_rng(0))
    x_t4 = ddim_sample(lambda zz, tt: _x0(t, zz, tt), t.schedule, 4, z)
    np.testing.assert_allclose(x4, x_t4, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="v or x0"):
        ProgressiveDistillation((2,), teacher=DDPM((2,), T=100, hidden=8, depth=1))
    with pytest.raises(ValueError, match="teacher"):
        ProgressiveDistillation((2,))
    with pytest.raises(ValueError, match="shape"):
        ProgressiveDistillation((3,), teacher=t)


def _x0(model, z, t):
    from refgen.models.diffusion.distill import _x0 as x0
    return x0(model, Tensor(z), t).data


def test_halving_loop_swaps_teacher_and_halves_N():
    t = DDPM((2,), T=100, parameterization="v", hidden=16, depth=1)
    given = {k: np.array(v) for k, v in t.state_dict().items()}
    pd = ProgressiveDistillation((2,), teacher=t, teacher_steps=16, round_steps=2, min_steps=2)
    opts = {"model": optim.Adam([p for p in pd.parameters() if p.requires_grad], lr=1e-2)}
    x = Tensor(np.random.default_rng(0).standard_normal((32, 2)).astype(np.float32))
    seen = []
    for _ in range(7):
        seen.append(pd.train_step(Batch(x), opts, default_rng(0))["N"])
        if len(seen) == 4:  # this step ended a round: the teacher is now the student
            for k, v in pd.student.state_dict().items():
                np.testing.assert_array_equal(pd.teacher.state_dict()[k], v)
    assert seen == [8, 4, 4, 2, 2, 2, 2]
    assert int(pd.N) == 2
    # the rounds replaced the student's copy of the teacher, never the model passed in
    assert all(np.array_equal(given[k], v) for k, v in t.state_dict().items())
    # the teacher is frozen: its weights are the student's at the last swap, not later ones
    before = {k: np.array(v) for k, v in pd.teacher.state_dict().items()}
    pd.train_step(Batch(x), opts, default_rng(0))
    assert all(np.array_equal(before[k], v) for k, v in pd.teacher.state_dict().items())


def test_loss_is_algorithm_2():
    """The loss of the registered model equals Algorithm 2 written out with the same draws:
    the teacher's grid for 2N steps, i ~ U{1..N}, x_tilde, the truncated-SNR weight."""
    teacher = oracle("v", T=1000)
    pd = ProgressiveDistillation((2,), teacher=teacher, teacher_steps=16)
    pd.student = oracle("x0", T=1000)          # a student whose x_hat differs from x_tilde
    data = np.random.default_rng(0).standard_normal((512, 2)) * S + M
    noise = default_rng(11)
    got = pd.loss(Batch(Tensor(data)), noise).item()
    g, sch = default_rng(11), teacher.schedule
    i = g.integers(1, 9, size=512)
    eps = g.standard_normal((512, 2), dtype=np.float64)
    grid = pd_grid(1000, 16)
    t, t_mid, t_next = grid[2 * i], grid[2 * i - 1], grid[2 * i - 2]
    a = np.sqrt(sch.alpha_bar[t])[:, None]
    z = a * data + np.sqrt(1 - a ** 2) * eps
    x_tilde = distillation_target(sch, lambda zz, tt: x0_exact(sch, zz, tt), z, t, t_mid, t_next)
    w = np.maximum(a[:, 0] ** 2 / (1 - a[:, 0] ** 2), 1.0)[:, None]
    want = np.mean(w * (x_tilde - x0_exact(sch, z, t)) ** 2)
    assert want > 1e-4 and math.isclose(got, want, rel_tol=1e-9)


@pytest.mark.slow
def test_one_round_on_the_2d_oracle_matches_the_teachers_two_steps():
    """A student trained for one round against the exact Gaussian teacher (8 -> 4 steps) samples
    in 4 DDIM steps what the teacher samples in 8, from the same noise."""
    teacher = oracle("v", T=1000)
    pd = ProgressiveDistillation((2,), teacher=teacher, teacher_steps=8, round_steps=10 ** 6)
    # an oracle has no weights to copy: this student starts from a fresh network
    pd.student = DDPM((2,), T=1000, parameterization="v", hidden=64, depth=2, seed=1)
    noise = default_rng(0)
    opts = {"model": optim.Adam(list(pd.student.parameters()), lr=3e-3)}
    data = np.random.default_rng(0).standard_normal((20000, 2)) * S + M
    pick = np.random.default_rng(1)
    for step in range(1500):
        xb = data[pick.integers(0, len(data), 256)].astype(np.float32)
        pd.train_step(Batch(Tensor(xb)), opts, noise)
    z = np.random.default_rng(7).standard_normal((2000, 2)).astype(np.float32)
    student = pd.sample(2000, x_T=z, rng=noise)
    teacher8 = ddim_sample(lambda zz, tt: x0_exact(teacher.schedule, zz, tt), teacher.schedule, 8,
                           z.astype(np.float64))
    err = np.abs(student - teacher8).mean(0) / S
    assert np.all(err < 0.05), err
    np.testing.assert_allclose(student.mean(0), M, atol=0.1)
    np.testing.assert_allclose(student.std(0), teacher8.std(0), rtol=0.08)
