"""Gaussianization flows and RBIG: the marginal map against its formula, Householder
rotations, invertibility, log-determinants by brute force, normalisation on a 2D grid."""
import math

import numpy as np
import pytest

from refgen import data
from refgen.autograd import Tensor, no_grad
from refgen.backend import default_rng, to_numpy
from refgen.models import get
from refgen.models.flows import RBIG, GaussianizationFlow, HouseholderRotation, \
    MarginalGaussianization
from refgen.testing import check_grads

pytestmark = pytest.mark.usefixtures("numpy_backend")

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _sig(a):
    return 1.0 / (1.0 + np.exp(-a))


def _marginal(seed=0, dim=3, k=4):
    layer = MarginalGaussianization(dim, k, rng=seed, dtype=np.float64)
    rng = np.random.default_rng(seed + 10)
    layer.log_s.data = rng.normal(-0.3, 0.3, (dim, k))
    layer.logit_pi.data = rng.normal(0, 1, (dim, k))
    layer.initialized = np.ones((), np.int8)
    return layer.eval()


def test_registered():
    assert get("gflow") is GaussianizationFlow


def test_marginal_layer_is_phi_inverse_of_the_mixture_cdf(fl):
    """Phi(y_d) = sum_k pi_dk sigmoid((x_d - mu_dk) / s_dk) (closed form, math.erf), and the
    log-determinant is sum_d log p_d(x_d) - log phi(y_d) with p_d the mixture density."""
    layer = _marginal()
    x = np.random.default_rng(1).normal(0, 1.5, (5, 3))
    y, ld = fl.forward(layer, x)
    mu, s = layer.mu.numpy(), np.exp(layer.log_s.numpy())
    pi = np.exp(layer.logit_pi.numpy()); pi /= pi.sum(1, keepdims=True)
    z = (x[:, :, None] - mu) / s
    cdf = (pi * _sig(z)).sum(-1)
    np.testing.assert_allclose(0.5 * (1 + _erf(y / math.sqrt(2))), cdf, rtol=1e-12, atol=1e-14)
    pdf = (pi * _sig(z) * _sig(-z) / s).sum(-1)
    want = (np.log(pdf) + 0.5 * y ** 2 + 0.5 * math.log(2 * math.pi)).sum(1)
    np.testing.assert_allclose(ld, want, rtol=1e-12)


def test_marginal_layer_inverts_and_logdet_is_the_jacobians(fl):
    layer = _marginal(seed=2)
    x = np.random.default_rng(3).normal(0, 1.5, (4, 3))
    y, ld = fl.forward(layer, x)
    np.testing.assert_allclose(fl.inverse(layer, y), x, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(ld, fl.brute_logdet(layer, x), rtol=1e-9, atol=1e-9)


def test_marginal_layer_gradients():
    layer = _marginal(seed=4, dim=2, k=3)
    x0 = np.random.default_rng(5).normal(0, 1.0, (3, 2))
    check_grads(lambda x: layer(x)[0], [x0], order=2)
    check_grads(lambda x: layer(x)[1], [x0], order=2)


def test_data_dependent_initialisation_uses_the_batch_quantiles():
    layer = MarginalGaussianization(2, 4, rng=0, dtype=np.float64)
    x = np.random.default_rng(0).normal([3.0, -1.0], [2.0, 0.5], (4000, 2))
    layer.train()
    layer(Tensor(x))
    assert bool(layer.initialized)
    np.testing.assert_allclose(layer.mu.numpy(), np.quantile(x, [0.125, 0.375, 0.625, 0.875], axis=0).T)
    # the initial mixture already Gaussianises the data roughly: y ~ N(0, 1) per dimension
    with no_grad():
        y = layer.eval()(Tensor(x))[0].numpy()
    np.testing.assert_allclose(y.mean(0), 0, atol=0.1)
    np.testing.assert_allclose(y.std(0), 1, atol=0.1)


def test_householder_is_a_rotation_and_a_reflection_flips_its_vector(fl):
    layer = HouseholderRotation(4, rng=0, dtype=np.float64)
    q = fl.jacobian(lambda t: layer(t)[0], np.zeros(4))
    np.testing.assert_allclose(q @ q.T, np.eye(4), atol=1e-12)
    x = np.random.default_rng(1).standard_normal((3, 4))
    y, ld = fl.forward(layer, x)
    np.testing.assert_array_equal(ld, 0.0)
    np.testing.assert_allclose(y, x @ q.T, atol=1e-12)
    np.testing.assert_allclose(fl.inverse(layer, y), x, atol=1e-12)
    one = HouseholderRotation(3, reflections=1, rng=2, dtype=np.float64)
    v = one.v.numpy()[0]
    w = np.cross(v, [1.0, 0.0, 0.0])                       # perpendicular to v
    out, _ = fl.forward(one, np.stack([v, w]))
    np.testing.assert_allclose(out, [-v, w], atol=1e-12)   # H v = -v, H w = w


def test_householder_gradients():
    layer = HouseholderRotation(3, rng=1, dtype=np.float64)
    check_grads(lambda x: layer(x)[0], [np.random.default_rng(2).standard_normal((2, 3))], order=2)


def _gflow(seed=0, **kw):
    m = GaussianizationFlow((2,), seed=seed, **{**dict(layers=3, components=4), **kw}).double()
    x = data.toy2d.sample("8gaussians", 512, rng=np.random.default_rng(seed))
    m.train()
    with no_grad():
        m.log_prob(Tensor(x))            # the data-dependent initialisation
    return m.eval(), x


def test_whole_flow_inverts_logdet_brute_force_and_normalises(fl):
    m, x = _gflow()
    fl.randomize(m, seed=1, scale=0.1)
    xs = x[:4]
    z, ld = fl.forward(m.flow, xs)
    np.testing.assert_allclose(fl.inverse(m.flow, z), xs, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(ld, fl.brute_logdet(m.flow, xs), rtol=1e-8, atol=1e-8)
    assert abs(fl.grid_integral(m, half_width=7.0, n=300) - 1.0) < 3e-3


def _mass(fl, model, n_mc=100_000):
    """The integral of q over R^2: a 300 x 300 midpoint grid on [-7, 7]^2 plus the rest by
    importance sampling from a Cauchy(0, 2) pair outside the box (q's tails can be wide)."""
    inner = fl.grid_integral(model, half_width=7.0, n=300)
    pts = 2.0 * np.random.default_rng(0).standard_cauchy((n_mc, 2))
    pts = pts[np.abs(pts).max(1) > 7]
    log_r = (np.log(2.0 / np.pi) - np.log(4.0 + pts ** 2)).sum(1)
    return inner + np.exp(fl.log_probs(model, pts) - log_r).sum() / n_mc


def test_trained_briefly_fits_better_and_stays_normalised(fl):
    m, x = _gflow(seed=1, layers=4, components=8)
    before = -fl.log_probs(m, x).mean()
    after = fl.train_briefly(m, x, steps=60, lr=1e-2)
    assert after < before - 0.1
    assert abs(_mass(fl, m) - 1.0) < 3e-3
    s = to_numpy(m.sample(400, rng=default_rng(0)))
    assert s.shape == (400, 2) and np.all(np.isfinite(s))


def test_tails_stay_invertible_far_beyond_erfinv_saturation(fl):
    """|y| up to ~20: 2F - 1 rounds to -1 there, the log-space quantile does not."""
    layer = _marginal(seed=6, dim=2, k=3)
    x = np.array([[-300.0, 250.0], [-60.0, 80.0]])
    y, ld = fl.forward(layer, x)
    assert np.all(np.abs(y) > 8.5) and np.all(np.isfinite(ld))
    np.testing.assert_allclose(fl.inverse(layer, y), x, rtol=1e-9)
    np.testing.assert_allclose(ld, fl.brute_logdet(layer, x), rtol=1e-9)


def test_images_are_flattened_after_the_logit_transform(fl):
    m = GaussianizationFlow((1, 2, 2), layers=2, components=3).double()
    fl.randomize(m, seed=0, scale=0.1)
    x = np.random.default_rng(0).uniform(0.05, 0.95, (3, 1, 2, 2))
    with no_grad():
        z, ld = m(Tensor(x))
    assert z.shape == (3, 4)
    np.testing.assert_allclose(ld.numpy(), fl.brute_logdet(m.flow, x), rtol=1e-8)
    np.testing.assert_allclose(fl.inverse(m.flow, z.numpy()), x, rtol=1e-7, atol=1e-8)


def test_bad_configuration_is_one_line():
    with pytest.raises(ValueError, match="at least 1"):
        GaussianizationFlow((2,), layers=0)


# --- RBIG -----------------------------------------------------------------------------------
def _rbig(layers=4, n=1500):
    x = data.toy2d.sample("8gaussians", n, rng=np.random.default_rng(0))
    return RBIG(layers=layers, max_points=150, seed=0).fit(x), x


def test_rbig_inverts_and_its_logdet_is_the_numerical_jacobians():
    model, x = _rbig()
    xs = x[:5]
    z, ld = model.forward(xs)
    np.testing.assert_allclose(model.inverse(z), xs, rtol=1e-8, atol=1e-8)
    eps = 1e-6
    for i in range(len(xs)):
        jac = np.stack([(model.forward(xs[i:i + 1] + eps * e)[0] - model.forward(xs[i:i + 1] - eps * e)[0])[0]
                        / (2 * eps) for e in np.eye(2)], axis=1)
        assert abs(np.linalg.slogdet(jac)[1] - ld[i]) < 1e-5


def test_rbig_gaussianizes_and_normalises():
    model, x = _rbig()
    z, _ = model.forward(x)
    np.testing.assert_allclose(z.mean(0), 0, atol=0.1)
    np.testing.assert_allclose(z.std(0), 1, atol=0.35)     # Silverman's KDE oversmooths a little
    # the last rotation is the PCA of what the last layer was fitted on: on the training data
    # the output is exactly decorrelated
    assert abs(np.cov(z, rowvar=False)[0, 1]) < 1e-10
    c = -7 + (np.arange(120) + 0.5) * (14 / 120)
    pts = np.stack(np.meshgrid(c, c), -1).reshape(-1, 2)
    assert abs(np.exp(model.log_prob(pts)).sum() * (14 / 120) ** 2 - 1.0) < 3e-3
    # better than a single Gaussian fitted to the data (8 modes vs one blob)
    mu, cov = x.mean(0), np.cov(x, rowvar=False)
    d = x - mu
    gauss = -0.5 * np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d) - 0.5 * np.log(np.linalg.det(2 * np.pi * cov))
    assert model.log_prob(x).mean() > gauss.mean() + 0.3
    s = model.sample(200, rng=default_rng(1))
    assert s.shape == (200, 2) and np.all(np.isfinite(s))


def test_rbig_rejects_use_before_fit_and_bad_shapes():
    with pytest.raises(ValueError, match="not fitted"):
        RBIG().log_prob(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="vectors"):
        RBIG().fit(np.zeros((5, 2, 2)))
