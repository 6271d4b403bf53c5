"""The oracle must catch what it claims to catch: each check is shown a deliberately broken
Function, and each strategy is checked to produce what it promises."""
import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import refgen.functional as F
from refgen import Function, Tensor, backend, is_grad_enabled
from refgen.backend import BackendError
from refgen.testing import (GradcheckError, check_double_backward, check_forward, check_grads,
                            check_invariants, check_vjp, on_backend, strategies as rs)

X = np.random.default_rng(0).standard_normal((3, 2))


class BadSquare(Function):
    """x^2 with the factor 2 forgotten in backward."""

    def forward(self, x):
        return x * x

    def backward(self, gy):
        return gy * self.inputs[0]


class RawSquare(Function):
    """x^2 with a correct first derivative built from raw arrays: not differentiable again."""

    def forward(self, x):
        return x * x

    def backward(self, gy):
        return gy * Tensor(2 * self.inputs[0].data)


class BadSecondInput(Function):
    """a * b whose gradient is right for a and wrong for b."""

    def forward(self, a, b):
        return a * b

    def backward(self, gy):
        a, b = self.inputs
        return gy * b, gy * b


def test_check_vjp_accepts_correct_gradients():
    analytic, numeric = check_vjp(lambda a, b: F.tanh(a) * b, [X, X[::-1]])
    assert analytic == pytest.approx(numeric, rel=1e-6)
    check_grads(lambda a: (F.exp(a), F.sum(a, 1)), [X])  # several outputs
    check_vjp(lambda a: F.sign(a), [X])  # no graph at all: derivative 0


@pytest.mark.parametrize("f, xs", [
    (BadSquare.apply, [X]),
    (BadSecondInput.apply, [X, X + 1.0]),                  # only one input's gradient is wrong
    (lambda a: (F.tanh(a), BadSquare.apply(a)), [X]),      # only one output's gradient is wrong
])
def test_check_vjp_rejects_wrong_gradients(f, xs):
    with pytest.raises(GradcheckError, match="analytic"):
        check_vjp(f, xs)


def test_double_backward_needs_a_differentiable_backward():
    check_vjp(RawSquare.apply, [X])
    check_grads(RawSquare.apply, [X], order=1)
    with pytest.raises(GradcheckError):
        check_double_backward(RawSquare.apply, [X])
    with pytest.raises(GradcheckError):
        check_grads(RawSquare.apply, [X])


class TwoFacedSquare(Function):
    """x^2 whose backward is right without create_graph, and under create_graph returns the
    (self-consistent, differentiable) gradient of x^3: a finite-difference check of the
    recorded gradient alone passes."""

    def forward(self, x):
        return x * x

    def backward(self, gy):
        x = self.inputs[0]
        if is_grad_enabled():
            return gy * 3.0 * x * x
        return gy * Tensor(2 * x.data)


def test_double_backward_compares_the_recorded_first_derivative_with_the_plain_one():
    check_vjp(TwoFacedSquare.apply, [X])
    with pytest.raises(GradcheckError, match="create_graph"):
        check_double_backward(TwoFacedSquare.apply, [X])
    with pytest.raises(GradcheckError, match="create_graph"):
        check_grads(TwoFacedSquare.apply, [X], order=2)


def test_check_vjp_rejects_a_gradient_of_the_wrong_shape():
    class SumsItsGradient(Function):
        def forward(self, x):
            return x * 2.0

        def backward(self, gy):
            return F.sum(gy) * 2.0

    with pytest.raises(GradcheckError, match="shape"):
        check_vjp(SumsItsGradient.apply, [X])


class MutatesInput(Function):
    def forward(self, x):
        x += 1.0
        return x * 1.0

    def backward(self, gy):
        return gy


class PromotesInForward(Function):
    def forward(self, x):
        return x.astype(np.float64)

    def backward(self, gy):
        return gy


class PromotesInBackward(Function):
    def forward(self, x):
        return x * 2

    def backward(self, gy):
        return gy * Tensor(np.full(gy.shape, 2.0))  # a float64 constant


class AffineBackward(Function):
    def forward(self, x):
        return x * 1

    def backward(self, gy):
        return gy + 1.0  # nonzero for a zero upstream gradient


class Noisy(Function):
    calls = itertools.count()

    def forward(self, x):
        return x + next(self.calls) * 1e-3

    def backward(self, gy):
        return gy


class TwoX(Function):
    """2x whose own backward promotes to float64: only a second-order check sees it."""

    def forward(self, x):
        return x * 2

    def backward(self, gy):
        return gy * Tensor(np.full(gy.shape, 2.0))


class SquareViaTwoX(Function):
    def forward(self, x):
        return x * x

    def backward(self, gy):
        return gy * TwoX.apply(self.inputs[0])


def test_check_invariants_accepts_well_behaved_ops():
    check_invariants(lambda a, b: F.matmul(F.tanh(a), b.T) + 1.0, [X, X], order=2)
    check_invariants(lambda a: F.split(a, 1, 1), [X], order=2)
    check_invariants(lambda a, i: a[i.data], [X, np.array([0, 0, 2])])  # an integer input


@pytest.mark.parametrize("f, invariant, kw", [
    (MutatesInput.apply, "no mutation", {}),
    (PromotesInForward.apply, "dtype", {}),
    (PromotesInBackward.apply, "shape/dtype", {}),
    (AffineBackward.apply, "zero upstream", {}),
    (Noisy.apply, "deterministic", {}),
    (SquareViaTwoX.apply, "shape/dtype", {"order": 2}),
])
def test_check_invariants_names_the_broken_invariant(f, invariant, kw):
    with pytest.raises(GradcheckError, match=invariant):
        check_invariants(f, [X], **kw)


def test_check_invariants_second_order_is_opt_in():
    check_invariants(SquareViaTwoX.apply, [X], order=1)
    check_invariants(Noisy.apply, [X], deterministic=False)


def test_check_forward():
    check_forward(F.tanh, np.tanh, [X])
    check_forward(lambda a: F.split(a, 1, 1), lambda a: tuple(np.split(a, 2, 1)), [X],
                  rtol=0, atol=0)
    with pytest.raises(GradcheckError, match="differs"):
        check_forward(F.sin, np.cos, [X])
    with pytest.raises(GradcheckError, match="differs"):  # same magnitudes, one sign flipped
        check_forward(F.tanh, lambda a: -np.tanh(a), [X])
    with pytest.raises(GradcheckError, match="shape"):
        check_forward(lambda a: F.sum(a, 0), np.sum, [X])


def test_on_backend_skips_when_the_backend_is_missing(monkeypatch):
    def refuse(which):
        raise BackendError("REFGEN_BACKEND=cupy but CuPy is not installed")

    monkeypatch.setattr(backend, "_load", refuse)
    with pytest.raises(pytest.skip.Exception, match="not installed"), on_backend("cupy"):
        pass


def test_refgen_testing_imports_without_hypothesis():
    code = ("import sys; sys.modules['hypothesis'] = None\n"
            "import refgen.testing as t\n"
            "t.check_grads(lambda x: x * x, [[1.0, 2.0]])\n"
            "try:\n    t.strategies.shapes()\nexcept ImportError as e:\n    print(e)\n")
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=root)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "pip install 'refgen[test]'" in r.stdout


# --- the strategies keep their promises ------------------------------------------------------

@given(rs.shapes(min_dims=1, max_dims=3, max_side=4))
@settings(max_examples=10)
def test_shapes_respect_bounds(shape):
    assert 1 <= len(shape) <= 3 and all(1 <= n <= 4 for n in shape)


@given(rs.broadcastable_shapes(3, with_result=True))
@settings(max_examples=10)
def test_broadcastable_shapes_broadcast(drawn):
    shapes, result = drawn
    assert len(shapes) == 3 and np.broadcast_shapes(*shapes) == result


@given(rs.arrays(rs.shapes(), elements=rs.away_from_kinks((0.0, 1.0), margin=0.01)))
@settings(max_examples=15)
def test_away_from_kinks_keeps_the_margin(x):
    assert x.dtype == np.float64
    assert np.all(np.abs(x) >= 0.01) and np.all(np.abs(x - 1.0) >= 0.01)


@given(rs.positive_arrays(rs.shapes(), min_value=0.5))
@settings(max_examples=10)
def test_positive_arrays_are_positive(x):
    assert np.all(x >= 0.5)


@given(rs.distinct_arrays(rs.shapes(max_side=3), gap=0.2))
@settings(max_examples=10)
def test_distinct_arrays_have_no_near_ties(x):
    v = np.sort(x.ravel())
    assert v.size < 2 or np.min(np.diff(v)) >= 0.1


@given(st.integers(0, 4).flatmap(lambda nd: st.tuples(st.just(nd), rs.dims(nd))))
@settings(max_examples=15)
def test_dims_are_valid_reduction_dims(drawn):
    nd, dim = drawn
    if dim is None:
        return
    dims = (dim,) if isinstance(dim, int) else dim
    assert all(-nd <= d < nd for d in dims)
    assert len({d % nd for d in dims}) == len(dims)
    assert np.sum(np.ones((2,) * nd), axis=dim).ndim == nd - len(dims)
