"""Every flow layer, on vectors and tiny images, in float64 with random parameters:

- inverse(forward(x)) == x and forward(inverse(z)) == z to 1e-9;
- the log-determinant it reports equals log|det| of its Jacobian computed by brute force
  (one autograd backward pass per output coordinate).
"""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from refgen.models.flows import (ActNorm, AdditiveCoupling, AffineCoupling, AutoregressiveAffine,
                                 ConditionalPrior, DiagonalScaling, Flatten, FlowSequence,
                                 InvConv1x1, InvConv1x1LU, LogitTransform, MultiScale, Reverse,
                                 Shift, Squeeze, channel_mask, checkerboard_mask)
from refgen.models.flows.nets import ConvNet, MLP
from refgen.testing import check_vjp, on_backend



def _multiscale():
    # (1, 4, 4) -> squeeze (4, 2, 2) -> coupling -> split: (2, 2, 2) out with the learned
    # prior, (2, 2, 2) on through a checkerboard coupling, then flat: 16 in all
    steps = FlowSequence([Squeeze(), AffineCoupling(channel_mask((4, 2, 2)), ConvNet(4, 8, 4, rng=1))])
    rest = FlowSequence([AffineCoupling(checkerboard_mask((2, 2, 2)), ConvNet(2, 4, 4, rng=2)),
                         Flatten((2, 2, 2))])
    return MultiScale(steps, rest, (4, 2, 2), prior=ConditionalPrior((2, 2, 2), 2, rng=3))


# name -> (builder, example shape, inputs in (0, 1) only)
LAYERS = {
    "additive-vec": (lambda: AdditiveCoupling(checkerboard_mask((4,)), MLP(4, 4, (8,), rng=0)), (4,), False),
    "affine-vec-checker": (lambda: AffineCoupling(checkerboard_mask((4,), 1), MLP(4, 8, (8,), rng=0)), (4,), False),
    "affine-vec-channel": (lambda: AffineCoupling(channel_mask((4,)), MLP(4, 8, (8, 8), rng=0)), (4,), False),
    "actnorm-vec": (lambda: ActNorm((4,)), (4,), False),
    "invconv-vec": (lambda: InvConv1x1((4,), rng=0), (4,), False),
    "invconv-lu-vec": (lambda: InvConv1x1LU((4,), rng=0), (4,), False),
    "reverse-vec": (lambda: Reverse(), (4,), False),
    "scaling-vec": (lambda: DiagonalScaling((4,)), (4,), False),
    "maf-layer": (lambda: AutoregressiveAffine(4, (8, 8), rng=0), (4,), False),
    "shift-vec": (lambda: Shift(), (4,), False),
    "logit-vec": (lambda: LogitTransform(0.05), (4,), True),
    "additive-img": (lambda: AdditiveCoupling(checkerboard_mask((1, 4, 4)), ConvNet(1, 1, 4, rng=0)), (1, 4, 4), False),
    "affine-img-checker": (lambda: AffineCoupling(checkerboard_mask((1, 4, 4), 1), ConvNet(1, 2, 4, rng=0)), (1, 4, 4), False),
    "affine-img-channel": (lambda: AffineCoupling(channel_mask((4, 2, 2), 1), ConvNet(4, 8, 4, rng=0)), (4, 2, 2), False),
    "actnorm-img": (lambda: ActNorm((4, 2, 2)), (4, 2, 2), False),
    "invconv-img": (lambda: InvConv1x1((4, 2, 2), rng=0), (4, 2, 2), False),
    "invconv-lu-img": (lambda: InvConv1x1LU((4, 2, 2), rng=0), (4, 2, 2), False),
    "squeeze": (lambda: Squeeze(), (1, 4, 4), False),
    "flatten": (lambda: Flatten((4, 2, 2)), (4, 2, 2), False),
    "reverse-img": (lambda: Reverse(), (4, 2, 2), False),
    "scaling-img": (lambda: DiagonalScaling((1, 4, 4)), (1, 4, 4), False),
    "logit-img": (lambda: LogitTransform(0.05), (1, 4, 4), True),
    "multiscale-glow-prior": (_multiscale, (1, 4, 4), False),
}


def _build(name, fl, seed=0):
    make, shape, unit = LAYERS[name]
    layer = fl.randomize(make().double(), seed=seed)
    rng = np.random.default_rng(seed + 100)
    x = rng.uniform(0.02, 0.98, (3,) + shape) if unit else rng.standard_normal((3,) + shape)
    return layer, x


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_inverse_of_forward_and_forward_of_inverse(name, fl):
    layer, x = _build(name, fl)
    z, logdet = fl.forward(layer, x)
    assert logdet.shape == (3,) and z.shape[0] == 3
    np.testing.assert_allclose(fl.inverse(layer, z), x, rtol=0, atol=1e-9)
    if LAYERS[name][2]:  # the logit's inverse maps R onto (0, 1): start from z's own range
        z2 = z + 0.1
    else:
        z2 = np.random.default_rng(7).standard_normal(z.shape)
    np.testing.assert_allclose(fl.forward(layer, fl.inverse(layer, z2))[0], z2, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_logdet_is_log_abs_det_of_the_jacobian(name, fl):
    layer, x = _build(name, fl, seed=1)
    _, logdet = fl.forward(layer, x)
    np.testing.assert_allclose(logdet, fl.brute_logdet(layer, x), rtol=1e-8, atol=1e-8)


@given(seed=st.integers(0, 10_000), name=st.sampled_from(["affine-vec-checker", "invconv-lu-vec",
                                                          "actnorm-vec", "maf-layer"]))
def test_random_parameters_round_trip(seed, name, fl):
    layer, x = _build(name, fl, seed=seed)
    z, logdet = fl.forward(layer, x)
    np.testing.assert_allclose(fl.inverse(layer, z), x, rtol=0, atol=1e-9)
    np.testing.assert_allclose(logdet[:1], fl.brute_logdet(layer, x[:1]), rtol=1e-8, atol=1e-8)


@on_backend("numpy")  # compares with NumPy in float64 / finite differences: run there
def test_coupling_gradients_match_finite_differences(fl):
    # the training signal: d(y, logdet)/dx through the conditioner network and the tanh scale
    layer, x = _build("affine-img-checker", fl, seed=2)
    check_vjp(lambda xt: layer(xt), [x])
