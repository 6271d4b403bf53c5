"""Optimizers against their published update rules, clipping, EMA and schedules."""
import math

import numpy as np
import pytest

from refgen import nn, optim
from refgen.autograd import Tensor
from refgen.backend import to_numpy

RNG = np.random.default_rng(0)
A = RNG.standard_normal((4, 4))
A = A @ A.T + np.eye(4)  # a positive-definite quadratic 1/2 x^T A x - b^T x
B = RNG.standard_normal(4)
X0 = RNG.standard_normal(4)
STEPS = 6


def quad_grad(x):
    return A @ x - B


def run_refgen(make_opt, steps=STEPS, x0=X0):
    """Minimise the quadratic with refgen: autograd for the gradient, the optimizer to step."""
    p = nn.Parameter(x0.copy())
    opt = make_opt([p])
    path = []
    for _ in range(steps):
        opt.zero_grad()
        # autograd's gradient of 1/2 x^T A x - b^T x is A x - b (A symmetric)
        loss = 0.5 * (p * (Tensor(A) @ p)).sum() - (p * Tensor(B)).sum()
        loss.backward()
        opt.step()
        path.append(p.numpy().copy())
    return np.array(path), opt, p


def adam_ref(lr, b1, b2, eps, wd=0.0, decoupled=False, steps=STEPS):
    """Adam (Kingma & Ba, Algorithm 1), with L2 decay or AdamW's decoupled decay."""
    x, m, v, path = X0.copy(), np.zeros(4), np.zeros(4), []
    for t in range(1, steps + 1):
        g = quad_grad(x)
        if decoupled:
            x = x - lr * wd * x
        else:
            g = g + wd * x
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        x = x - lr * m_hat / (np.sqrt(v_hat) + eps)
        path.append(x)
    return np.array(path)


def sgd_ref(lr, momentum=0.0, dampening=0.0, wd=0.0, nesterov=False, steps=STEPS):
    """torch.optim.SGD's documented algorithm."""
    x, b, path = X0.copy(), None, []
    for t in range(1, steps + 1):
        g = quad_grad(x) + wd * x
        if momentum:
            b = g if t == 1 else momentum * b + (1 - dampening) * g
            g = g + momentum * b if nesterov else b
        x = x - lr * g
        path.append(x)
    return np.array(path)


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adam_matches_the_published_rule(wd):
    path, _, _ = run_refgen(lambda ps: optim.Adam(ps, lr=0.05, betas=(0.8, 0.95), eps=1e-3,
                                                  weight_decay=wd))
    np.testing.assert_allclose(path, adam_ref(0.05, 0.8, 0.95, 1e-3, wd), rtol=0, atol=1e-12)


def test_defaults_are_the_published_ones():
    """Run with the defaults: Adam's betas (0.9, 0.999) and eps 1e-8 (Kingma & Ba), AdamW's
    weight decay 1e-2 (torch's), RMSprop's lr 1e-2, alpha 0.99, eps 1e-8, EMA's decay 0.999."""
    path, _, _ = run_refgen(lambda ps: optim.Adam(ps, lr=0.05))
    np.testing.assert_allclose(path, adam_ref(0.05, 0.9, 0.999, 1e-8), rtol=0, atol=1e-12)
    path, _, _ = run_refgen(lambda ps: optim.AdamW(ps, lr=0.05))
    np.testing.assert_allclose(path, adam_ref(0.05, 0.9, 0.999, 1e-8, 1e-2, decoupled=True),
                               rtol=0, atol=1e-12)
    path, _, _ = run_refgen(lambda ps: optim.RMSprop(ps))
    np.testing.assert_allclose(path, rmsprop_ref(1e-2, 0.99, 1e-8), rtol=0, atol=1e-12)
    lin = nn.Linear(2, 2, rng=1, dtype=np.float64)
    ema = optim.EMA(lin)
    w0 = lin.weight.numpy().copy()
    lin.weight.data = lin.weight.data + 1.0
    ema.update()
    np.testing.assert_allclose(to_numpy(ema.shadow["weight"]), w0 + 0.001, rtol=0, atol=1e-12)


def test_adamw_decays_before_the_adam_step():
    path, _, _ = run_refgen(lambda ps: optim.AdamW(ps, lr=0.05, betas=(0.8, 0.95), eps=1e-3,
                                                   weight_decay=0.3))
    np.testing.assert_allclose(path, adam_ref(0.05, 0.8, 0.95, 1e-3, 0.3, decoupled=True),
                               rtol=0, atol=1e-12)
    # decoupled decay differs from L2 decay
    assert not np.allclose(path, adam_ref(0.05, 0.8, 0.95, 1e-3, 0.3))


@pytest.mark.parametrize("kw", [
    dict(), dict(momentum=0.9), dict(momentum=0.9, dampening=0.3),
    dict(momentum=0.8, nesterov=True), dict(momentum=0.5, weight_decay=0.2), dict(weight_decay=0.2),
])
def test_sgd_matches_torch_formulas(kw):
    path, _, _ = run_refgen(lambda ps: optim.SGD(ps, lr=0.03, **kw))
    ref = sgd_ref(0.03, kw.get("momentum", 0.0), kw.get("dampening", 0.0),
                  kw.get("weight_decay", 0.0), kw.get("nesterov", False))
    np.testing.assert_allclose(path, ref, rtol=0, atol=1e-12)


def rmsprop_ref(lr, alpha, eps, wd=0.0, steps=STEPS):
    """torch.optim.RMSprop's documented algorithm (no momentum, not centred)."""
    x, v, path = X0.copy(), np.zeros(4), []
    for _ in range(steps):
        g = quad_grad(x) + wd * x
        v = alpha * v + (1 - alpha) * g ** 2
        x = x - lr * g / (np.sqrt(v) + eps)
        path.append(x)
    return np.array(path)


@pytest.mark.parametrize("wd", [0.0, 0.15])
def test_rmsprop_matches_torch_formulas(wd):
    path, opt, _ = run_refgen(lambda ps: optim.RMSprop(ps, lr=0.02, alpha=0.9, eps=1e-3,
                                                       weight_decay=wd))
    np.testing.assert_allclose(path, rmsprop_ref(0.02, 0.9, 1e-3, wd), rtol=0, atol=1e-12)
    # the defaults are torch's: alpha 0.99, eps 1e-8
    d = optim.RMSprop([nn.Parameter(np.zeros(2))])
    assert (d.lr, d.alpha, d.eps, d.weight_decay) == (1e-2, 0.99, 1e-8, 0.0)
    # the state round-trips through state_dict
    fresh = optim.RMSprop([nn.Parameter(np.zeros(4))], lr=0.02, alpha=0.9, eps=1e-3)
    fresh.load_state_dict(opt.state_dict())
    np.testing.assert_array_equal(to_numpy(fresh.state[0]["square_avg"]),
                                  to_numpy(opt.state[0]["square_avg"]))


def test_sgd_rejects_bad_nesterov_and_empty_params():
    p = nn.Parameter(np.zeros(2))
    with pytest.raises(ValueError):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError):
        optim.Adam([], lr=0.1)


@pytest.mark.parametrize("make", [
    lambda ps: optim.Adam(ps, lr=0.05, weight_decay=0.01),
    lambda ps: optim.AdamW(ps, lr=0.05),
    lambda ps: optim.SGD(ps, lr=0.02, momentum=0.9, nesterov=True),
])
def test_state_dict_round_trip_continues_identically(make, tmp_path):
    _, opt, p = run_refgen(make, steps=3)
    np.savez(tmp_path / "opt.npz", **{k: to_numpy(v) for k, v in opt.state_dict().items()})
    # a fresh optimizer on a copy of the parameters, restored from the file
    q = nn.Parameter(p.numpy().copy())
    opt2 = make([q])
    with np.load(tmp_path / "opt.npz") as z:
        opt2.load_state_dict(dict(z))
    assert opt2.step_count == 3
    for params, o in (([p], opt), ([q], opt2)):
        for _ in range(3):
            o.zero_grad()
            x = params[0]
            (0.5 * (x * (Tensor(A) @ x)).sum() - (x * Tensor(B)).sum()).backward()
            o.step()
    np.testing.assert_array_equal(p.numpy(), q.numpy())


def test_load_state_dict_checks_shapes_and_keys():
    _, opt, _ = run_refgen(lambda ps: optim.Adam(ps, lr=0.1), steps=1)
    state = dict(opt.state_dict())
    other = optim.Adam([nn.Parameter(np.zeros(3))], lr=0.1)
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict(state)
    with pytest.raises(KeyError):
        other.load_state_dict({"p5.exp_avg": np.zeros(3)})
    with pytest.raises(KeyError):
        other.load_state_dict({"junk": np.zeros(3)})


def test_lr_is_settable_and_params_without_grad_wait():
    p, frozen = nn.Parameter(np.ones(2)), nn.Parameter(np.ones(2))
    opt = optim.SGD([p, frozen], lr=1.0)
    p.grad = Tensor(np.ones(2))
    opt.lr = 0.25
    opt.step()
    np.testing.assert_array_equal(p.numpy(), [0.75, 0.75])
    np.testing.assert_array_equal(frozen.numpy(), [1.0, 1.0])
    adam = optim.Adam([p, frozen], lr=0.1)
    adam.step()
    assert "step" not in adam.state[1] and adam.state[0]["step"] == 1


def test_float32_stays_float32_and_grad_arrays_are_not_touched():
    p = nn.Parameter(np.ones(3, dtype=np.float32))
    g = np.full(3, 0.5, dtype=np.float32)
    p.grad = Tensor(g)
    optim.AdamW([p], lr=0.1).step()
    assert p.dtype == np.float32
    np.testing.assert_array_equal(g, 0.5)


def test_clip_grad_norm():
    a, b = nn.Parameter(np.zeros(3)), nn.Parameter(np.zeros(2))
    shared = np.array([3.0, 0.0, 4.0])
    a.grad = Tensor(shared)
    b.grad = Tensor(np.array([0.0, 12.0]))
    total = optim.clip_grad_norm_([a, b], max_norm=6.5)
    assert total == pytest.approx(13.0)
    np.testing.assert_allclose(a.grad.numpy(), shared * 0.5, rtol=1e-6)
    np.testing.assert_allclose(b.grad.numpy(), [0.0, 6.0], rtol=1e-6)
    np.testing.assert_array_equal(shared, [3.0, 0.0, 4.0])  # replaced, not scaled in place
    # below the threshold nothing changes, and the norm is still reported
    before = a.grad
    assert optim.clip_grad_norm_([a, b], max_norm=100.0) == pytest.approx(6.5, rel=1e-6)
    assert a.grad is before
    # the infinity norm, and a module as the argument
    lin = nn.Linear(2, 1, rng=0, dtype=np.float64)
    lin.weight.grad, lin.bias.grad = Tensor(np.array([[-5.0, 1.0]])), Tensor(np.array([2.0]))
    assert optim.clip_grad_norm_(lin, 1.0, norm_type=math.inf) == pytest.approx(5.0)
    assert np.abs(lin.weight.grad.numpy()).max() == pytest.approx(1.0, rel=1e-5)
    assert optim.clip_grad_norm_([nn.Parameter(np.zeros(1))], 1.0) == 0.0
    # a p-norm other than 2: (sum |g|^3)^(1/3) over all gradients together
    g1, g2 = np.array([1.5, -2.0]), np.array([0.5])
    c, d = nn.Parameter(np.zeros(2)), nn.Parameter(np.zeros(1))
    c.grad, d.grad = Tensor(g1.copy()), Tensor(g2.copy())
    norm3 = (np.abs(g1) ** 3).sum() + 0.5 ** 3
    assert optim.clip_grad_norm_([c, d], 1.0, norm_type=3.0) == pytest.approx(norm3 ** (1 / 3))
    np.testing.assert_allclose(c.grad.numpy(), g1 / (norm3 ** (1 / 3) + 1e-6), rtol=1e-12)


def test_ema_math_swap_copy_and_state(tmp_path):
    lin = nn.Linear(2, 2, rng=0, dtype=np.float64)
    w0 = lin.weight.numpy().copy()
    ema = optim.EMA(lin, decay=0.9)
    values = [w0]
    for k in range(1, 4):
        lin.weight.data = lin.weight.data + 1.0
        ema.update()
        values.append(values[-1] + 1.0)
    # shadow_n = 0.9^n w0 + sum_k 0.1 * 0.9^(n-k) w_k
    expected = 0.9 ** 3 * w0 + sum(0.1 * 0.9 ** (3 - k) * values[k] for k in range(1, 4))
    np.testing.assert_allclose(to_numpy(ema.shadow["weight"]), to_numpy(expected), rtol=1e-12)
    assert ema.num_updates == 3
    current = lin.weight.numpy().copy()
    with ema.swapped() as m:
        assert m is lin
        np.testing.assert_allclose(lin.weight.numpy(), expected, rtol=1e-12)
    np.testing.assert_array_equal(lin.weight.numpy(), current)
    with pytest.raises(RuntimeError):
        with ema.swapped():
            raise RuntimeError("restores even on error")
    np.testing.assert_array_equal(lin.weight.numpy(), current)
    np.savez(tmp_path / "ema.npz", **{k: to_numpy(v) for k, v in ema.state_dict().items()})
    other = optim.EMA(nn.Linear(2, 2, rng=1, dtype=np.float64), decay=0.5)
    with np.load(tmp_path / "ema.npz") as z:
        other.load_state_dict(z)
    assert other.decay == 0.5 and other.num_updates == 3  # the decay stays its own setting
    other.copy_to(lin)
    np.testing.assert_allclose(lin.weight.numpy(), expected, rtol=1e-12)
    lin.weight.data[...] = 0.0  # copy_to gave the model its own arrays
    assert np.all(other.shadow["weight"] != 0.0)
    with pytest.raises(KeyError):
        other.load_state_dict({"num_updates": np.array(1)})


def test_ema_tracks_frozen_parameters_exactly():
    """A parameter without a gradient (a frozen teacher) is not averaged: its shadow is its
    current value bit for bit, also after it is replaced, so copy_to never moves it; the
    trainable one next to it is averaged as before (float32, where averaging a constant
    would drift it)."""
    lin = nn.Linear(3, 4, rng=0, dtype=np.float32)
    lin.bias.requires_grad = False
    frozen0 = lin.bias.numpy().copy()
    ema = optim.EMA(lin, decay=0.999)
    for k in range(300):
        lin.weight.data = lin.weight.data + np.float32(0.01)
        if k == 200:  # replaced wholesale, as a distillation round replaces its teacher
            lin.bias.data = lin.bias.data * np.float32(1.7)
        ema.update()
    np.testing.assert_array_equal(to_numpy(ema.shadow["bias"]), frozen0 * np.float32(1.7))
    assert np.all(to_numpy(ema.shadow["weight"]) < lin.weight.numpy() - 0.5)  # averaged: lags
    current = lin.bias.numpy().copy()
    ema.copy_to()
    np.testing.assert_array_equal(lin.bias.numpy(), current)


def test_schedules():
    assert optim.linear_warmup(0, 10) == pytest.approx(0.1)
    assert optim.linear_warmup(9, 10) == 1.0 and optim.linear_warmup(50, 10) == 1.0
    assert optim.linear_warmup(0, 0) == 1.0
    c = lambda s: optim.cosine_schedule(s, total=110, warmup=10, min_factor=0.1)  # noqa: E731
    assert c(0) == pytest.approx(0.1) and c(4) == pytest.approx(0.5)
    assert c(10) == pytest.approx(1.0)
    assert c(60) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine
    assert c(110) == pytest.approx(0.1) and c(500) == pytest.approx(0.1)
    assert optim.cosine_schedule(25, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_lr_scheduler_drives_the_optimizer():
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=0.2)
    sched = optim.LRScheduler(opt, lambda s: optim.linear_warmup(s, 4))
    assert opt.lr == pytest.approx(0.05)
    lrs = [sched.step() for _ in range(4)]
    assert lrs == pytest.approx([0.1, 0.15, 0.2, 0.2])
    state = sched.state_dict()
    opt2 = optim.SGD([nn.Parameter(np.zeros(1))], lr=0.2)
    sched2 = optim.LRScheduler(opt2, lambda s: optim.linear_warmup(s, 4))
    sched2.load_state_dict(state)
    assert sched2.last_step == 4 and opt2.lr == pytest.approx(0.2)


def test_descend_steps_every_optimizer_once_on_fresh_gradients():
    """descend(loss, {name: opt}): stale gradients are cleared, then one step each."""
    a, b = nn.Parameter(np.array([1.0, -2.0])), nn.Parameter(np.array([0.5]))
    opts = {"a": optim.SGD([a], lr=0.1), "b": optim.SGD([b], lr=0.2)}
    a.grad = Tensor(np.array([100.0, 100.0]))                  # stale: must not be used
    optim.descend((a * a).sum() + 3.0 * b.sum(), opts)
    np.testing.assert_allclose(a.numpy(), [1.0 - 0.1 * 2.0, -2.0 + 0.1 * 4.0])
    np.testing.assert_allclose(b.numpy(), [0.5 - 0.2 * 3.0])
    assert opts["a"].step_count == opts["b"].step_count == 1
