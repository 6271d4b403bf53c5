"""Couplings and masks: NICE's log-det is exactly 0, the kept half passes through, the
masks have the shapes and patterns the architectures rely on."""
import numpy as np
import pytest

from refgen.models.flows import (AdditiveCoupling, AffineCoupling, DiagonalScaling,
                                 channel_mask, checkerboard_mask)
from refgen.models.flows.nets import ConvNet, MLP
from refgen.testing import on_backend



@on_backend("numpy")  # compares with NumPy in float64 / finite differences: run there
def test_masks():
    np.testing.assert_array_equal(checkerboard_mask((4,)), [0, 1, 0, 1])
    np.testing.assert_array_equal(checkerboard_mask((4,), 1), [1, 0, 1, 0])
    np.testing.assert_array_equal(channel_mask((4,)), [1, 1, 0, 0])
    board = np.asarray(checkerboard_mask((2, 3, 3)))
    assert board.shape == (2, 3, 3) and (board[0] == board[1]).all()
    np.testing.assert_array_equal(board[0], [[0, 1, 0], [1, 0, 1], [0, 1, 0]])
    ch = np.asarray(channel_mask((4, 2, 2), 1))
    assert (ch[:2] == 0).all() and (ch[2:] == 1).all()
    with pytest.raises(ValueError, match="at least 2 channels"):
        channel_mask((1, 4, 4))


@pytest.mark.parametrize("shape,net", [((4,), lambda: MLP(4, 4, (8,), rng=0)),
                                       ((1, 4, 4), lambda: ConvNet(1, 1, 4, rng=0))])
def test_additive_coupling_preserves_volume(shape, net, fl):
    layer = fl.randomize(AdditiveCoupling(checkerboard_mask(shape), net()).double())
    x = np.random.default_rng(0).standard_normal((5,) + shape)
    y, logdet = fl.forward(layer, x)
    np.testing.assert_array_equal(logdet, 0.0)
    np.testing.assert_allclose(np.linalg.slogdet(fl.jacobian(lambda t: layer(t)[0], x[0]))[1],
                               0.0, atol=1e-12)
    m = np.asarray(checkerboard_mask(shape), dtype=bool)
    np.testing.assert_array_equal(y[:, m], x[:, m])                 # kept half unchanged
    assert not np.allclose(y[:, ~m], x[:, ~m])


@on_backend("numpy")  # compares with NumPy in float64 / finite differences: run there
def test_affine_coupling_logdet_is_the_sum_of_log_scales_on_the_changed_half(fl):
    layer = fl.randomize(AffineCoupling(channel_mask((4, 2, 2)), ConvNet(4, 8, 4, rng=0)).double())
    x = np.random.default_rng(1).standard_normal((3, 4, 2, 2))
    y, logdet = fl.forward(layer, x)
    np.testing.assert_array_equal(y[:, :2], x[:, :2])
    from refgen.autograd import Tensor
    log_s, _ = layer._scale_shift(Tensor(x * np.asarray(channel_mask((4, 2, 2)))))
    np.testing.assert_allclose(logdet, log_s.data.reshape(3, -1).sum(1), rtol=1e-12)
    assert np.all(log_s.data[:, :2] == 0)


@on_backend("numpy")  # compares with NumPy in float64 / finite differences: run there
def test_a_fresh_coupling_is_the_identity():
    # zero-initialised last layer: s = t = 0, the flow starts at its base density
    layer = AffineCoupling(checkerboard_mask((2,)), MLP(2, 4, (8,), rng=0)).double()
    x = np.random.default_rng(0).standard_normal((4, 2))
    from refgen.autograd import Tensor
    y, ld = layer(Tensor(x))
    np.testing.assert_array_equal(y.data, x)
    np.testing.assert_array_equal(ld.data, 0.0)


def test_diagonal_scaling_logdet_is_sum_of_s(fl):
    layer = fl.randomize(DiagonalScaling((1, 3, 3)).double())
    x = np.random.default_rng(0).standard_normal((2, 1, 3, 3))
    _, logdet = fl.forward(layer, x)
    np.testing.assert_allclose(logdet, np.asarray(layer.s.data).sum(), rtol=1e-12)
