"""The U-Net and the MLP denoiser: shapes, conditioning, and gradients against finite
differences on a tiny float64 configuration."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refgen.autograd import Tensor
from refgen.backend import to_numpy
from refgen.nn import MLPDenoiser
from refgen.nn import UNet, default_channel_mult, timestep_embedding
from refgen.testing import check_vjp


def _randomize(module, seed, scale=0.3):
    """Random weights everywhere (the output convolutions start at zero, which would make
    every input gradient trivially zero)."""
    rng = np.random.default_rng(seed)
    for p in module.parameters():
        p.data = rng.normal(0.0, scale, p.shape).astype(p.dtype)
    return module


def test_channel_mult_by_size():
    assert default_channel_mult(28) == (1, 2, 2)
    assert default_channel_mult(14) == (1, 2)
    assert default_channel_mult(32) == (1, 2, 2)


@pytest.mark.parametrize("size,mult", [(28, None), (14, None), (8, (1, 2))])
def test_unet_output_shape(size, mult):
    net = UNet(1, 2, size, channels=8, channel_mult=mult, num_res_blocks=1, num_classes=10, rng=0)
    x = Tensor(np.zeros((2, 1, size, size), np.float32))
    y = net(x, np.array([1, 999]), np.array([3, 10]))          # label 10: the null label
    assert y.shape == (2, 2, size, size) and y.dtype == np.float32
    assert np.all(y.data == 0.0)                                 # the output conv starts at zero


@settings(max_examples=3)
@given(seed=st.integers(0, 1000))
def test_unet_input_gradient(seed):
    net = _randomize(UNet(1, 2, 4, channels=4, channel_mult=(1, 2), num_res_blocks=1,
                          attn_res=(2,), heads=2, groups=2, num_classes=3, rng=seed,
                          dtype=np.float64), seed)
    t, y = np.array([3, 70]), np.array([0, 3])
    x = np.random.default_rng(seed).standard_normal((2, 1, 4, 4))
    check_vjp(lambda xx: net(xx, t, y), [x])


def test_unet_parameter_gradients_exist():
    net = UNet(1, 1, 8, channels=8, channel_mult=(1, 2), num_res_blocks=1, rng=0)
    x = Tensor(np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32))
    r = Tensor(np.random.default_rng(1).standard_normal((2, 1, 8, 8)).astype(np.float32))
    (net(x, np.array([5, 500])) * r).sum().backward()
    # the zero-initialised output conv gets a gradient (and passes one back once it is not
    # zero: test_unet_input_gradient)
    assert np.any(net.conv_out.weight.grad.data != 0)
    assert all(p.grad is not None for p in net.parameters())


def test_mlp_denoiser_gradient():
    net = _randomize(MLPDenoiser(2, 2, hidden=8, depth=2, num_classes=2, rng=0, dtype=np.float64), 0)
    x = np.random.default_rng(1).standard_normal((5, 2))
    check_vjp(lambda xx: net(xx, np.arange(1, 6), np.array([0, 1, 2, 0, 1])), [x])


def test_timestep_embedding():
    e = to_numpy(timestep_embedding(np.array([0, 1, 500]), 16))
    assert e.shape == (3, 16)
    np.testing.assert_allclose(e[0], np.r_[np.ones(8), np.zeros(8)])
    np.testing.assert_allclose(e[:, 0], np.cos([0, 1, 500]), rtol=1e-6)
    # every column at generic times: cos(t w_j) | sin(t w_j), w_j = 10000^(-j / 8)
    t = np.array([3.0, 47.0, 733.0])
    args = t[:, None] * 10000.0 ** (-np.arange(8) / 8)
    np.testing.assert_allclose(to_numpy(timestep_embedding(t, 16, np.float64)),
                               np.c_[np.cos(args), np.sin(args)], rtol=1e-12, atol=1e-12)
