"""Reductions over every kind of ``dim`` (None, int, negative int, tuple) with and without
keepdim: values against NumPy, gradients and double backward, exact invariants."""
from typing import Callable, NamedTuple

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import refgen.functional as F
from refgen import Tensor, grad
from refgen.backend import to_numpy
from refgen.testing import check_forward, check_grads, check_invariants, strategies as rs


class Case(NamedTuple):
    name: str
    f: Callable      # (Tensor, dim, keepdim) -> Tensor
    ref: Callable    # (ndarray, axis, keepdims) -> ndarray
    distinct: bool   # needs untied values (max/min) or a nonzero spread (std)
    min_side: int = 1


def _np_lse(x, axis, keepdims):  # the plain formula: inputs are small
    return np.log(np.sum(np.exp(x), axis=axis, keepdims=keepdims))


def ours(fn, **kw):
    return lambda x, dim, keepdim: fn(x, dim, keepdim=keepdim, **kw)


def numpys(fn, **kw):
    return lambda x, axis, keepdims: fn(x, axis=axis, keepdims=keepdims, **kw)


CASES = [
    Case("sum", ours(F.sum), numpys(np.sum), False),
    Case("sum_method", lambda x, d, k: x.sum(d, keepdim=k), numpys(np.sum), False),
    Case("mean", ours(F.mean), numpys(np.mean), False),
    Case("var", ours(F.var), numpys(np.var, ddof=1), False, 2),
    Case("var_biased", ours(F.var, unbiased=False), numpys(np.var), False),
    Case("std", ours(F.std), numpys(np.std, ddof=1), True, 2),
    Case("max", ours(F.max), numpys(np.max), True),
    Case("min", lambda x, d, k: x.min(d, keepdim=k), numpys(np.min), True),
    Case("amax", ours(F.amax), numpys(np.amax), True),
    Case("logsumexp", ours(F.logsumexp), _np_lse, False),
]
IDS = [c.name for c in CASES]


@st.composite
def reduction_inputs(draw, case):
    shape = draw(rs.shapes(min_dims=1, max_dims=3, max_side=3, min_side=case.min_side))
    x = draw(rs.distinct_arrays(shape) if case.distinct else rs.arrays(shape))
    return x, draw(rs.dims(len(shape))), draw(st.booleans())


def _bind(case, dim, keepdim):
    return (lambda x: case.f(x, dim, keepdim)), (lambda x: case.ref(x, dim, keepdim))


@pytest.mark.parametrize("case", CASES, ids=IDS)
@given(data=st.data())
@settings(max_examples=10)
def test_forward_matches_numpy(case, data):
    x, dim, keepdim = data.draw(reduction_inputs(case))
    f, ref = _bind(case, dim, keepdim)
    check_forward(f, ref, [x])


@pytest.mark.parametrize("case", CASES, ids=IDS)
@given(data=st.data())
def test_gradients(case, data):
    x, dim, keepdim = data.draw(reduction_inputs(case))
    check_grads(_bind(case, dim, keepdim)[0], [x])


@pytest.mark.parametrize("case", CASES, ids=IDS)
@given(data=st.data())
@settings(max_examples=3)
def test_invariants(case, data):
    x, dim, keepdim = data.draw(reduction_inputs(case))
    check_invariants(_bind(case, dim, keepdim)[0], [x], order=2)


def test_max_and_min_split_the_gradient_evenly_among_ties():
    x = Tensor(np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]]), requires_grad=True)
    (g,) = grad(F.max(x, 1).sum(), [x])
    np.testing.assert_allclose(to_numpy(g.data), [[0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    (g,) = grad(F.min(x).sum(), [x])  # the global min 1.0 is unique
    np.testing.assert_array_equal(to_numpy(g.data), [[1, 0, 0], [0, 0, 0]])


def test_logsumexp_is_stable_for_large_and_infinite_inputs():
    x = Tensor(np.array([[1e4, 1e4], [-np.inf, 0.0]]), requires_grad=True)
    y = F.logsumexp(x, dim=1)
    np.testing.assert_allclose(to_numpy(y.data), [1e4 + np.log(2.0), 0.0], rtol=1e-15)
    (g,) = grad(y.sum(), [x])  # softmax rows; the -inf entry gets exactly 0
    np.testing.assert_array_equal(to_numpy(g.data), [[0.5, 0.5], [0, 1]])
    with np.errstate(divide="ignore"):  # an all -inf row: -inf, not nan
        empty = F.logsumexp(Tensor(np.full((2, 3), -np.inf)), dim=1)
    np.testing.assert_array_equal(to_numpy(empty.data), [-np.inf, -np.inf])
    y32 = F.logsumexp(Tensor(np.full((3,), 100.0, np.float32)))
    assert y32.dtype == np.float32 and np.isclose(float(y32.item()), 100 + np.log(3.0))


def test_reductions_of_a_scalar_and_full_reductions_give_0d():
    x = Tensor(np.array(2.5), requires_grad=True)
    for f in (F.sum, F.mean, F.max, F.logsumexp):
        assert f(x).shape == ()
    assert F.sum(Tensor(np.ones((2, 3))), keepdim=True).shape == (1, 1)


def test_logsumexp_all_minus_inf_row_with_zero_upstream_gives_zero_gradient():
    x = Tensor(np.array([[-np.inf, -np.inf], [0.0, 1.0]]), requires_grad=True)
    with np.errstate(all="ignore"):
        y = F.logsumexp(x, dim=1)
        (g,) = grad(y[1], [x])
    assert not np.isnan(to_numpy(g.data)).any()
