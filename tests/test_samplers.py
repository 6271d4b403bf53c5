"""The samplers sample p: closed-form stationary laws, exact detailed balance, statistical
tests against toy2d's exact densities. Every random draw is seeded; each statistical test
names the Monte Carlo error it allows."""
import math

import numpy as np
import pytest

from refgen import functional as F
from refgen.autograd import Tensor
from refgen.backend import default_rng
from refgen.data import toy2d
from refgen.samplers import (NonFiniteEnergy, ReplayBuffer, langevin, mala,
                             mala_transition_log_density, random_walk_metropolis,
                             rwm_transition_log_density)

pytestmark = pytest.mark.usefixtures("numpy_backend")


def gaussian(s):
    """log N(0, diag(s^2)) up to a constant, as a differentiable function of (N, D)."""
    s = np.asarray(s, dtype=np.float64)
    return lambda x: -0.5 * (x * x / Tensor(s ** 2)).sum(1)


def ula_variance(eps, s2):
    """Stationary variance of x' = (1 - eps/(2 s2)) x + sqrt(eps) z: eps / (1 - a^2)."""
    return s2 / (1.0 - eps / (4.0 * s2))


def survey_form_variance(eps, s2):
    """... and of x' = (1 - eps/(2 s2)) x + eps z, the update with noise eps."""
    return eps * s2 / (1.0 - eps / (4.0 * s2))


def _chain_variance(x0, sampler, keep, **kw):
    """Mean over `keep` later snapshots of the per-dimension variance across chains."""
    rng, x, acc = default_rng(0), x0, []
    for _ in range(keep):
        x = sampler(x, rng=rng, **kw).x
        acc.append(x.var(axis=0))
    return np.mean(acc, axis=0)


# ----------------------------------------------------------------------------- ULA
@pytest.mark.parametrize("eps", [0.5, 0.05])
def test_ula_stationary_variance_is_its_closed_form(eps):
    # N = 20,000 chains started in N(0, s^2), burnt in, then variances averaged over 50
    # snapshots (10 steps apart). The relative standard error of a variance from n
    # independent draws is sqrt(2/n); the snapshots are correlated, so we allow 5 times the
    # error of the 20,000 chains alone: 5 * sqrt(2 / 20000) = 5%, against the 14% (eps=0.5)
    # by which the closed form differs from s^2 and the 33-98% by which the survey's form (noise eps) does.
    s = np.array([1.0, 0.7])
    rng = np.random.default_rng(1)
    x0 = rng.standard_normal((20000, 2)) * s
    burn = langevin(x0, log_prob=gaussian(s), n_steps=int(10 / eps), step_size=eps, rng=default_rng(2)).x
    var = _chain_variance(burn, lambda x, rng: langevin(x, log_prob=gaussian(s), n_steps=10,
                                                        step_size=eps, rng=rng), 50)
    want = ula_variance(eps, s ** 2)
    np.testing.assert_allclose(var, want, rtol=5 * math.sqrt(2 / 20000))
    if eps == 0.5:
        assert np.all(np.abs(var - s ** 2) > 0.1 * s ** 2)        # the step's bias is seen
    # the update with noise eps beside a drift of eps/2 (noise_scale=eps) samples another law
    x_seed = langevin(x0, log_prob=gaussian(s), n_steps=int(20 / eps), step_size=eps,
                      noise_scale=eps, rng=default_rng(3)).x
    np.testing.assert_allclose(x_seed.var(0), survey_form_variance(eps, s ** 2), rtol=0.05)
    assert np.all(np.abs(x_seed.var(0) - s ** 2) > 0.3 * s ** 2)


def test_ula_closed_form_tends_to_the_target_as_the_step_shrinks():
    s2 = 0.49
    gaps = [abs(ula_variance(e, s2) - s2) for e in (0.4, 0.1, 0.01, 0.001)]
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-3 * s2
    assert survey_form_variance(1e-3, s2) < 1e-2 * s2                   # the survey's form collapses


# ----------------------------------------------------------------------------- detailed balance
def _pairs(states):
    i, j = np.triu_indices(len(states), k=1)
    return states[i], states[j]


def mixture_1d(x):
    """A bimodal, non-Gaussian log-density on (N, 1): log(0.3 N(-1, 0.5^2) + 0.7 N(1.5, 1))."""
    a = -0.5 * ((x - (-1.0)) / 0.5) ** 2 + math.log(0.3 / 0.5)
    b = -0.5 * (x - 1.5) ** 2 + math.log(0.7)
    return F.logsumexp(F.cat([a, b], dim=1), dim=1)


@pytest.mark.parametrize("kernel", ["mala", "rwm"])
def test_detailed_balance_holds_exactly_between_every_pair_of_states(kernel):
    # 9 states of a bimodal density: p(x) K(x -> y) = p(y) K(y -> x) for all 36 pairs, to
    # rounding. A proposal ratio upside down, or the wrong mean in q, breaks it.
    states = np.linspace(-2.5, 3.0, 9)[:, None]
    x, y = _pairs(states)
    lp = lambda a: mixture_1d(Tensor(a)).data
    if kernel == "mala":
        fwd = mala_transition_log_density(mixture_1d, x, y, 0.8)
        bwd = mala_transition_log_density(mixture_1d, y, x, 0.8)
    else:
        fwd = rwm_transition_log_density(mixture_1d, x, y, 0.9)
        bwd = rwm_transition_log_density(mixture_1d, y, x, 0.9)
    np.testing.assert_allclose(lp(x) + fwd, lp(y) + bwd, rtol=0, atol=1e-12)
    assert np.ptp(fwd - bwd) > 1.0                                    # not trivially symmetric


# ----------------------------------------------------------------------------- statistical
def _ks(a, b):
    """Two-sample Kolmogorov-Smirnov statistic."""
    grid = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    fb = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return np.abs(fa - fb).max()


KS_001 = 1.949  # c(alpha) of the two-sample KS test at alpha = 0.001


def _ks_passes(a, b):
    n, m = len(a), len(b)
    return _ks(a, b) < KS_001 * math.sqrt((n + m) / (n * m))


def _chi2_homogeneity(a, b, edges):
    """Chi-square statistic and degrees of freedom of two samples' counts in 2D grid cells."""
    ca = np.histogram2d(a[:, 0], a[:, 1], bins=[edges, edges])[0].ravel()
    cb = np.histogram2d(b[:, 0], b[:, 1], bins=[edges, edges])[0].ravel()
    keep = (ca + cb) >= 10
    ca, cb = ca[keep], cb[keep]
    na, nb = ca.sum(), cb.sum()
    pool = (ca + cb) / (na + nb)
    stat = (((ca - na * pool) ** 2) / (na * pool) + ((cb - nb * pool) ** 2) / (nb * pool)).sum()
    return stat, keep.sum() - 1


def _chi2_critical(df, z=3.09):
    """Upper alpha = 0.001 quantile of chi^2_df (Wilson-Hilferty)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def eight_gaussians(x):
    """toy2d's 8gaussians log-density, written with refgen ops so it can be differentiated."""
    centres, std = toy2d.modes("8gaussians")
    d2 = ((x.unsqueeze(1) - Tensor(centres)) ** 2).sum(2)             # (N, 8)
    return F.logsumexp(-0.5 * d2 / std ** 2, dim=1) - math.log(8 * 2 * math.pi * std ** 2)


def checkerboard(x):
    return Tensor(toy2d.log_prob("checkerboard", x.data))             # not differentiable: RWM only


def test_the_differentiable_8gaussians_is_toy2ds():
    x = toy2d.sample("8gaussians", 50, 0)
    np.testing.assert_allclose(eight_gaussians(Tensor(x)).data, toy2d.log_prob("8gaussians", x),
                               rtol=1e-12)


@pytest.mark.parametrize("name,kernel,knob", [("8gaussians", "mala", 0.05),
                                              ("checkerboard", "rwm", 0.6)])
def test_chains_started_at_p_stay_at_p(name, kernel, knob):
    # 4,000 independent chains started at exact draws of p; if the kernel leaves p invariant,
    # after 30 steps they are again 4,000 exact draws: KS per dimension and chi-square on
    # 1x1 cells against 4,000 fresh draws, each at alpha = 0.001 (seeded, so deterministic).
    x0 = toy2d.sample(name, 4000, 10)
    fresh = toy2d.sample(name, 4000, 11)
    if kernel == "mala":
        out = mala(x0, log_prob=eight_gaussians, n_steps=30, step_size=knob, rng=default_rng(12))
    else:
        out = random_walk_metropolis(x0, log_prob=checkerboard, n_steps=30, scale=knob, rng=default_rng(12))
    assert 0.3 < out.acceptance_rate < 0.99                          # the chains did move
    assert np.mean(np.any(out.x != x0, axis=1)) > 0.9
    for d in range(2):
        assert _ks_passes(out.x[:, d], fresh[:, d])
    stat, df = _chi2_homogeneity(out.x, fresh, np.arange(-4.5, 4.6, 1.0))
    assert stat < _chi2_critical(df)


def test_at_a_large_step_mala_passes_where_ula_fails():
    # 8gaussians (component variance 1/8) at eps = 0.1: ULA inflates each component's
    # variance by 1 / (1 - eps / (4 s^2)) = 1.25 and the chi-square on 0.5 x 0.5 cells sees
    # it; MALA, same step and noise, passes the same test.
    x0 = toy2d.sample("8gaussians", 4000, 10)
    fresh = toy2d.sample("8gaussians", 4000, 11)
    edges = np.arange(-4.5, 4.6, 0.5)
    x = langevin(x0, log_prob=eight_gaussians, n_steps=30, step_size=0.1, rng=default_rng(12)).x
    stat, df = _chi2_homogeneity(x, fresh, edges)
    assert stat > _chi2_critical(df)
    out = mala(x0, log_prob=eight_gaussians, n_steps=30, step_size=0.1, rng=default_rng(12))
    stat, df = _chi2_homogeneity(out.x, fresh, edges)
    assert stat < _chi2_critical(df) and out.acceptance_rate > 0.5


def test_mala_removes_the_bias_ula_shows_at_a_large_step():
    # N(0, 1), eps = 1: ULA's stationary variance is 1 / (1 - 1/4) = 4/3; MALA's is 1, at
    # eps = 1 and at eps = 2 too, where it rejects a quarter of its proposals (a rejected
    # chain must keep the gradient at its own state). 20,000 chains from N(0, 1), 100-200
    # steps: each variance has a standard error of about 0.01-0.02; we allow 0.06.
    x0 = np.random.default_rng(0).standard_normal((20000, 1))
    g = gaussian([1.0])
    v_ula = langevin(x0, log_prob=g, n_steps=200, step_size=1.0, rng=default_rng(1)).x.var()
    assert abs(v_ula - 4 / 3) < 0.06
    for eps, min_acc in ((1.0, 0.85), (2.0, 0.7)):
        out = mala(x0, log_prob=g, n_steps=100, step_size=eps, rng=default_rng(1))
        assert abs(out.x.var() - 1.0) < 0.06 and abs(out.x.mean()) < 0.03
        assert min_acc < out.acceptance_rate < 1.0


# ----------------------------------------------------------------------------- buffer
def test_replay_buffer_restarts_a_fraction_and_keeps_the_rest():
    init = np.arange(100, dtype=np.float64).reshape(50, 2)
    buf = ReplayBuffer(50, init.copy(), reinit=0.25)
    x, idx = buf.draw(4000, np.random.default_rng(0), lambda n, rng: np.full((n, 2), -1.0))
    fresh = np.all(x == -1.0, axis=1)
    assert abs(fresh.mean() - 0.25) < 4 * math.sqrt(0.25 * 0.75 / 4000)
    np.testing.assert_array_equal(x[~fresh], init[idx[~fresh]])
    buf.push(idx[:3], np.zeros((3, 2)))
    assert np.all(buf.chains[idx[:3]] == 0.0) and "chains" in buf.state_dict()


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call", [
    lambda x: langevin(x, log_prob=gaussian([1.0]), n_steps=1, step_size=0.0),
    lambda x: langevin(x, log_prob=gaussian([1.0]), n_steps=1, step_size=0.1, noise_scale=-1.0),
    lambda x: mala(x, log_prob=gaussian([1.0]), n_steps=1, step_size=-0.1),
    lambda x: random_walk_metropolis(x, log_prob=gaussian([1.0]), n_steps=1, scale=0.0),
])
def test_a_step_that_is_not_positive_is_one_clear_error(call):
    with pytest.raises(ValueError, match="must be a finite number > 0"):
        call(np.zeros((3, 1)))


def test_a_non_finite_energy_names_the_chain_and_the_step():
    # log p = -x^4 blows up for the chain started far out: ULA overshoots to inf
    quartic = lambda x: -(x ** 4).sum(1)
    x0 = np.array([[0.1], [0.2], [30.0], [0.0]])
    with pytest.raises(NonFiniteEnergy, match=r"chain 2 at sampler step \d"):
        langevin(x0, log_prob=quartic, n_steps=20, step_size=0.5, rng=default_rng(0))
    with pytest.raises(ValueError, match="exactly one of log_prob"):
        langevin(x0, n_steps=1, step_size=0.1)
