"""The f-divergence table, row by row: f convex with f(1) = 0, f* the Legendre transform of f,
T* = f'(p/q) attaining the variational bound D_f(P || Q) (quadrature, two Gaussians), and
every perturbed T falling below it (Nowozin et al., 2016)."""
import math

import numpy as np
import pytest

from refgen.autograd import Tensor
from refgen.models import create
from refgen.models.gan import fdiv

pytestmark = pytest.mark.usefixtures("numpy_backend")  # closed-form oracles: float64 NumPy
ROWS = list(fdiv.DIVERGENCES)

# p = N(0, 1), q = N(0.5, 1.3^2) on a quadrature grid wide enough for every row's tails
X = np.linspace(-14.0, 14.0, 280_001)
DX = X[1] - X[0]
P = np.exp(-0.5 * X ** 2) / math.sqrt(2 * math.pi)
Q = np.exp(-0.5 * ((X - 0.5) / 1.3) ** 2) / (1.3 * math.sqrt(2 * math.pi))
M = 0.5 * (P + Q)
JSD = 0.5 * np.sum(P * np.log(P / M)) * DX + 0.5 * np.sum(Q * np.log(Q / M)) * DX


def _t_values(div):
    """Points t of dom f*: the activation's image of v in [-1.5, 1.5]."""
    return div.activation(Tensor(np.linspace(-1.5, 1.5, 13))).data


def test_table_has_the_six_rows():
    assert ROWS == ["kl", "reverse_kl", "pearson", "squared_hellinger", "jensen_shannon", "gan"]
    with pytest.raises(ValueError, match="accepted: kl, reverse_kl"):
        fdiv.get("hellinger")


@pytest.mark.parametrize("name", ROWS)
def test_f_is_convex_with_f1_zero(name):
    div = fdiv.get(name)
    u = np.linspace(0.05, 6.0, 400)
    second = div.f(u[2:]) - 2 * div.f(u[1:-1]) + div.f(u[:-2])
    assert np.all(second > 0)
    # the GAN row is the paper's: f(1) = -log 4, i.e. D_gan = 2 JSD - log 4
    assert div.f(np.array(1.0)) == pytest.approx(-math.log(4.0) if name == "gan" else 0.0, abs=1e-15)


@pytest.mark.parametrize("name", ROWS)
def test_conjugate_is_the_legendre_transform(name):
    div = fdiv.get(name)
    u = np.logspace(-5, 3, 400_001)
    fu = div.f(u)
    for t in _t_values(div):
        numeric = np.max(t * u - fu)                           # sup_u (t u - f(u))
        assert div.f_conj(np.array(t)) == pytest.approx(numeric, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("name", ROWS)
def test_conj_activation_is_f_star_of_g_and_finite(name):
    div = fdiv.get(name)
    v = np.linspace(-3.0, 3.0, 25)
    composed = div.f_conj(div.activation(Tensor(v)).data)
    np.testing.assert_allclose(div.conj_activation(Tensor(v)).data, composed, rtol=1e-10, atol=1e-12)
    if name not in ("kl", "squared_hellinger"):                 # exp(v) rows grow as they must
        assert np.isfinite(div.conj_activation(Tensor(np.array([-60.0, 60.0]))).data).all()


def _bound(div, t):
    """E_p[T] - E_q[f*(T)] by quadrature."""
    return np.sum(P * t) * DX - np.sum(Q * div.f_conj(t)) * DX


@pytest.mark.parametrize("name", ROWS)
def test_optimal_critic_attains_the_divergence(name):
    div = fdiv.get(name)
    d_f = np.sum(Q * div.f(P / Q)) * DX                         # D_f(P || Q) = E_q f(p / q)
    t_star = div.f_prime(P / Q)                                 # T* = f'(p / q)
    assert _bound(div, t_star) == pytest.approx(d_f, abs=1e-3)
    assert abs(d_f) > 0.02                                      # the two densities differ
    h = 1.0 + 0.5 * np.sin(X)                                   # a positive perturbation
    for eps in (0.05, 0.2):                                     # downward stays in dom f*
        assert _bound(div, t_star - eps * h) < d_f - 1e-4
    if name in ("kl", "pearson"):                               # dom f* = R: upward too
        assert _bound(div, t_star + 0.05 * h) < d_f - 1e-4


def test_jensen_shannon_and_gan_rows_against_the_jsd():
    d_js = np.sum(Q * fdiv.get("jensen_shannon").f(P / Q)) * DX
    d_gan = np.sum(Q * fdiv.get("gan").f(P / Q)) * DX
    assert d_js == pytest.approx(2.0 * JSD, abs=1e-6)           # the table's f gives 2 JSD
    assert d_gan == pytest.approx(2.0 * JSD - math.log(4.0), abs=1e-6)


def test_fgan_discriminator_loss_is_the_negative_bound():
    model = create("fgan", data_shape=(2,), seed=0, divergence="pearson")
    r = np.random.default_rng(0)
    v_real, v_fake = r.normal(0.3, 1.0, 32), r.normal(-0.2, 0.8, 32)
    got = model.d_objective(Tensor(v_real), Tensor(v_fake)).item()
    assert got == pytest.approx(-(v_real.mean() - (0.25 * v_fake ** 2 + v_fake).mean()), rel=1e-12)
    assert model.g_objective(Tensor(v_fake)).item() == pytest.approx(-v_fake.mean(), rel=1e-12)
