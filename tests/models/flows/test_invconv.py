"""Invertible 1x1 convolutions: log-det = H W log|det W|, and the LU form is the same map."""
import numpy as np
import pytest

from refgen.backend import to_numpy
from refgen.models.flows import InvConv1x1, InvConv1x1LU
from refgen.models.flows.invconv import lu_decompose, random_rotation


def test_lu_decompose_reconstructs_with_triangular_factors():
    w = np.random.default_rng(0).standard_normal((5, 5))
    p, lower, upper = (np.asarray(a) for a in lu_decompose(w))
    np.testing.assert_allclose(p @ lower @ upper, w, atol=1e-12)
    np.testing.assert_array_equal(np.sort(p, axis=None), np.r_[np.zeros(20), np.ones(5)])
    np.testing.assert_allclose(p @ p.T, np.eye(5))
    np.testing.assert_allclose(np.diag(lower), 1.0)
    assert np.allclose(np.triu(lower, 1), 0) and np.allclose(np.tril(upper, -1), 0)


def test_random_rotation_is_orthogonal():
    q = np.asarray(random_rotation(6, rng=3, dtype=np.float64))
    np.testing.assert_allclose(q @ q.T, np.eye(6), atol=1e-12)


@pytest.mark.parametrize("shape", [(4,), (4, 3, 2)])
def test_plain_logdet_is_pixels_times_log_abs_det_w(shape, fl):
    layer = fl.randomize(InvConv1x1(shape).double(), seed=1)
    w = to_numpy(layer.weight.data)
    x = np.random.default_rng(0).standard_normal((2,) + shape)
    y, logdet = fl.forward(layer, x)
    hw = int(np.prod(shape[1:]))
    np.testing.assert_allclose(logdet, hw * np.linalg.slogdet(w)[1], rtol=1e-12)
    # the map is W applied to the channel vector at every pixel
    expect = np.einsum("ij,bj...->bi...", w, x)
    np.testing.assert_allclose(y, expect, atol=1e-12)


@pytest.mark.parametrize("shape", [(4,), (4, 3, 2)])
def test_lu_gives_the_plain_map_and_logdet(shape, fl):
    x = np.random.default_rng(0).standard_normal((3,) + shape)
    # same seed: the LU layer starts from the LU factors of the plain layer's rotation
    plain, lu = InvConv1x1(shape, rng=5).double(), InvConv1x1LU(shape, rng=5).double()
    for a, b in zip(fl.forward(plain, x), fl.forward(lu, x)):
        np.testing.assert_allclose(a, b, atol=1e-6)  # the float32 rotation vs its float64 LU
    # after training moves the LU parameters: the plain layer holding W = P L U agrees
    fl.randomize(lu, seed=2, scale=0.5)
    plain.weight.data = lu.weight().data.copy()
    for a, b in zip(fl.forward(plain, x), fl.forward(lu, x)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
    hw = int(np.prod(shape[1:]))
    np.testing.assert_allclose(fl.forward(lu, x)[1], hw * to_numpy(lu.log_s.data).sum(), rtol=1e-12)
