"""ActNorm: the closed-form log-determinant and the data-dependent initialisation."""
import numpy as np
import pytest

from refgen.autograd import Tensor
from refgen.backend import to_numpy
from refgen.models.flows import ActNorm


@pytest.mark.parametrize("shape", [(3,), (3, 4, 5)])
def test_logdet_is_pixels_times_sum_of_log_scales(shape, fl):
    layer = fl.randomize(ActNorm(shape).double(), seed=3)
    x = np.random.default_rng(0).standard_normal((2,) + shape)
    _, logdet = fl.forward(layer, x)
    log_s = to_numpy(layer.log_s.data).reshape(-1)
    hw = int(np.prod(shape[1:]))
    np.testing.assert_allclose(logdet, hw * np.log(np.abs(np.exp(log_s))).sum(), rtol=1e-12)


@pytest.mark.parametrize("shape", [(3,), (3, 4, 5)])
def test_data_dependent_init_standardises_each_channel(shape):
    rng = np.random.default_rng(1)
    scale = np.array([0.1, 2.0, 7.0]).reshape((3,) + (1,) * (len(shape) - 1))
    x = 5.0 + scale * rng.standard_normal((64,) + shape)
    layer = ActNorm(shape).double()
    assert not bool(layer.initialized)
    y, _ = layer(Tensor(x))                      # first training-mode forward initialises
    y = to_numpy(y.data)
    axes = (0,) + tuple(range(2, y.ndim))
    np.testing.assert_allclose(y.mean(axis=axes), 0.0, atol=1e-10)
    np.testing.assert_allclose(y.var(axis=axes), 1.0, rtol=1e-4)  # eps = 1e-6 next to std
    assert bool(layer.initialized)
    # later batches use the learned parameters as they are
    before = to_numpy(layer.log_s.data).copy()
    layer(Tensor(x[:8] * 3.0))
    np.testing.assert_array_equal(to_numpy(layer.log_s.data), before)


def test_no_initialisation_in_eval_mode_and_flag_survives_a_checkpoint():
    x = Tensor(np.random.default_rng(2).standard_normal((16, 3)) * 4.0)
    layer = ActNorm((3,)).double().eval()
    y, _ = layer(x)
    np.testing.assert_array_equal(to_numpy(y.data), to_numpy(x.data))   # identity, untouched
    layer.train()
    layer(x)
    fresh = ActNorm((3,)).double()
    fresh.load_state_dict(layer.state_dict())
    assert bool(fresh.initialized)
    np.testing.assert_array_equal(to_numpy(fresh(x)[0].data), to_numpy(layer(x)[0].data))
