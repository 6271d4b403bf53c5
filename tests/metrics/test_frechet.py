"""The Fréchet distance against its closed forms and an independent matrix square root."""
import numpy as np
import pytest

from refgen.metrics import frechet_distance, frechet_distance_from_features, gaussian_stats


def _random_spd(rng, d, cond=10.0):
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (q * np.geomspace(1.0, 1.0 / cond, d)) @ q.T


def test_equal_gaussians_give_zero():
    rng = np.random.default_rng(0)
    for d in (1, 5, 64):
        mu, s = rng.normal(size=d), _random_spd(rng, d, cond=1e4)
        assert frechet_distance(mu, s, mu, s) <= 1e-8 * np.trace(s)


def test_mean_shift_gives_squared_norm():
    rng = np.random.default_rng(1)
    mu, s, delta = rng.normal(size=8), _random_spd(rng, 8), rng.normal(size=8)
    assert frechet_distance(mu, s, mu + delta, s) == pytest.approx(delta @ delta, rel=1e-9)


def test_symmetric_in_its_arguments():
    rng = np.random.default_rng(2)
    m1, m2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = _random_spd(rng, 6, 100.0), _random_spd(rng, 6, 3.0)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(frechet_distance(m2, s2, m1, s1), rel=1e-12)


def test_commuting_covariances_closed_form():
    # Diagonal S1 = diag(a), S2 = diag(b): d^2 = ||dmu||^2 + sum (sqrt(a) - sqrt(b))^2,
    # and the same after a common rotation (they still commute).
    rng = np.random.default_rng(3)
    a, b = rng.uniform(0.1, 4.0, 7), rng.uniform(0.1, 4.0, 7)
    m1, m2 = rng.normal(size=7), rng.normal(size=7)
    want = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(want, rel=1e-12)
    q, _ = np.linalg.qr(rng.normal(size=(7, 7)))
    got = frechet_distance(q @ m1, q @ np.diag(a) @ q.T, q @ m2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(want, rel=1e-10)
    # one dimension: (sigma1 - sigma2)^2 + (mu1 - mu2)^2
    assert frechet_distance(1.0, 4.0, -1.0, 9.0) == pytest.approx(4.0 + 1.0, rel=1e-14)


def test_matches_an_eigendecomposition_of_the_product_on_random_spd():
    """tr sqrt(S1 S2) from the general (non-symmetric) eigendecomposition of S1 S2 itself:
    S1 S2 = V diag(w) V^-1 is similar to S1^1/2 S2 S1^1/2, so its eigenvalues are real and
    >= 0 and tr sqrt(S1 S2) = sum_i sqrt(w_i); refgen takes two symmetric eigh instead."""
    rng = np.random.default_rng(4)
    for d in (2, 10, 40):
        m1, m2 = rng.normal(size=d), rng.normal(size=d)
        s1, s2 = _random_spd(rng, d, 50.0), _random_spd(rng, d, 5.0)
        w, v = np.linalg.eig(s1 @ s2)
        assert np.abs(w.imag).max() < 1e-9 * np.abs(w).max() and w.real.min() > 0
        covmean = (v * np.sqrt(w.real)) @ np.linalg.inv(v)
        np.testing.assert_allclose(np.real(covmean @ covmean), s1 @ s2, rtol=1e-8, atol=1e-8)
        want = np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real
        assert frechet_distance(m1, s1, m2, s2) == pytest.approx(want, rel=1e-8)


def test_rank_deficient_features_give_finite_nonnegative_value():
    rng = np.random.default_rng(5)
    d, rank = 32, 5
    basis = rng.normal(size=(rank, d))
    f1 = rng.normal(size=(200, rank)) @ basis                          # rank 5 in 32 dims
    f2 = rng.normal(size=(20, d))                                      # fewer samples than dims
    for a, b in [(f1, f1), (f1, f2), (f2, f1), (f2, f2), (f1, f1 + 0.5)]:
        v = frechet_distance_from_features(a, b)
        assert np.isfinite(v) and v >= 0.0
    assert frechet_distance_from_features(f1, f1 + 0.5) == pytest.approx(0.25 * d, rel=1e-8)
    s = gaussian_stats(f1)[1]
    assert frechet_distance(np.zeros(d), s, np.zeros(d), s) <= 1e-8 * np.trace(s)


def test_gaussian_stats_unbiased_and_float64():
    rng = np.random.default_rng(6)
    f = rng.normal(size=(50, 3)).astype(np.float32)
    mu, sigma = gaussian_stats(f)
    assert mu.dtype == sigma.dtype == np.float64 and sigma.shape == (3, 3)
    np.testing.assert_allclose(mu, f.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f.astype(np.float64), rowvar=False, ddof=1), rtol=1e-12)


def test_features_from_same_distribution_approach_zero():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(20000, 4)), rng.normal(size=(20000, 4))
    assert frechet_distance_from_features(a, b) < 5e-3
    assert frechet_distance_from_features(a, b + 1.0) == pytest.approx(4.0, rel=0.02)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.zeros(2), np.full((2, 2), np.nan), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="dimensions"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="N >= 2"):
        gaussian_stats(np.zeros((1, 3)))
