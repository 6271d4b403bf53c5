"""Discrete draws and the level grid: frequencies against the distribution they claim to
draw from, and the grid map against its formula."""
import numpy as np

import refgen.functional as F
from refgen.autograd import Tensor
from refgen.backend import asarray, default_rng, to_numpy
from refgen.testing import check_grads, on_backend


def test_gumbel_max_draws_the_softmax_categories():
    logits = asarray(np.array([[np.log(0.1), np.log(0.6), np.log(0.3), -np.inf]]) + 2.0)
    k = to_numpy(F.gumbel_max(asarray(np.repeat(to_numpy(logits), 60000, 0)), default_rng(0)))
    freq = np.bincount(k, minlength=4) / k.size
    # 4 standard errors of a proportion near 0.6 with n = 60000 is 0.008
    np.testing.assert_allclose(freq, [0.1, 0.6, 0.3, 0.0], atol=0.008)


def test_gumbel_max_axis_and_the_rng_stream():
    lg = asarray(np.random.default_rng(0).standard_normal((3, 5, 2)))
    assert F.gumbel_max(lg, default_rng(1), axis=1).shape == (3, 2)
    a, b = F.gumbel_max(lg, default_rng(7)), F.gumbel_max(lg, default_rng(7))
    np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_bernoulli_logits_frequency_and_dtype():
    lg = np.array([-2.0, 0.0, 1.5, 800.0, -800.0])
    b = to_numpy(F.bernoulli_logits(asarray(np.tile(lg, (40000, 1))), default_rng(0), np.float32))
    assert b.dtype == np.float32 and set(np.unique(b)) <= {0.0, 1.0}
    np.testing.assert_allclose(b.mean(0), 0.5 + 0.5 * np.tanh(lg / 2), atol=0.01)  # 4 s.e. < 0.01


def test_levels_round_trip_and_formula():
    for levels in (2, 5, 256):
        k = np.arange(levels)
        x = to_numpy(F.from_levels(asarray(k), levels, np.float64))
        np.testing.assert_allclose(x, 2 * k / (levels - 1) - 1, rtol=1e-15, atol=1e-15)
        np.testing.assert_array_equal(to_numpy(F.to_levels(asarray(x), levels)), k)
    # nearest grid point, clipped to the range
    got = to_numpy(F.to_levels(asarray(np.array([-1.3, -0.49, -0.2, 0.26, 0.6, 2.0])), 5))
    np.testing.assert_array_equal(got, [0, 1, 2, 3, 3, 4])
    assert to_numpy(F.from_levels(asarray(np.array([1])), 5)).dtype == np.float32


def test_sum_except_batch():
    x = np.random.default_rng(0).standard_normal((3, 2, 4, 5))
    np.testing.assert_allclose(to_numpy(F.sum_except_batch(Tensor(asarray(x))).data),
                               x.reshape(3, -1).sum(1), rtol=1e-13)
    v = np.array([1.5, -2.0])
    np.testing.assert_array_equal(to_numpy(F.sum_except_batch(Tensor(asarray(v))).data), v)


@on_backend("numpy")
def test_sum_except_batch_gradcheck():
    check_grads(F.sum_except_batch, [np.random.default_rng(1).standard_normal((2, 3, 2))], order=2)
