"""Samplers driven by the exact score of a Gaussian mixture: annealed Langevin recovers the
mixture weights where plain Langevin does not (Song & Ermon 2019's toy), and the reverse SDE,
predictor-corrector and probability-flow ODE samplers reproduce the mixture under VE and VP."""
import numpy as np
import pytest

from refgen.backend import use_backend
from refgen.models.score.mixture import GaussianMixture
from refgen.models.score.ncsn import geometric_sigmas
from refgen.models.score.samplers import (annealed_langevin, euler_maruyama, langevin,
                                          ode_sample, predictor_corrector)
from refgen.models.score.sde import SubVPSDE, VESDE, VPSDE

pytestmark = pytest.mark.usefixtures("numpy_backend")


def on_numpy(*args):
    """A mixture made at import, on NumPy as the module's tests run (the suite may import
    it under the stand-in device backend, REFGEN_STRICT_DEVICE=1)."""
    with use_backend("numpy"):
        return GaussianMixture(*args)


# Song & Ermon (2019), section 3.2.2: 1/5 N((-5, -5), I) + 4/5 N((5, 5), I)
TOY = on_numpy([0.2, 0.8], [[-5.0, -5.0], [5.0, 5.0]], [1.0, 1.0])


def weight_of_first(x):
    return float((x.sum(1) < 0).mean())


def test_annealed_langevin_recovers_the_weights_plain_langevin_does_not():
    rng = np.random.default_rng(0)
    n = 2000
    x0 = rng.uniform(-8, 8, (n, 2))
    plain = langevin(lambda x: TOY.score(x).data, x0, 0.1, 1000, rng)
    sigmas = geometric_sigmas(20.0, 1.0, 10)
    annealed = annealed_langevin(TOY.ladder_score(sigmas), x0, sigmas, 0.1, 100, rng, denoise=False)
    assert abs(weight_of_first(annealed) - 0.2) < 0.03
    assert abs(weight_of_first(plain) - 0.2) > 0.15          # stuck where it started: ~1/2
    # and the annealed samples are the last level's mixture p_{sigma_L}: std sqrt(1 + sigma_L^2)
    first = annealed[annealed.sum(1) < 0]
    assert np.allclose(first.mean(0), [-5, -5], atol=0.15)
    assert np.allclose(first.std(0), np.sqrt(2.0), atol=0.1)


def test_annealed_langevin_final_denoising_is_tweedie():
    """One step x + sigma^2 grad log p_sigma(x) = E[x_0 | x] for Gaussian data: shrinks
    N(0, tau^2 + sigma^2) samples to variance tau^4 / (tau^2 + sigma^2)."""
    rng = np.random.default_rng(1)
    g = GaussianMixture([1.0], [[0.0, 0.0]], [0.5])
    sig = np.array([0.8, 0.3])
    x = rng.standard_normal((40_000, 2)) * np.sqrt(0.25 + 0.09)
    out = annealed_langevin(g.ladder_score(sig), x, sig, 1e-12, 0, rng, denoise=True)
    assert np.allclose(out.var(0), 0.25 ** 2 / 0.34, rtol=0.03)


MIX = on_numpy([0.2, 0.8], [[-2.0, -1.0], [1.5, 1.0]], [0.4, 0.5])


def check_mixture(x):
    first = MIX.log_prob(x) * 0 + (np.linalg.norm(x - MIX.mu[0], axis=1) < np.linalg.norm(x - MIX.mu[1], axis=1))
    w = first.mean()
    assert abs(w - 0.2) < 0.03, w
    a, b = x[first > 0], x[first == 0]
    assert np.allclose(a.mean(0), MIX.mu[0], atol=0.08), a.mean(0)
    assert np.allclose(b.mean(0), MIX.mu[1], atol=0.05), b.mean(0)
    assert np.allclose(a.std(0), 0.4, atol=0.06) and np.allclose(b.std(0), 0.5, atol=0.05)


SDES = [VESDE(0.01, 20.0), VPSDE(0.1, 20.0), SubVPSDE(0.1, 20.0)]


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_reverse_sde_reproduces_the_mixture(sde):
    rng = np.random.default_rng(2)
    check_mixture(euler_maruyama(sde, MIX.sde_score(sde), (3000, 2), rng, 500, dtype=np.float64))


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_predictor_corrector_reproduces_the_mixture(sde):
    rng = np.random.default_rng(3)
    check_mixture(predictor_corrector(sde, MIX.sde_score(sde), (3000, 2), rng, 300,
                                      dtype=np.float64))


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_probability_flow_ode_reproduces_the_mixture(sde):
    rng = np.random.default_rng(4)
    check_mixture(ode_sample(sde, MIX.sde_score(sde), (3000, 2), rng, "rk45", rtol=1e-5,
                             atol=1e-5, dtype=np.float64))


def test_probability_flow_ode_is_deterministic_and_rk4_agrees_with_rk45():
    sde = VPSDE()
    x1 = np.random.default_rng(5).standard_normal((50, 2))
    a = ode_sample(sde, MIX.sde_score(sde), x1.shape, None, "rk45", rtol=1e-8, atol=1e-8, x=x1)
    b = ode_sample(sde, MIX.sde_score(sde), x1.shape, None, "rk4", steps=400, x=x1)
    assert np.allclose(a, b, atol=1e-4)


def test_plain_langevin_samples_a_gaussian():
    """Eq. (4) with a small step leaves N(mu, tau^2) (nearly) invariant."""
    rng = np.random.default_rng(6)
    g = GaussianMixture([1.0], [[1.0, -2.0]], [0.7])
    x = langevin(lambda x: g.score(x).data, rng.standard_normal((5000, 2)), 0.01, 2000, rng)
    assert np.allclose(x.mean(0), [1, -2], atol=0.04) and np.allclose(x.std(0), 0.7, rtol=0.04)
