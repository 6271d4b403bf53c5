"""The engine's contract: deep graphs, accumulation, explicit seeds for non-scalars, unused
inputs, grad modes, higher-order derivatives, and dtype preservation."""
import math

import numpy as np
import pytest

import refgen
import refgen.functional as F
from refgen import Tensor, grad, no_grad, enable_grad, is_grad_enabled
from refgen.backend import to_numpy
from refgen.testing import check_vjp, check_grads


def arr(t):
    return to_numpy(t.data)


def leaf(values, dtype=np.float64):
    return Tensor(np.asarray(values, dtype=dtype), requires_grad=True)


def test_a_10000_deep_chain_backpropagates_without_recursion():
    x = leaf([0.5, -1.0])
    y = x
    for i in range(10_000):
        y = y * 2.0 if i % 2 == 0 else y * 0.5  # powers of two: every product is exact
    y = y + 1.0
    (g,) = grad(y.sum(), [x])
    np.testing.assert_array_equal(arr(g), [1.0, 1.0])
    y.sum().backward()
    np.testing.assert_array_equal(arr(x.grad), [1.0, 1.0])


def test_diamond_graph_accumulates_both_paths():
    x = leaf([1.5, -2.0])
    a, b = x * 3.0, F.sin(x)  # two paths from x
    y = (a * b).sum()         # y = 3 x sin x
    (g,) = grad(y, [x])
    xv = arr(x)
    np.testing.assert_allclose(arr(g), 3 * np.sin(xv) + 3 * xv * np.cos(xv), rtol=1e-14)
    # a shared intermediate used twice: h = x^2, y = h * h = x^4
    h = x * x
    (g,) = grad((h * h).sum(), [x])
    np.testing.assert_allclose(arr(g), 4 * xv ** 3, rtol=1e-14)


def test_backward_accumulates_out_of_place():
    x = leaf([1.0, 2.0])
    (x * x).sum().backward()
    first = x.grad
    first_values = arr(first).copy()
    (x * 3.0).sum().backward()
    assert x.grad is not first
    np.testing.assert_array_equal(arr(first), first_values)  # the old gradient is untouched
    np.testing.assert_array_equal(arr(x.grad), first_values + 3.0)


def test_slice_gradients_are_added_in_place_without_touching_anything_passed_in():
    """x read one column at a time (as a recurrent net reads its inputs), plus whole-array
    paths whose gradients arrive first and are shared: the accumulated gradient equals the
    closed form, the gradient handed in (grad_outputs) and the one a path passes on unchanged
    are left as they were, and the recorded (create_graph) pass gives the same numbers."""
    rng = np.random.default_rng(3)
    xv = rng.standard_normal((3, 6))
    wv = rng.standard_normal(6)
    gv = rng.standard_normal((3, 6))
    x = leaf(xv)
    g_out = refgen.tensor(gv.copy())

    def outputs():
        y = x + x                                   # Add's backward passes g_out on to x twice
        cols = [x[:, t:t + 1] * float(wv[t]) for t in range(6)]
        return y, F.cat(cols, dim=1) + F.sin(x[:, 1:4]).sum()
    y, z = outputs()
    (g,) = grad([y, z], [x], grad_outputs=[g_out, refgen.tensor(np.ones((3, 6)))])
    want = 2 * gv + wv[None, :] + 0.0
    want[:, 1:4] += 18 * np.cos(xv[:, 1:4])         # sin(x[:, 1:4]).sum() is added to all 18 entries
    np.testing.assert_allclose(arr(g), want, rtol=1e-13)
    np.testing.assert_array_equal(arr(g_out), gv)   # nothing handed in was written to
    y, z = outputs()
    (g2,) = grad([y, z], [x], grad_outputs=[g_out, refgen.tensor(np.ones((3, 6)))], create_graph=True)
    np.testing.assert_allclose(arr(g2), want, rtol=1e-13)
    np.testing.assert_array_equal(arr(g_out), gv)


def test_a_slice_gradient_arriving_first_is_not_shared():
    """Two slices of x whose gradients are the same upstream array: each lands in x's own
    buffer, and the upstream gradient stays as it was."""
    xv = np.arange(8.0).reshape(2, 4)
    x = leaf(xv)
    g_in = np.full((2, 2), 5.0)
    y = F.cat([x[:, 0:2], x[:, 1:3]], dim=0)        # (4, 2)
    (g,) = grad(y, [x], grad_outputs=refgen.tensor(np.concatenate([g_in, g_in])))
    np.testing.assert_array_equal(arr(g), [[5.0, 10.0, 5.0, 0.0], [5.0, 10.0, 5.0, 0.0]])
    np.testing.assert_array_equal(g_in, np.full((2, 2), 5.0))


@pytest.mark.parametrize("order", [0, 1])
def test_a_slice_gradient_after_a_passed_on_one_copies_it_first(order):
    """x + c passes the gradient handed in on to x unchanged (the same array); a slice of x
    then adds into x's gradient: into a copy, never into the array the caller gave."""
    xv = np.arange(6.0).reshape(2, 3)
    x = leaf(xv)
    g_whole, g_col = np.full((2, 3), 2.0), np.full((2, 1), 7.0)
    pairs = [(x + 1.0, refgen.tensor(g_whole)), (x[:, 1:2], refgen.tensor(g_col))]
    if order:
        pairs.reverse()
    (g,) = grad([p[0] for p in pairs], [x], grad_outputs=[p[1] for p in pairs])
    np.testing.assert_array_equal(arr(g), [[2.0, 9.0, 2.0], [2.0, 9.0, 2.0]])
    for _, given in pairs:
        np.testing.assert_array_equal(arr(given), np.full(given.shape, 2.0 if given.shape == (2, 3) else 7.0))


def test_non_scalar_backward_needs_an_explicit_gradient():
    x = leaf([1.0, 2.0, 3.0])
    y = x * 2.0
    with pytest.raises(RuntimeError, match="scalar"):
        y.backward()
    with pytest.raises(RuntimeError, match="scalar"):
        grad(y, [x])
    y.backward(np.array([1.0, 0.0, -1.0]))
    np.testing.assert_array_equal(arr(x.grad), [2.0, 0.0, -2.0])
    with pytest.raises(ValueError, match="shape"):
        grad(y, [x], grad_outputs=Tensor(np.ones(2)))


def test_unused_inputs_raise_or_give_none_or_zeros():
    x, z = leaf([1.0, 2.0]), leaf(np.ones((2, 3)), np.float32)
    y = (x * x).sum()
    with pytest.raises(RuntimeError, match="not used"):
        grad(y, [x, z])
    gx, gz = grad(y, [x, z], allow_unused=True)
    assert gz is None
    np.testing.assert_array_equal(arr(gx), [2.0, 4.0])
    _, gz = grad(y, [x, z], allow_unused=True, materialize_grads=True)
    assert gz.shape == (2, 3) and gz.dtype == np.float32 and not arr(gz).any()


def test_grad_modes_and_detach():
    x = leaf([1.0, 2.0])
    assert is_grad_enabled()
    with no_grad():
        assert not is_grad_enabled()
        y = x * 2.0
        assert not y.requires_grad and y.is_leaf
        with enable_grad():
            z = x * 2.0
            assert z.requires_grad and not z.is_leaf
        assert not is_grad_enabled()
    assert is_grad_enabled()

    d = x.detach()
    assert not d.requires_grad and d.is_leaf
    np.testing.assert_array_equal(arr(d), arr(x))
    (g,) = grad((x * x.detach()).sum(), [x])  # the detached factor is a constant
    np.testing.assert_array_equal(arr(g), arr(x))

    with pytest.raises(RuntimeError), no_grad():
        grad((x * 2.0).sum(), [x])  # nothing was recorded


def test_create_graph_false_gives_plain_gradients():
    x = leaf([0.3, -0.7])
    y = F.tanh(x).sum()
    (g,) = grad(y, [x])
    assert not g.requires_grad and g.is_leaf
    y.backward()
    assert not x.grad.requires_grad and x.grad.is_leaf
    (g2,) = grad(F.tanh(x).sum(), [x], create_graph=True)
    assert g2.requires_grad and not g2.is_leaf


@pytest.mark.parametrize("f, third", [
    (lambda x: x ** 4, lambda x: 24 * x),
    (lambda x: x * x * x * x, lambda x: 24 * x),
    (F.sin, lambda x: -np.cos(x)),
    (F.exp, np.exp),
    (F.tanh, lambda x: -2 * (1 - np.tanh(x) ** 2) * (1 - 3 * np.tanh(x) ** 2)),
])
def test_third_derivative_by_repeated_grad(f, third):
    x = leaf([-1.3, 0.2, 0.9])
    g = f(x).sum()
    for _ in range(3):
        (g,) = grad(g.sum(), [x], create_graph=True)
    np.testing.assert_allclose(arr(g), third(arr(x)), rtol=1e-12, atol=1e-12)


def _critic(x, w1, b1, w2):
    """D(x) = tanh(x W1 + b1) w2: (B, 2) -> (B,)"""
    return F.matmul(F.tanh(F.matmul(x, w1) + b1), w2)


def _gradient_penalty(x, w1, b1, w2):
    """WGAN-GP: mean_i (||dD(x_i)/dx_i|| - 1)^2, differentiated with respect to everything."""
    (gx,) = grad(_critic(x, w1, b1, w2).sum(), [x], create_graph=True)  # (B, 2)
    norm = F.sqrt(F.sum(gx * gx, dim=1))
    return F.mean((norm - 1.0) ** 2)


def test_gradient_penalty_gradients_match_finite_differences():
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((4, 2)), rng.standard_normal((2, 5)), rng.standard_normal(5) * 0.3,
          rng.standard_normal(5)]
    check_vjp(_gradient_penalty, xs)
    check_vjp(_gradient_penalty, xs, rng=np.random.default_rng(7), min_abs_u=0.1)
    # and the critic itself, through double backward
    check_grads(_critic, xs)


@pytest.mark.parametrize("op", [
    lambda x: x + 1.0, lambda x: 1.0 + x, lambda x: x - 2, lambda x: 2 - x, lambda x: x * 0.5,
    lambda x: 0.5 * x, lambda x: x / 3.0, lambda x: 3.0 / x, lambda x: x ** 2, lambda x: x ** 0.5,
    lambda x: 2.0 ** x, lambda x: F.maximum(x, 0.0), lambda x: F.minimum(1.0, x),
    lambda x: F.where(arr(x) > 1, x, 0.0), lambda x: F.clamp(x, 0.5, 1.5),
    lambda x: F.leaky_relu(x, 0.2), lambda x: F.elu(x), lambda x: F.softplus(x, beta=2.0),
    lambda x: F.gelu(x), lambda x: F.gelu(x, approximate="tanh"), lambda x: F.mean(x),
    lambda x: F.var(x), lambda x: F.logsumexp(x), lambda x: F.pad(x, (1, 1), value=2.0),
    lambda x: x * math.pi,
])
def test_python_scalars_never_promote_float32(op):
    x = leaf([0.5, 1.0, 2.0], np.float32)
    y = op(x)
    assert y.dtype == np.float32
    (g,) = grad(y.sum(), [x], create_graph=True)
    assert g.dtype == np.float32
    (gg,) = grad(g.sum(), [x], allow_unused=True, materialize_grads=True)
    assert gg.dtype == np.float32


def test_tensor_basics():
    t = refgen.tensor([[1.0, 2.0]], requires_grad=True)
    assert t.shape == (1, 2) and t.ndim == 2 and t.size == 2 and len(t) == 1 and t.is_leaf
    assert "requires_grad=True" in repr(t)
    assert isinstance(t.numpy(), np.ndarray)
    with pytest.raises(TypeError, match="floating"):
        Tensor(np.arange(3), requires_grad=True)
    assert refgen.as_tensor(t) is t
    assert refgen.as_tensor(2.0, like=Tensor(np.ones(1, np.float32))).dtype == np.float32
    assert (t < 1.5).tolist() == [[True, False]]  # comparisons give plain boolean arrays


def test_python_float_with_an_integer_tensor_is_not_truncated():
    t = Tensor(np.arange(4))
    np.testing.assert_array_equal(arr(t * 0.25), [0.0, 0.25, 0.5, 0.75])
