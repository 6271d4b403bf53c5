"""Mode coverage, MMD and entropy gap on Gaussian mixtures whose answers are known."""
import math

import numpy as np
import pytest

from refgen.metrics import entropy_gap_nats, mmd, mode_stats

K, RADIUS, STD = 8, 2.0, 0.1
CENTRES = RADIUS * np.stack([np.cos(2 * np.pi * np.arange(K) / K),
                             np.sin(2 * np.pi * np.arange(K) / K)], axis=1)   # (K, 2)
P_HQ_2D = 1.0 - math.exp(-4.5)   # P(chi^2_2 <= 9): a 2D Gaussian sample within 3 std


pytestmark = pytest.mark.usefixtures("numpy_backend")  # NumPy in float64, as the references


def _mixture(rng, n, weights=None, shift=0.0):
    idx = rng.choice(K, size=n, p=weights)
    return CENTRES[idx] + STD * rng.standard_normal((n, 2)) + shift


def _binomial_tol(p, n, z=4.0):
    return z * math.sqrt(p * (1 - p) / n)


def test_samples_from_the_mixture_cover_all_modes():
    n = 20000
    s = mode_stats(_mixture(np.random.default_rng(0), n), CENTRES, STD)
    assert s["modes_covered"] == K
    assert abs(s["hq_fraction"] - P_HQ_2D) < _binomial_tol(P_HQ_2D, n)
    assert set(s) == {"modes_covered", "hq_fraction"}


def test_collapsed_sampler_covers_one_mode():
    rng = np.random.default_rng(1)
    n = 5000
    s = mode_stats(CENTRES[3] + STD * rng.standard_normal((n, 2)), CENTRES, STD)
    assert s["modes_covered"] == 1
    assert abs(s["hq_fraction"] - P_HQ_2D) < _binomial_tol(P_HQ_2D, n)
    point_mass = mode_stats(np.repeat(CENTRES[:1], 100, axis=0), CENTRES, STD)
    assert point_mass == {"modes_covered": 1, "hq_fraction": 1.0}


def test_far_samples_are_low_quality_and_cover_nothing():
    s = mode_stats(np.full((100, 2), 50.0), CENTRES, STD)
    assert s == {"modes_covered": 0, "hq_fraction": 0.0}


def test_min_share_threshold():
    # One mode gets 1% of the mass: below the default 0.25 / 8 = 3.1%, above 0.5%.
    w = np.full(K, 0.99 / (K - 1))
    w[5] = 0.01
    x = _mixture(np.random.default_rng(2), 20000, weights=w)
    assert mode_stats(x, CENTRES, STD)["modes_covered"] == K - 1
    assert mode_stats(x, CENTRES, STD, min_share=0.005)["modes_covered"] == K


def test_per_mode_std_and_three_dims():
    rng = np.random.default_rng(3)
    stds = np.linspace(0.05, 0.2, K)
    idx = rng.integers(0, K, 20000)
    x = CENTRES[idx] + stds[idx, None] * rng.standard_normal((20000, 2))
    s = mode_stats(x, CENTRES, stds)
    assert s["modes_covered"] == K and abs(s["hq_fraction"] - P_HQ_2D) < _binomial_tol(P_HQ_2D, 20000)
    # P(chi^2_3 <= x) = erf(sqrt(x / 2)) - sqrt(2 x / pi) exp(-x / 2), at x = 9
    p3 = math.erf(3 / math.sqrt(2)) - math.sqrt(18 / math.pi) * math.exp(-4.5)
    c3 = np.zeros((1, 3))
    s3 = mode_stats(rng.standard_normal((20000, 3)), c3, 1.0)
    assert abs(s3["hq_fraction"] - p3) < _binomial_tol(p3, 20000)


# ---------------------------------------------------------------- MMD

BANDWIDTHS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def _naive_mmd2(x, y, unbiased=True):
    def gram(a, b):
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.mean([np.exp(-d2 / (2 * s * s)) for s in BANDWIDTHS], axis=0)
    kxx, kyy, kxy = gram(x, x), gram(y, y), gram(x, y)
    m, n = len(x), len(y)
    if unbiased:
        return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean())
    return kxx.mean() + kyy.mean() - 2 * kxy.mean()


def test_mmd_matches_the_naive_formula_in_any_chunking():
    rng = np.random.default_rng(4)
    x, y = _mixture(rng, 37), _mixture(rng, 23, shift=0.1)
    want = _naive_mmd2(x, y)
    for chunk in (1, 5, 37, 1000):
        assert mmd(x, y, BANDWIDTHS, chunk=chunk) == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert mmd(x[:, 0], y[:, 0], (0.3,)) == mmd(x[:, :1], y[:, :1], (0.3,))   # (n,) is (n, 1)


def test_mmd_unbiased_under_the_null_and_positive_when_shifted():
    rng = np.random.default_rng(5)
    n, repeats = 200, 150
    null = np.array([mmd(_mixture(rng, n), _mixture(rng, n)) for _ in range(repeats)])
    se = null.std(ddof=1)
    # E[MMD_u^2] = 0 under the null: the mean over repeats is 0 within its standard error ...
    assert abs(null.mean()) < 4 * se / math.sqrt(repeats)
    # ... while the biased (V-statistic) estimator sits clearly above 0 on the same kind of data.
    biased = np.array([_naive_mmd2(_mixture(rng, n), _mixture(rng, n), unbiased=False)
                       for _ in range(20)])
    assert biased.mean() > 20 * se / math.sqrt(repeats)
    # One pair from the same distribution: within a few null standard deviations of 0.
    assert abs(mmd(_mixture(rng, n), _mixture(rng, n))) < 4 * se
    # Every sample shifted by 3 component stds: far outside the null spread.
    assert mmd(_mixture(rng, n), _mixture(rng, n, shift=3 * STD)) > 8 * se
    # Mode-dropping sampler (half the modes): also far outside.
    w = np.r_[np.full(K // 2, 2.0 / K), np.zeros(K // 2)]
    assert mmd(_mixture(rng, n), _mixture(rng, n, weights=w)) > 10 * se


def test_mmd_refuses_bad_shapes():
    with pytest.raises(ValueError, match="at least 2"):
        mmd(np.zeros((1, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"\(m, d\)"):
        mmd(np.zeros((4, 2)), np.zeros((5, 3)))


# ---------------------------------------------------------------- entropy gap

def test_entropy_gap_is_kl_for_gaussians():
    # Data N(0, 1): entropy 0.5 log(2 pi e). Under the true density the test NLL estimates the
    # entropy (gap ~ 0); under N(mu, s^2) the gap is KL(N(0,1) || N(mu, s^2)).
    rng = np.random.default_rng(6)
    x = rng.standard_normal(200000)
    h = 0.5 * math.log(2 * math.pi * math.e)
    nll_true = (0.5 * x**2 + 0.5 * math.log(2 * math.pi)).mean()
    se = (0.5 * x**2).std() / math.sqrt(len(x))
    assert abs(entropy_gap_nats(nll_true, h)) < 4 * se
    mu, s = 0.5, 1.5
    nll_model = (0.5 * ((x - mu) / s) ** 2 + math.log(s) + 0.5 * math.log(2 * math.pi)).mean()
    kl = math.log(s) + (1 + mu**2) / (2 * s**2) - 0.5
    assert entropy_gap_nats(nll_model, h) == pytest.approx(kl, abs=4 * se)
    assert entropy_gap_nats(3.0, 1.25) == 1.75
