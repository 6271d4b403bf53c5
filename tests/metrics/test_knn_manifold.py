"""Improved precision and recall: a point-by-point reference, a configuration worked by hand,
and the cases whose answers are known (identical sets, half the modes, far away)."""
import numpy as np
import pytest

from refgen.metrics import precision_recall
from refgen.metrics.knn_manifold import in_manifold, knn_radii


def _reference(gen, real, k):
    """Kynkaanniemi et al.'s definition, one point at a time."""
    def radii(p):
        return np.array([np.sort(np.linalg.norm(np.delete(p, i, axis=0) - p[i], axis=1))[k - 1]
                         for i in range(len(p))])

    def inside(q, p, r):
        return np.array([any(np.linalg.norm(q[i] - p[j]) <= r[j] for j in range(len(p)))
                         for i in range(len(q))])
    return inside(gen, real, radii(real)).mean(), inside(real, gen, radii(gen)).mean()


@pytest.mark.parametrize("k,chunk", [(1, 500), (2, 4), (5, 1), (3, 7)])
def test_equals_the_definition_point_by_point(k, chunk):
    rng = np.random.default_rng(k)
    # each side has a cluster the other lacks: both values strictly inside (0, 1)
    real = np.concatenate([rng.normal(size=(12, 4)), rng.normal(-4.0, 0.5, size=(5, 4))])
    gen = np.concatenate([rng.normal(0.3, 1.2, size=(15, 4)), rng.normal(4.0, 0.5, size=(8, 4))])
    p, r = precision_recall(gen, real, k=k, chunk=chunk)
    p_ref, r_ref = _reference(gen, real, k)
    assert 0 < p_ref < 1 and 0 < r_ref < 1
    assert (p, r) == (pytest.approx(p_ref, abs=1e-12), pytest.approx(r_ref, abs=1e-12))


def test_a_configuration_worked_by_hand():
    """1-D. Real 0, 1, 3, 7 with k = 2: the second-nearest distances are 3, 2, 3, 6, so the
    real manifold is [-3, 3] u [-1, 3] u [0, 6] u [1, 13] = [-3, 13]. Generated 6, 6.5, 7.5
    (a tight cluster) and 20, 21, 22.5: radii 1.5, 1, 1.5, 2.5, 1.5, 2.5, manifold
    [4.5, 9] u [17.5, 25]. Precision: 3 of 6 inside [-3, 13]; recall: only 7 of the 4 real."""
    real = np.array([[0.0], [1.0], [3.0], [7.0]])
    gen = np.array([[6.0], [6.5], [7.5], [20.0], [21.0], [22.5]])
    np.testing.assert_allclose(knn_radii(real, k=2), [3.0, 2.0, 3.0, 6.0], rtol=1e-12)
    np.testing.assert_allclose(knn_radii(gen, k=2), [1.5, 1.0, 1.5, 2.5, 1.5, 2.5], rtol=1e-12)
    assert precision_recall(gen, real, k=2) == (0.5, 0.25)
    radii = knn_radii(real, k=2)
    # the ball's edge counts as inside (<=): 13 = 7 + 6 is in, just beyond is out
    np.testing.assert_array_equal(in_manifold([[13.0], [13.001], [-3.0], [-3.001]], real, radii),
                                  [True, False, True, False])


@pytest.mark.parametrize("k", [1, 3, 6])
def test_identical_sets_give_one_and_one(k):
    x = np.random.default_rng(k).normal(size=(300, 10))
    assert precision_recall(x, x.copy(), k=k) == (1.0, 1.0)


@pytest.mark.parametrize("k", [3, 7])
def test_half_of_the_modes_exactly(k):
    """Generated = the real points of 5 of 10 far-apart clusters: every generated point is a
    real one (precision 1), and exactly the real points of those 5 clusters are covered."""
    rng = np.random.default_rng(0)
    centres = 50.0 * rng.normal(size=(10, 6))
    label = np.arange(1000) % 10
    real = centres[label] + rng.normal(size=(1000, 6))
    gen = real[label < 5]
    assert precision_recall(gen, real, k=k) == (1.0, 0.5)


@pytest.mark.parametrize("k", [3, 5])
def test_half_of_the_modes_fresh_samples(k):
    """Fresh draws from 5 of 10 modes (2-D): precision about 1, recall about 0.5."""
    rng = np.random.default_rng(k)
    centres = 20.0 * rng.normal(size=(10, 2))
    real = centres[np.arange(2000) % 10] + rng.normal(size=(2000, 2))
    gen = centres[np.arange(2000) % 5] + rng.normal(size=(2000, 2))
    p, r = precision_recall(gen, real, k=k)
    assert p > 0.95 and 0.46 < r <= 0.5, (p, r)


@pytest.mark.parametrize("k", [2, 3])
def test_far_away_gives_zero_and_zero(k):
    x = np.random.default_rng(0).normal(size=(200, 5))
    assert precision_recall(x + 100.0, x, k=k) == (0.0, 0.0)


def test_bad_input():
    x = np.zeros((5, 3))
    with pytest.raises(ValueError, match="k must be"):
        precision_recall(x, x, k=5)
    with pytest.raises(ValueError, match="k must be"):
        precision_recall(x, x, k=0)
    with pytest.raises(ValueError, match=r"\(M, d\) and \(N, d\)"):
        precision_recall(x, np.zeros((5, 4)))
    with pytest.raises(ValueError, match="NaN"):
        precision_recall(np.full((5, 3), np.inf), x)


def test_default_k_is_three_as_in_the_paper():
    rng = np.random.default_rng(4)
    real = np.concatenate([rng.normal(size=(40, 3)), rng.normal(-3.0, 0.5, size=(10, 3))])
    gen = np.concatenate([rng.normal(0.3, 1.2, size=(40, 3)), rng.normal(3.0, 0.5, size=(10, 3))])
    by_k = {k: precision_recall(gen, real, k=k) for k in (2, 3, 4)}
    assert len(set(by_k.values())) == 3               # k matters for these sets
    assert precision_recall(gen, real) == by_k[3]
