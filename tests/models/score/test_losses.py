"""Score matching objectives against closed forms: the DSM minimiser for Gaussian data, DSM
and the Fisher divergence differ by a constant (exact quadrature), explicit SM's trace
against the Fisher divergence, sliced SM's expectation against explicit SM."""
import numpy as np
import pytest

import refgen
import refgen.functional as F
from refgen.autograd import Tensor
from refgen.backend import use_backend
from refgen.models.score.losses import annealed_dsm, dsm, sde_dsm
from refgen.models.score.mixture import GaussianMixture
from refgen.models.score.sde import VPSDE
from refgen.score_matching import exact_score_matching, sliced_score_matching

pytestmark = pytest.mark.usefixtures("numpy_backend")


def on_numpy(*args):
    """A mixture made at import, on NumPy as the module's tests run (the suite may import
    it under the stand-in device backend, REFGEN_STRICT_DEVICE=1)."""
    with use_backend("numpy"):
        return GaussianMixture(*args)


def linear_score(theta):
    a, b = theta
    return lambda x: x * a + b


def test_dsm_minimiser_is_the_noised_gaussian_score():
    """Data N(mu, tau^2), noise sigma: argmin over s(x) = a x + b of l(theta; sigma) is the
    score of N(mu, tau^2 + sigma^2): a = -1/(tau^2 + sigma^2), b = mu/(tau^2 + sigma^2). The
    loss is quadratic in (a, b), so one Newton step from gradients found the minimiser."""
    rng = np.random.default_rng(0)
    mu, tau, sigma, n = 1.5, 0.7, 0.4, 400_000
    x = mu + tau * rng.standard_normal((n, 1))
    z = rng.standard_normal((n, 1))

    def grad_at(th):
        a, b = Tensor(np.array(th[0]), requires_grad=True), Tensor(np.array(th[1]), requires_grad=True)
        loss = dsm(lambda xt: xt * a + b, x, sigma, z).mean()
        return np.array([g.item() for g in refgen.grad(loss, [a, b])])

    g0 = grad_at((0.0, 0.0))
    H = np.stack([grad_at((1.0, 0.0)) - g0, grad_at((0.0, 1.0)) - g0], axis=1)
    a, b = -np.linalg.solve(H, g0)
    v = tau ** 2 + sigma ** 2
    assert np.isclose(a, -1 / v, rtol=0.01) and np.isclose(b, mu / v, rtol=0.01)


# a 1D two-component mixture and nonlinear score models s_theta(x) = a x + b + c tanh(d x)
MIX = on_numpy([0.3, 0.7], [[-1.0], [1.5]], [0.5, 0.8])
SIGMA = 0.6


def model(theta):
    a, b, c, d = theta
    return lambda x: x * a + b + F.tanh(x * d) * c


def gauss_mixture_nodes(mix, extra_var=0.0, n=1601):
    """Nodes and weights of E_{x ~ mix (+ N(0, extra_var))}[h(x)]: the trapezoid rule on a
    fine grid, spectrally accurate for smooth h times a Gaussian tail."""
    x = np.linspace(-10.0, 11.0, n)
    w = np.exp(mix.log_prob(x[:, None], 1.0, np.sqrt(extra_var))) * (x[1] - x[0])
    return x[:, None], w


def dsm_by_quadrature(theta, n=701):
    """E_x E_{x~|x}: a trapezoid grid over (x, x~), z = (x~ - x) / sigma."""
    g = np.linspace(-8.0, 9.0, n)
    h = g[1] - g[0]
    X, Xt = np.meshgrid(g, g, indexing="ij")
    wx = np.exp(MIX.log_prob(g[:, None]))
    w = wx[:, None] * np.exp(-0.5 * ((Xt - X) / SIGMA) ** 2) / np.sqrt(2 * np.pi * SIGMA ** 2) * h * h
    vals = dsm(model(theta), X.reshape(-1, 1), SIGMA, ((Xt - X) / SIGMA).reshape(-1, 1)).data
    return float((vals * w.reshape(-1)).sum())


def fisher_by_quadrature(theta):
    """E_{q_sigma} || s_theta - grad log q_sigma ||^2, with q_sigma the noised mixture."""
    x, w = gauss_mixture_nodes(MIX, SIGMA ** 2)
    diff = model(theta)(Tensor(x)).data - MIX.score(x, 1.0, SIGMA).data
    return float(((diff ** 2).sum(1) * w).sum())


def test_dsm_and_explicit_score_matching_differ_by_a_constant():
    th1, th2 = (-0.4, 0.2, 1.1, 0.7), (0.3, -0.5, -2.0, 1.6)
    c1 = dsm_by_quadrature(th1) - fisher_by_quadrature(th1)
    c2 = dsm_by_quadrature(th2) - fisher_by_quadrature(th2)
    assert abs(fisher_by_quadrature(th1) - fisher_by_quadrature(th2)) > 0.5   # thetas differ
    assert np.isclose(c1, c2, rtol=0, atol=1e-8)
    # the constant is E||grad log q(x~|x)||^2 - E||grad log q(x~)||^2 (>= 0)
    x, w = gauss_mixture_nodes(MIX, SIGMA ** 2)
    c = 1 / SIGMA ** 2 - float(((MIX.score(x, 1.0, SIGMA).data ** 2).sum(1) * w).sum())
    assert np.isclose(c1, c, atol=1e-8)


def test_explicit_score_matching_is_half_the_fisher_divergence_plus_a_constant():
    """E_p[tr grad s + 1/2 ||s||^2] = 1/2 E_p||s - grad log p||^2 - 1/2 E_p||grad log p||^2
    (Hyvarinen 2005), by quadrature on the (un-noised) mixture."""
    x, w = gauss_mixture_nodes(MIX)
    true = MIX.score(x, 1.0, 0.0).data
    for th in [(-0.4, 0.2, 1.1, 0.7), (0.3, -0.5, -2.0, 1.6)]:
        esm = float((exact_score_matching(model(th), x, reduction="none").data * w).sum())
        diff = model(th)(Tensor(x)).data - true
        want = 0.5 * float(((diff ** 2).sum(1) * w).sum()) - 0.5 * float(((true ** 2).sum(1) * w).sum())
        assert np.isclose(esm, want, atol=1e-9)


def mlp_score(rng, d=3, h=16):
    W1, b1 = rng.standard_normal((d, h)), rng.standard_normal(h)
    W2 = rng.standard_normal((h, d)) / np.sqrt(h)
    return lambda x: F.tanh(x @ W1 + b1) @ W2 - x * 0.5


@pytest.mark.parametrize("variance_reduced", [True, False])
def test_sliced_score_matching_expectation_is_explicit_score_matching(variance_reduced):
    rng = np.random.default_rng(3)
    s = mlp_score(rng)
    x = rng.standard_normal((4, 3))
    esm = exact_score_matching(s, x, reduction="none").data                              # (4,)
    reps = 4000
    X = np.repeat(x, reps, 0)
    v = rng.standard_normal(X.shape)
    ssm = sliced_score_matching(s, X, v=v, variance_reduced=variance_reduced, reduction="none").data.reshape(4, reps)
    se = ssm.std(1) / np.sqrt(reps)
    assert (np.abs(ssm.mean(1) - esm) < 4 * se).all(), (ssm.mean(1), esm, se)


def test_variance_reduction_reduces_variance():
    rng = np.random.default_rng(4)
    s = mlp_score(rng)
    X = np.repeat(rng.standard_normal((1, 3)), 5000, 0)
    v = rng.standard_normal(X.shape)
    vr = sliced_score_matching(s, X, v=v, variance_reduced=True, reduction="none").data
    plain = sliced_score_matching(s, X, v=v, variance_reduced=False, reduction="none").data
    assert vr.var() < plain.var()


def test_losses_are_differentiable_in_the_parameters():
    """Sliced and explicit SM go through a double backward: their gradient in theta must match
    finite differences."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 1))
    v = rng.standard_normal((6, 1))
    th = np.array([-0.4, 0.2, 1.1, 0.7])
    for fn in (lambda s: exact_score_matching(s, x, reduction="none"), lambda s: sliced_score_matching(s, x, v=v, variance_reduced=True, reduction="none")):
        p = Tensor(th.copy(), requires_grad=True)
        val = fn(lambda xx: xx * p[0] + p[1] + F.tanh(xx * p[3]) * p[2]).mean()
        g = refgen.grad(val, p)[0].data
        num = []
        for i in range(4):
            e = np.zeros(4)
            e[i] = 1e-6
            hi = fn(model(th + e)).mean().item()
            lo = fn(model(th - e)).mean().item()
            num.append((hi - lo) / 2e-6)
        assert np.allclose(g, num, rtol=1e-5, atol=1e-7)


def test_annealed_dsm_is_sigma_squared_times_dsm():
    rng = np.random.default_rng(6)
    sig = np.array([3.0, 1.0, 0.2])
    x = rng.standard_normal((5, 2))
    z = rng.standard_normal((5, 2))
    idx = np.array([0, 2, 1, 1, 0])
    s = lambda xt, i: MIX2.score(xt, 1.0, sig[i])  # noqa: E731
    got = annealed_dsm(s, x, sig, idx, z).data
    for b in range(5):
        one = dsm(lambda xt: MIX2.score(xt, 1.0, sig[idx[b]]), x[b:b + 1], sig[idx[b]], z[b:b + 1]).data
        assert np.isclose(got[b], sig[idx[b]] ** 2 * one[0])


MIX2 = on_numpy([0.2, 0.8], [[-2.0, 0.0], [1.0, 1.0]], [0.5, 0.3])


def test_sde_dsm_at_the_exact_score_is_its_constant_and_weightings_differ_by_g2_over_s2():
    """With the exact score of the noised mixture, sde_dsm's expectation is E||grad log
    p_0t||^2 - E||grad log p_t||^2 times lambda; the likelihood weighting multiplies the
    sigma^2 weighting's per-example value by g^2 / s^2."""
    rng = np.random.default_rng(7)
    sde = VPSDE()
    x0 = MIX2.sample(5, rng)
    t = rng.uniform(0.05, 1.0, 5)
    z = rng.standard_normal((5, 2))
    sc = MIX2.sde_score(sde, tensor=True)
    a = sde_dsm(sc, sde, x0, t, z, "sigma2").data
    b = sde_dsm(sc, sde, x0, t, z, "likelihood").data
    std = sde.marginal(t)[1]
    assert np.allclose(b, a * sde.diffusion(t) ** 2 / std ** 2)
    xt = sde.perturb(x0, t, z)
    want = ((MIX2.score(xt, *sde.marginal(t)).data + z / std[:, None]) ** 2).sum(1) * std ** 2
    assert np.allclose(a, want)
    with pytest.raises(ValueError, match="accepted: sigma2, likelihood"):
        sde_dsm(sc, sde, x0, t, z, "uniform")
