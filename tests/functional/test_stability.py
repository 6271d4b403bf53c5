"""float32 ops at |x| up to 1e4 stay finite and match float64 closed forms.

Each closed form is evaluated in float64 on the very same (float32) inputs, so the only
difference allowed is float32 rounding of the result.
"""
import numpy as np
import pytest

import refgen
import refgen.functional as F
from refgen import Tensor

RTOL, ATOL = 2e-6, 1e-6  # a few float32 ulps; ATOL in nats, for results near 0


pytestmark = pytest.mark.usefixtures("numpy_backend")  # NumPy in float64, as the references


def _points():
    """float32 values from -1e4 to 1e4, the tails and the middle."""
    big = np.array([-1e4, -3e3, -100.0, -30.0, -20.0, -5.0, -1e-3, 0.0, 1e-3, 5.0, 20.0, 30.0,
                    100.0, 3e3, 1e4])
    r = np.random.default_rng(0)
    return np.concatenate([big, r.uniform(-1e4, 1e4, 50), r.standard_normal(50) * 10]).astype(np.float32)


def _softplus64(x):
    x = x.astype(np.float64)
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))  # log(1 + e^x), exact in both tails


def _sigmoid64(x):
    x = x.astype(np.float64)
    return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


def _value_and_grad(fn, x):
    t = Tensor(x, requires_grad=True)
    y = fn(t)
    (g,) = refgen.grad(y, [t], Tensor(np.ones(y.shape, np.float32)))
    assert y.dtype == np.float32 and g.dtype == np.float32
    assert np.all(np.isfinite(y.data)) and np.all(np.isfinite(g.data))
    return y.data, g.data


def test_softplus():
    x = _points()
    y, g = _value_and_grad(F.softplus, x)
    np.testing.assert_allclose(y, _softplus64(x), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(g, _sigmoid64(x), rtol=RTOL, atol=ATOL)  # softplus' = sigmoid


def test_logsigmoid():
    x = _points()
    y, g = _value_and_grad(F.logsigmoid, x)
    np.testing.assert_allclose(y, -_softplus64(-x), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(g, _sigmoid64(-x), rtol=RTOL, atol=ATOL)  # (log sigma)' = sigma(-x)


def test_sigmoid():
    x = _points()
    y, _ = _value_and_grad(F.sigmoid, x)
    np.testing.assert_allclose(y, _sigmoid64(x), rtol=RTOL, atol=1e-30)


def _rows():
    """Rows of logits of magnitude up to 1e4, including all-equal and one-dominant rows."""
    r = np.random.default_rng(1)
    rows = [r.uniform(-1e4, 1e4, 7), np.full(7, 1e4), np.full(7, -1e4),
            np.array([1e4, 1e4 - 1, 1e4 - 2, 0, -1e4, 5e3, 1e4 - 0.5]),
            r.standard_normal(7) * 3, r.standard_normal(7) + 9.9e3]
    return np.stack(rows).astype(np.float32)


def _lse64(x):
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return m + np.log(np.exp(x - m).sum(-1, keepdims=True))


def test_logsumexp():
    x = _rows()
    y, g = _value_and_grad(lambda t: F.logsumexp(t, -1), x)
    np.testing.assert_allclose(y, _lse64(x)[:, 0], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(g, np.exp(x - _lse64(x)), rtol=RTOL, atol=ATOL)  # the softmax


def test_log_softmax_and_softmax():
    x = _rows()
    ref = x.astype(np.float64) - _lse64(x)
    y, g = _value_and_grad(lambda t: F.log_softmax(t, -1), x)
    np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL)
    # with upstream ones: 1 - C * softmax
    np.testing.assert_allclose(g, 1 - x.shape[-1] * np.exp(ref), rtol=RTOL, atol=ATOL)
    s, _ = _value_and_grad(lambda t: F.softmax(t, -1), x)
    np.testing.assert_allclose(s, np.exp(ref), rtol=RTOL, atol=1e-30)


@pytest.mark.parametrize("targets", ["binary", "soft"])
def test_bce_with_logits(targets):
    x = _points()
    r = np.random.default_rng(2)
    t = (r.random(x.shape) < 0.5) if targets == "binary" else r.random(x.shape)
    t = t.astype(np.float32)
    x64, t64 = x.astype(np.float64), t.astype(np.float64)
    ref = np.maximum(x64, 0) - x64 * t64 + np.log1p(np.exp(-np.abs(x64)))
    y, g = _value_and_grad(lambda z: F.binary_cross_entropy_with_logits(z, Tensor(t), reduction="none"), x)
    # for 0 < t < 1 the exact loss is a difference of O(|x|) terms, so the float32 rounding
    # of t itself (already in t64) and of the products bounds the error by ulps of |x|
    atol = ATOL if targets == "binary" else ATOL + 4e-7 * np.abs(x64)
    err = np.abs(y - ref)
    assert np.all(err <= atol + RTOL * np.abs(ref)), (x[err.argmax()], err.max())
    np.testing.assert_allclose(g, _sigmoid64(x) - t64, rtol=RTOL, atol=ATOL)


def test_cross_entropy_large_logits():
    x = _rows()
    t = np.array([0, 1, 2, 3, 4, 5])
    ref = -(x.astype(np.float64) - _lse64(x))[np.arange(6), t]
    y, _ = _value_and_grad(lambda z: F.cross_entropy(z, t, reduction="none"), x)
    np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL)
