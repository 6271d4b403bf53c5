"""Every elementwise op: values against NumPy, gradients and double backward against finite
differences (broadcasting shapes for binary ops), and the exact invariants in float32/64."""
import math
from typing import Callable, NamedTuple

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import refgen.functional as F
from refgen import Tensor, grad
from refgen.backend import to_numpy
from refgen.testing import check_forward, check_grads, check_invariants, strategies as rs

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _erfinv_bisect(v):
    """erf^{-1} by 200 bisections of math.erf on [-7, 7] (float64 exact to rounding)."""
    lo, hi = -7.0, 7.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if math.erf(mid) < v else (lo, mid)
    return 0.5 * (lo + hi)


_erfinv = np.vectorize(_erfinv_bisect, otypes=[np.float64])


class Case(NamedTuple):
    name: str
    f: Callable      # Tensors -> Tensor
    ref: Callable    # ndarrays -> ndarray
    inputs: object   # strategy of a list of float64 arrays
    order: int = 2


SHAPE = rs.shapes(max_dims=3, max_side=3)


def unary(elements=None):
    return rs.arrays(SHAPE, elements).map(lambda a: [a])


def binary(ea=None, eb=None, ec=None, n=2):
    es = [ea, eb, ec][:n]
    return rs.broadcastable_shapes(n, max_dims=3, max_side=3).flatmap(
        lambda shapes: st.tuples(*[rs.arrays(s, e) for s, e in zip(shapes, es)]).map(list))


KINK0 = rs.away_from_kinks((0.0,))
NONZERO = rs.away_from_kinks((0.0,), margin=0.3)
POS = rs.floats(0.1, 3.0)
QUARTERS = st.integers(-8, 8).map(lambda k: k / 4)               # a grid ...
OFF_QUARTERS = st.integers(-8, 8).map(lambda k: k / 4 + 0.125)   # ... and one 1/8 away from it


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


CASES = [
    Case("add", F.add, np.add, binary()),
    Case("sub", F.sub, np.subtract, binary()),
    Case("mul", F.mul, np.multiply, binary()),
    Case("div", F.div, np.divide, binary(eb=NONZERO)),
    Case("pow", F.pow, np.power, binary(ea=POS)),
    Case("maximum", F.maximum, np.maximum, binary(QUARTERS, OFF_QUARTERS)),
    Case("minimum", F.minimum, np.minimum, binary(OFF_QUARTERS, QUARTERS)),
    Case("where", lambda c, a, b: F.where(c.data > 0, a, b),
         lambda c, a, b: np.where(c > 0, a, b), binary(KINK0, n=3)),
    # a Python scalar on either side
    Case("add_scalar", lambda x: x + 2.5, lambda x: x + 2.5, unary()),
    Case("rsub_scalar", lambda x: 1.5 - x, lambda x: 1.5 - x, unary()),
    Case("mul_scalar", lambda x: -3.0 * x, lambda x: -3.0 * x, unary()),
    Case("rdiv_scalar", lambda x: 2.0 / x, lambda x: 2.0 / x, unary(NONZERO)),
    Case("rpow_scalar", lambda x: 2.0 ** x, lambda x: 2.0 ** x, unary()),
    Case("pow_0", lambda x: F.pow(x, 0), lambda x: x ** 0, unary()),
    Case("pow_1", lambda x: F.pow(x, 1), lambda x: x ** 1, unary()),
    Case("pow_2", lambda x: x ** 2, lambda x: x ** 2, unary()),
    Case("pow_3", lambda x: F.pow(x, 3), lambda x: x ** 3, unary()),
    Case("pow_2.5", lambda x: x ** 2.5, lambda x: x ** 2.5, unary(POS)),
    Case("pow_-1.5", lambda x: x ** -1.5, lambda x: x ** -1.5, unary(POS)),
    Case("neg", F.neg, np.negative, unary()),
    Case("square", F.square, np.square, unary()),
    Case("exp", F.exp, np.exp, unary()),
    Case("expm1", F.expm1, np.expm1, unary()),
    Case("log", F.log, np.log, unary(POS)),
    Case("log1p", F.log1p, np.log1p, unary(rs.floats(-0.5, 2.0))),
    Case("sqrt", F.sqrt, np.sqrt, unary(POS)),
    Case("sin", F.sin, np.sin, unary()),
    Case("cos", F.cos, np.cos, unary()),
    Case("tanh", F.tanh, np.tanh, unary()),
    Case("sigmoid", F.sigmoid, sigmoid, unary(rs.floats(-6, 6))),
    Case("softplus", F.softplus, lambda x: np.log1p(np.exp(x)), unary(rs.floats(-6, 6))),
    Case("softplus_beta2", lambda x: F.softplus(x, beta=2.0),
         lambda x: np.log1p(np.exp(2 * x)) / 2, unary()),
    Case("logsigmoid", F.logsigmoid, lambda x: -np.log1p(np.exp(-x)), unary(rs.floats(-6, 6))),
    Case("silu", F.silu, lambda x: x * sigmoid(x), unary()),
    Case("erf", F.erf, _erf, unary()),
    Case("erfinv", F.erfinv, _erfinv, unary(rs.floats(-0.95, 0.95))),
    Case("gelu", F.gelu, lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2))), unary()),
    Case("gelu_tanh", lambda x: F.gelu(x, approximate="tanh"),
         lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))),
         unary()),
    # piecewise: kept away from the kinks, where no derivative exists
    Case("relu", F.relu, lambda x: np.maximum(x, 0), unary(KINK0)),
    Case("abs", F.abs, np.abs, unary(KINK0)),
    Case("sign", F.sign, np.sign, unary(KINK0)),
    Case("leaky_relu", lambda x: F.leaky_relu(x, 0.1), lambda x: np.where(x > 0, x, 0.1 * x),
         unary(KINK0)),
    Case("elu", F.elu, lambda x: np.where(x > 0, x, np.expm1(x)), unary(KINK0)),
    Case("elu_alpha", lambda x: F.elu(x, alpha=0.5),
         lambda x: np.where(x > 0, x, 0.5 * np.expm1(x)), unary(KINK0)),
    Case("clamp", lambda x: F.clamp(x, -0.5, 0.7), lambda x: np.clip(x, -0.5, 0.7),
         unary(rs.away_from_kinks((-0.5, 0.7)))),
    Case("clamp_min", lambda x: x.clamp(min=0.2), lambda x: np.maximum(x, 0.2),
         unary(rs.away_from_kinks((0.2,)))),
    Case("clamp_max", lambda x: F.clamp(x, max=-0.3), lambda x: np.minimum(x, -0.3),
         unary(rs.away_from_kinks((-0.3,)))),
]
IDS = [c.name for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
@given(data=st.data())
@settings(max_examples=10)
def test_forward_matches_numpy(case, data):
    check_forward(case.f, case.ref, data.draw(case.inputs))


@pytest.mark.parametrize("case", CASES, ids=IDS)
@given(data=st.data())
def test_gradients(case, data):
    check_grads(case.f, data.draw(case.inputs), order=case.order)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@given(data=st.data())
@settings(max_examples=3)
def test_invariants(case, data):
    check_invariants(case.f, data.draw(case.inputs), order=2)


def test_extreme_inputs_stay_finite():
    x = Tensor(np.array([-1e4, -50.0, 0.0, 50.0, 1e4]), requires_grad=True)
    for f, want in [(F.sigmoid, [0.0, sigmoid(-50.0), 0.5, 1.0, 1.0]),
                    (F.softplus, [0.0, np.log1p(np.exp(-50.0)), np.log(2.0), 50.0, 1e4]),
                    (F.logsigmoid, [-1e4, -50.0, -np.log(2.0), -np.log1p(np.exp(-50.0)), 0.0])]:
        y = f(x)
        np.testing.assert_allclose(to_numpy(y.data), want, rtol=1e-12, atol=1e-300)
        (g,) = grad(y.sum(), [x])
        assert np.all(np.isfinite(to_numpy(g.data))), f.__name__
    # elu's unused exp branch must not overflow into a nan gradient
    (g,) = grad(F.elu(x).sum(), [x])
    np.testing.assert_array_equal(to_numpy(g.data)[3:], [1.0, 1.0])


def test_piecewise_ops_take_the_conventional_subgradient_at_the_kink():
    x = Tensor(np.zeros(1), requires_grad=True)
    for f, want in [(F.relu, 0.0), (F.abs, 0.0), (lambda t: F.clamp(t, 0.0, 1.0), 1.0)]:
        (g,) = grad(f(x).sum(), [x])
        assert to_numpy(g.data)[0] == want
    # clamp passes the gradient at either bound itself (torch's convention): lo <= x <= hi
    x = Tensor(np.array([-0.5, 0.7, -0.6, 0.8]), requires_grad=True)
    (g,) = grad(F.clamp(x, -0.5, 0.7).sum(), [x])
    np.testing.assert_array_equal(to_numpy(g.data), [1.0, 1.0, 0.0, 0.0])


def test_erfinv_tails_edges_and_normal_quantile():
    x = np.array([-1.0, -1 + 1e-12, -0.999, -0.3, 0.0, 1e-9, 0.5, 0.999999, 1 - 1e-12, 1.0, 1.5])
    y = to_numpy(F.erfinv(Tensor(x)).data)
    assert y[0] == -np.inf and y[-2] == np.inf and np.isnan(y[-1])
    mid = slice(1, -2)
    # erf(erfinv(x)) = x to the rounding of x, and the bisection reference agrees
    np.testing.assert_allclose(_erf(y[mid]), x[mid], rtol=0, atol=4e-16)
    # against bisection, to within the rounding of x times the slope dy/dx = sqrt(pi)/2 e^{y^2}
    ref = _erfinv(x[mid])
    slope = math.sqrt(math.pi) / 2 * np.exp(ref ** 2)
    assert np.all(np.abs(y[mid] - ref) <= 4 * np.spacing(np.abs(x[mid])) * slope + 4e-16 * np.abs(ref) + 1e-30)
    # Phi^{-1}(0.975) = 1.959963984540054 (the 97.5% normal quantile)
    assert abs(math.sqrt(2) * F.erfinv(Tensor(np.array(0.95))).item() - 1.959963984540054) < 1e-13
