"""KID against a double loop over pairs, a leave-out recomputation of its jackknife, its
closed form for two Gaussians, and its statistics over repeated samples (unbiased at every N,
an honest standard error)."""
import numpy as np
import pytest

from refgen.metrics import kid
from refgen.metrics.kernel_distance import polynomial_kernel


def _k(a, b):
    return (float(np.dot(a, b)) / len(a) + 1.0) ** 3


def _kid_loops(x, y):
    """The unbiased MMD^2 estimator, one kernel value at a time."""
    m, n = len(x), len(y)
    kxx = sum(_k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    kyy = sum(_k(y[i], y[j]) for i in range(n) for j in range(n) if i != j)
    kxy = sum(_k(x[i], y[j]) for i in range(m) for j in range(n))
    return kxx / (m * (m - 1)) + kyy / (n * (n - 1)) - 2.0 * kxy / (m * n)


def test_polynomial_kernel_values():
    a, b = np.array([[1.0, 2.0, -0.5]]), np.array([[0.3, -1.0, 2.0], [4.0, 0.0, 1.0]])
    np.testing.assert_allclose(polynomial_kernel(a, b),
                               [[(-2.7 / 3 + 1) ** 3, (3.5 / 3 + 1) ** 3]], rtol=1e-12)


@pytest.mark.parametrize("m,n,subsets", [(7, 5, 2), (9, 9, 3), (12, 8, 50)])
def test_equals_a_double_loop_over_pairs(m, n, subsets):
    rng = np.random.default_rng(m + n)
    x = rng.normal(0.3, 1.2, size=(m, 3))
    y = rng.normal(-0.2, 0.8, size=(n, 3))
    value, _ = kid(x, y, n_subsets=subsets, rng=1)
    assert value == pytest.approx(_kid_loops(x, y), rel=1e-12, abs=1e-12)
    assert kid(x, y, n_subsets=subsets, rng=7)[0] == pytest.approx(value, rel=1e-12)  # subsets: s.e. only


def test_standard_error_is_the_delete_a_subset_jackknife():
    """Subsets are the contiguous slices of a permutation of each side drawn from ``rng``;
    leave each subset pair out, recompute KID by the double loop, and take the jackknife."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(11, 2)), rng.normal(0.5, 1.0, size=(8, 2))
    b = 4
    _, se = kid(x, y, n_subsets=b, rng=5)
    gen = np.random.default_rng(5)
    gx = np.array_split(gen.permutation(len(x)), b)
    gy = np.array_split(gen.permutation(len(y)), b)
    theta = np.array([_kid_loops(np.delete(x, gx[g], axis=0), np.delete(y, gy[g], axis=0))
                      for g in range(b)])
    assert se == pytest.approx(np.sqrt((b - 1) / b * ((theta - theta.mean()) ** 2).sum()), rel=1e-10)


def _kernel_mean(mu1, s1, mu2, s2):
    """E k(x, y) for independent x ~ N(mu1, s1), y ~ N(mu2, s2), k = (x.y/d + 1)^3:
    expand the cube and use the moments of z = x.y,
        E z   = mu1.mu2 = b
        E z^2 = tr(M1 M2),  M = S + mu mu^T
        E z^3 = b^3 + 3 b mu2'S1 mu2 + 3 b (mu1'S2 mu1 + tr(S1 S2)) + 6 mu1'S2 S1 mu2
    (given x, z ~ N(x.mu2, x'S2 x), so E[z^3 | x] = (x.mu2)^3 + 3 (x.mu2) x'S2 x)."""
    d = len(mu1)
    b = mu1 @ mu2
    ez2 = np.trace((s1 + np.outer(mu1, mu1)) @ (s2 + np.outer(mu2, mu2)))
    ez3 = (b ** 3 + 3 * b * (mu2 @ s1 @ mu2) + 3 * b * (mu1 @ s2 @ mu1 + np.trace(s1 @ s2))
           + 6 * mu1 @ s2 @ s1 @ mu2)
    return 1.0 + 3.0 * b / d + 3.0 * ez2 / d ** 2 + ez3 / d ** 3


def _gaussians():
    mu1, mu2 = np.array([0.4, -0.3, 0.9]), np.array([-0.2, 0.5, 0.6])
    a1 = np.array([[1.0, 0.3, 0.0], [0.0, 0.7, -0.4], [0.2, 0.0, 1.2]])
    a2 = np.array([[0.6, 0.0, 0.1], [0.5, 1.1, 0.0], [0.0, -0.3, 0.8]])
    return mu1, a1 @ a1.T, mu2, a2 @ a2.T, a1, a2


def test_kernel_mean_closed_form_against_monte_carlo():
    """The oracle of the next test, checked on a million independent pairs."""
    mu1, s1, mu2, s2, a1, a2 = _gaussians()
    rng = np.random.default_rng(0)
    x = mu1 + rng.standard_normal((1_000_000, 3)) @ a1.T
    y = mu2 + rng.standard_normal((1_000_000, 3)) @ a2.T
    k = (np.einsum("ij,ij->i", x, y) / 3 + 1.0) ** 3
    assert abs(k.mean() - _kernel_mean(mu1, s1, mu2, s2)) < 4 * k.std() / 1e3


def test_matches_closed_form_mmd_of_two_gaussians():
    mu1, s1, mu2, s2, a1, a2 = _gaussians()
    exact = (_kernel_mean(mu1, s1, mu1, s1) + _kernel_mean(mu2, s2, mu2, s2)
             - 2.0 * _kernel_mean(mu1, s1, mu2, s2))
    rng = np.random.default_rng(1)
    x = mu1 + rng.standard_normal((4000, 3)) @ a1.T
    y = mu2 + rng.standard_normal((4000, 3)) @ a2.T
    value, se = kid(x, y)
    assert se < 0.1 * exact                       # the comparison below has power
    assert abs(value - exact) < 4 * se, (value, exact, se)


def _repeats(n, shift, r=200, d=8, seed=0):
    rng = np.random.default_rng(seed)
    a = np.diag(np.linspace(0.5, 1.5, d))
    out = [kid(0.3 + rng.standard_normal((n, d)) @ a,
               0.3 + shift + rng.standard_normal((n, d)) @ a, rng=rng) for _ in range(r)]
    return np.array(out)                          # (r, 2): kid, se


def test_unbiased_for_equal_distributions_and_se_conservative_there():
    v = _repeats(300, 0.0)
    assert abs(v[:, 0].mean()) < 3 * np.sqrt((v[:, 1] ** 2).mean() / len(v))
    assert abs(v[:, 0].mean()) < 3 * v[:, 0].std() / np.sqrt(len(v))
    assert (v[:, 0] < 0).mean() > 0.3             # single estimates scatter around 0
    ratio = v[:, 1].mean() / v[:, 0].std()        # jackknife of a degenerate U-statistic
    assert 1.1 < ratio < 1.8, ratio


def test_positive_for_different_distributions_and_se_matches_spread():
    v = _repeats(300, 0.3)
    assert v[:, 0].mean() > 10 * v[:, 0].std() / np.sqrt(len(v))
    assert (v[:, 0] > 2 * v[:, 1]).mean() > 0.9
    ratio = v[:, 1].mean() / v[:, 0].std()
    assert 0.8 < ratio < 1.25, ratio


def test_fair_at_small_n():
    """The mean over repeats is the same at N = 20 and N = 300: no small-sample bias."""
    small, large = _repeats(20, 0.3, r=400, seed=1), _repeats(300, 0.3, r=100, seed=2)
    se = np.hypot(small[:, 0].std() / np.sqrt(len(small)), large[:, 0].std() / np.sqrt(len(large)))
    assert abs(small[:, 0].mean() - large[:, 0].mean()) < 3 * se
    assert small[:, 0].std() > 3 * large[:, 0].std()   # ... only noisier


def test_bad_input():
    x = np.zeros((5, 3))
    with pytest.raises(ValueError, match="dimensions"):
        kid(x, np.zeros((5, 4)))
    with pytest.raises(ValueError, match="at least 3"):
        kid(x[:2], x)
    with pytest.raises(ValueError, match="NaN"):
        kid(np.full((5, 3), np.nan), x)
    with pytest.raises(ValueError, match="n_subsets"):
        kid(x, x, n_subsets=1)
