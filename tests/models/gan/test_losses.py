"""The adversarial objectives as the papers state them: values on logits, the optimal
discriminator and its Jensen-Shannon reading, saturation, the Wasserstein critic, and the
penalties' gradients (double backward) against finite differences."""
import math

import numpy as np
import pytest

import refgen
import refgen.functional as F
from refgen import backend, nn, optim
from refgen.autograd import Tensor
from refgen.models import create
from refgen.models.gan import losses as L
from refgen.testing import check_grads, check_vjp

pytestmark = pytest.mark.usefixtures("numpy_backend")  # closed-form oracles: float64 NumPy


def _normal_pdf(x, mu, s):
    return np.exp(-0.5 * ((x - mu) / s) ** 2) / (s * math.sqrt(2 * math.pi))


def _log_sigmoid(a):
    return -np.logaddexp(0.0, -a)


def test_minimax_losses_on_logits():
    rng = np.random.default_rng(0)
    r, f = rng.normal(0.7, 2.0, 50), rng.normal(-0.4, 1.5, 40)
    v = _log_sigmoid(r).mean() + _log_sigmoid(-f).mean()       # E log D + E log(1 - D)
    assert L.minimax_value(Tensor(r), Tensor(f)).item() == pytest.approx(v, rel=1e-12)
    assert L.d_loss_minimax(Tensor(r), Tensor(f)).item() == pytest.approx(-v, rel=1e-12)
    assert L.g_loss_saturating(Tensor(f)).item() == pytest.approx(_log_sigmoid(-f).mean(), rel=1e-12)
    assert L.g_loss_nonsaturating(Tensor(f)).item() == pytest.approx(-_log_sigmoid(f).mean(), rel=1e-12)
    # finite at any logit: a confident wrong discriminator costs |logit|, not inf
    big = Tensor(np.array([-1e4, 1e4]))
    assert L.d_loss_minimax(Tensor(np.array([-1e4])), Tensor(np.array([1e4]))).item() == pytest.approx(2e4)
    for loss in (L.g_loss_saturating(big), L.g_loss_nonsaturating(big)):
        assert math.isfinite(loss.item())


def test_optimal_discriminator_and_jensen_shannon():
    """D trained alone between p = N(0, 1) and q = N(1, 0.7^2) reaches D* = p / (p + q), and
    V(D*, G) = -log 4 + 2 JSD(p || q) (Goodfellow et al., 2014, Prop. 1 and Thm. 1)."""
    rng = np.random.default_rng(1)
    n = 100_000
    xp_, xq = rng.normal(0.0, 1.0, n), rng.normal(1.0, 0.7, n)

    def feats(x):  # log p - log q is quadratic in x, so a(x) = w . (x, x^2) + b can reach it
        return Tensor(np.stack([x, x * x], 1))

    d = nn.Linear(2, 1, rng=0, dtype=np.float64)
    opt = optim.Adam(d.parameters(), lr=0.05)
    for _ in range(400):
        loss = L.d_loss_minimax(d(feats(xp_)), d(feats(xq)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    grid = np.linspace(-2.0, 3.0, 101)
    p, q = _normal_pdf(grid, 0.0, 1.0), _normal_pdf(grid, 1.0, 0.7)
    d_trained = 1.0 / (1.0 + np.exp(-d(feats(grid)).data[:, 0]))
    assert np.max(np.abs(d_trained - p / (p + q))) < 0.02
    # the value at the optimum against the JSD by quadrature
    x = np.linspace(-10.0, 10.0, 200_001)
    dx = x[1] - x[0]
    p, q = _normal_pdf(x, 0.0, 1.0), _normal_pdf(x, 1.0, 0.7)
    m = 0.5 * (p + q)
    jsd = 0.5 * np.sum(p * np.log(p / m)) * dx + 0.5 * np.sum(q * np.log(q / m)) * dx
    fresh_p, fresh_q = rng.normal(0.0, 1.0, 200_000), rng.normal(1.0, 0.7, 200_000)
    value = L.minimax_value(d(feats(fresh_p)), d(feats(fresh_q))).item()
    assert value == pytest.approx(-math.log(4.0) + 2.0 * jsd, abs=0.005)
    assert jsd > 0.05  # the two densities differ: the identity is not 0 = 0


def _g_grad_norm(model, n=64):
    model.zero_grad()
    model.g_loss(n, None, backend.default_rng(3)).backward()
    return math.sqrt(sum(float((p.grad.data ** 2).sum()) for p in model.G.parameters()))


def test_saturating_generator_gradient_vanishes_when_d_is_confident():
    sat, ns = create("gan", data_shape=(2,), seed=0), create("nsgan", data_shape=(2,), seed=0)
    for m in (sat, ns):
        m.D.head.bias.data = m.D.head.bias.data - 12.0     # D(G(z)) = sigmoid(~-12): confident
        with refgen.no_grad():
            assert m.D(m.generate(64, None, backend.default_rng(3))).data.max() < -9.0
    ratio = _g_grad_norm(sat) / _g_grad_norm(ns)
    assert 0 < ratio < 1e-3                      # sigmoid(a) / (1 - sigmoid(a)) ~ e^-12
    # without the confident D the two gradients are of one size
    plain_sat, plain_ns = create("gan", data_shape=(2,), seed=0), create("nsgan", data_shape=(2,), seed=0)
    assert 0.2 < _g_grad_norm(plain_sat) / _g_grad_norm(plain_ns) < 5.0


# ----------------------------------------------------------------------------- penalties
def _critic(w1, b1, w2, b2):
    return lambda x: F.reshape(F.linear(F.tanh(F.linear(x, w1, b1)), w2, b2), (x.shape[0],))


def _params(seed=0, d=2, h=5):
    r = np.random.default_rng(seed)
    return [r.normal(0, 0.8, (h, d)), r.normal(0, 0.3, h), r.normal(0, 0.8, (1, h)), r.normal(0, 0.3, 1)]


def test_gradient_penalty_gradient_matches_finite_differences():
    r = np.random.default_rng(4)
    real, fake = Tensor(r.normal(0, 1, (6, 2))), Tensor(r.normal(1, 1, (6, 2)))

    def penalty(*params):  # the same interpolates at every call: a fixed generator seed
        return L.gradient_penalty(_critic(*params), real, fake, np.random.default_rng(5), lam=10.0)

    value = penalty(*[Tensor(p) for p in _params()]).item()
    assert value > 0.1                                      # the norms are not all 1 here
    check_vjp(penalty, _params())                           # d penalty / d theta: a double backward
    check_grads(penalty, _params(1), order=2)               # and one order more


def test_gradient_penalty_value_on_a_linear_critic():
    """f(x) = w . x has grad norm |w| everywhere: the penalty is lambda (|w| - 1)^2."""
    w = np.array([[1.5, -2.0]])
    real, fake = Tensor(np.zeros((4, 2))), Tensor(np.ones((4, 2)))
    crit = lambda x: F.reshape(F.linear(x, Tensor(w)), (x.shape[0],))  # noqa: E731
    gp = L.gradient_penalty(crit, real, fake, np.random.default_rng(0), lam=10.0).item()
    assert gp == pytest.approx(10.0 * (2.5 - 1.0) ** 2, rel=1e-9)
    r1 = L.r1_penalty(crit, real, gamma=3.0).item()
    assert r1 == pytest.approx(0.5 * 3.0 * 2.5 ** 2, rel=1e-9)


def test_interpolates_lie_on_the_segments_with_uniform_weights():
    r = np.random.default_rng(8)
    real, fake = r.normal(0, 1, (4000, 3)), r.normal(2, 1, (4000, 3))
    x_hat = L.interpolate(Tensor(real), Tensor(fake), np.random.default_rng(9))
    assert x_hat.requires_grad
    d = real - fake
    e = ((x_hat.data - fake) * d).sum(1) / (d * d).sum(1)     # x_hat = e real + (1 - e) fake
    np.testing.assert_allclose(x_hat.data, e[:, None] * real + (1 - e[:, None]) * fake, atol=1e-12)
    assert e.min() >= 0.0 and e.max() <= 1.0
    assert abs(e.mean() - 0.5) < 0.02 and abs(e.var() - 1 / 12) < 0.005     # U[0, 1]


def test_r1_penalty_gradient_matches_finite_differences():
    real = Tensor(np.random.default_rng(6).normal(0, 1, (5, 2)))
    check_grads(lambda *p: L.r1_penalty(_critic(*p), real, gamma=2.0), _params(2), order=2)


def test_wgan_gp_critic_estimates_w1():
    """A critic trained with the gradient penalty between N(0, I) and N(mu, I) estimates
    W1 = |mu| (the penalty lets the slope exceed 1 by |mu| / (2 lambda): 2.5% here). In 2D
    the critic's gradient can turn towards mu; on a line a critic whose initial slope has
    the wrong sign would have to cross slope 0, where the penalty is largest."""
    mu = np.array([0.3, -0.4])                              # |mu| = 0.5
    model = create("wgan-gp", data_shape=(2,), seed=0, hidden=[32, 32]).double()
    noise = backend.default_rng(0)
    opt = optim.Adam(model.D.parameters(), lr=3e-3, betas=(0.0, 0.9))
    r = np.random.default_rng(7)
    for i in range(700):
        opt.lr = 3e-3 if i < 500 else 3e-4                  # a smaller step to settle
        x, y = Tensor(r.normal(0, 1, (256, 2))), Tensor(r.normal(mu, 1, (256, 2)))
        loss = model.d_loss(x, y, None, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with refgen.no_grad():
        xs, ys = Tensor(r.normal(0, 1, (100_000, 2))), Tensor(r.normal(mu, 1, (100_000, 2)))
        w1 = model.D(xs).data.mean() - model.D(ys).data.mean()
    assert w1 == pytest.approx(np.linalg.norm(mu), rel=0.05)
