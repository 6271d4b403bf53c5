"""BatchNorm and spectral norm: values against NumPy, gradients and gradients of gradients
against finite differences, running statistics and power-iteration state in the state dict."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import refgen.functional as F
from refgen import nn
from refgen.autograd import Tensor
from refgen.nn.normalization import batch_norm
from refgen.testing import check_forward, check_grads

pytestmark = pytest.mark.usefixtures("numpy_backend")  # finite differences: float64 NumPy
f64 = np.float64


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape) * 1.7 + 0.4


def bn_ref(x, gamma, beta, eps=1e-5):
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mu, var = x.mean(axes, keepdims=True), x.var(axes, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * gamma.reshape(shape) + beta.reshape(shape)


@given(shape=st.sampled_from([(4, 3), (5, 2), (3, 2, 2, 3), (2, 3, 3, 2)]), seed=st.integers(0, 99))
def test_batch_norm_training_values_gradients_and_double_backward(shape, seed):
    x = _x(shape, seed)
    c = shape[1]
    gamma, beta = 0.5 + np.arange(c) * 0.7, np.linspace(-1.0, 0.3, c)

    def f(x, g, b):
        return batch_norm(x, None, None, g, b, training=True)

    check_forward(f, lambda x, g, b: bn_ref(x, g, b), [x, gamma, beta], rtol=1e-10, atol=1e-10)
    check_grads(f, [x, gamma, beta], order=2, rng=np.random.default_rng(seed))


def test_running_statistics_update_and_eval_mode():
    bn = nn.BatchNorm(3, momentum=0.25, dtype=f64)
    x = _x((6, 3, 2, 2), 1)
    bn(Tensor(x))
    mu = x.mean((0, 2, 3))
    var_unbiased = x.var((0, 2, 3), ddof=1)                   # n = 24 values per channel
    np.testing.assert_allclose(bn.running_mean, 0.25 * mu, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, 0.75 + 0.25 * var_unbiased, rtol=1e-12)
    x1 = _x((6, 3, 2, 2), 7)                                   # a second update averages
    bn(Tensor(x1))
    np.testing.assert_allclose(bn.running_mean, 0.75 * 0.25 * mu + 0.25 * x1.mean((0, 2, 3)),
                               rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, 0.75 * (0.75 + 0.25 * var_unbiased)
                               + 0.25 * x1.var((0, 2, 3), ddof=1), rtol=1e-12)
    bn.weight.data = np.array([2.0, -1.0, 0.5])
    bn.bias.data = np.array([0.1, 0.2, -0.3])
    bn.eval()
    x2 = _x((4, 3, 2, 2), 2)
    y = bn(Tensor(x2)).data
    shape = (1, 3, 1, 1)
    want = ((x2 - bn.running_mean.reshape(shape)) / np.sqrt(bn.running_var.reshape(shape) + 1e-5)
            * bn.weight.data.reshape(shape) + bn.bias.data.reshape(shape))
    np.testing.assert_allclose(y, want, rtol=1e-12)
    before = bn.running_mean.copy()
    bn(Tensor(x2))
    np.testing.assert_array_equal(bn.running_mean, before)  # eval never moves the statistics
    # eval mode is an affine map of x: check its gradients too
    check_grads(lambda x: bn(x), [x2], order=2)


def test_running_statistics_are_saved_and_loaded():
    bn = nn.BatchNorm(2, dtype=f64)
    bn(Tensor(_x((5, 2), 3)))
    state = {k: np.array(v) for k, v in bn.state_dict().items()}
    assert set(state) == {"weight", "bias", "running_mean", "running_var"}
    other = nn.BatchNorm(2, dtype=f64)
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.running_var, bn.running_var)
    assert not np.array_equal(other.running_var, np.ones(2))


def test_batch_norm_refuses_bad_input():
    with pytest.raises(ValueError, match=r"expected \(B, 3"):
        nn.BatchNorm(3)(Tensor(np.zeros((4, 2), np.float32)))
    with pytest.raises(ValueError, match="more than one value per channel"):
        nn.BatchNorm(3)(Tensor(np.zeros((1, 3), np.float32)))


@pytest.mark.parametrize("make", [lambda: nn.Linear(5, 4, rng=0, dtype=f64),
                                  lambda: nn.Conv2d(2, 3, 3, padding=1, rng=0, dtype=f64)])
def test_spectral_norm_reaches_the_top_singular_value(make):
    layer = make()
    sn = nn.spectral_norm(layer, rng=1)
    x = Tensor(_x((2, 5) if isinstance(layer, nn.Linear) else (2, 2, 4, 4), 4))
    for _ in range(60):                                        # power iteration converges
        sn(x)
    w = layer.weight.data.reshape(layer.weight.shape[0], -1)
    top = np.linalg.svd(w, compute_uv=False)[0]
    assert sn.sigma().item() == pytest.approx(top, rel=1e-8)
    w_sn = w / sn.sigma().item()
    assert np.linalg.svd(w_sn, compute_uv=False)[0] == pytest.approx(1.0, rel=1e-8)
    # the wrapped layer computes the layer's own op with W / sigma
    ref = (F.linear(x, Tensor(layer.weight.data / top), layer.bias) if isinstance(layer, nn.Linear)
           else F.conv2d(x, Tensor(layer.weight.data / top), layer.bias, padding=1))
    np.testing.assert_allclose(sn(x).data, ref.data, rtol=1e-7)
    assert {"u", "v", "layer.weight"} <= set(sn.state_dict())


def test_spectral_norm_gradients_with_u_v_fixed():
    """In eval mode u and v are fixed, sigma = u^T W v: check d/dW and d/dx, twice."""
    layer = nn.Linear(4, 3, rng=2, dtype=f64)
    sn = nn.spectral_norm(layer, rng=3)
    for _ in range(3):
        sn(Tensor(_x((2, 4), 5)))
    sn.eval()
    w0, b0 = layer.weight.data.copy(), layer.bias.data.copy()

    def f(x, w):
        saved = layer._parameters["weight"]
        layer._parameters["weight"] = w            # route the graph through the input w
        try:
            return F.tanh(sn(x))
        finally:
            layer._parameters["weight"] = saved

    check_grads(f, [_x((3, 4), 6), w0], order=2)
    np.testing.assert_array_equal(layer.bias.data, b0)
