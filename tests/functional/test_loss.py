"""Losses against float64 NumPy formulas, their reductions, and gradient checks."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import refgen
import refgen.functional as F
from refgen import Tensor
from refgen.testing import check_grads

seeds = st.integers(0, 2**32 - 1)
reductions = st.sampled_from(["mean", "sum", "none"])


pytestmark = pytest.mark.usefixtures("numpy_backend")  # NumPy in float64, as the references


def _reduce(a, reduction):
    return {"mean": np.mean, "sum": np.sum, "none": lambda z: z}[reduction](a)


def _np_log_softmax(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


@given(seed=seeds, reduction=reductions)
def test_mse_loss(seed, reduction):
    r = np.random.default_rng(seed)
    x, t = r.standard_normal((3, 4)), r.standard_normal((3, 4))
    y = F.mse_loss(Tensor(x), Tensor(t), reduction=reduction)
    np.testing.assert_allclose(y.data, _reduce((x - t) ** 2, reduction), rtol=1e-12)
    check_grads(lambda x, t: F.mse_loss(x, t, reduction=reduction), [x, t])


def test_bad_reduction():
    with pytest.raises(ValueError, match="reduction"):
        F.mse_loss(Tensor(np.zeros(2)), Tensor(np.zeros(2)), reduction="avg")


@given(seed=seeds, reduction=reductions, weighted=st.booleans())
def test_bce_with_logits(seed, reduction, weighted):
    r = np.random.default_rng(seed)
    x, t = r.standard_normal((3, 4)) * 3, r.random((3, 4))
    pw = r.uniform(0.5, 3.0, 4)
    s = 1 / (1 + np.exp(-x))
    ref = -((pw if weighted else 1.0) * t * np.log(s) + (1 - t) * np.log(1 - s))
    kw = {"pos_weight": Tensor(pw)} if weighted else {}
    y = F.binary_cross_entropy_with_logits(Tensor(x), Tensor(t), reduction=reduction, **kw)
    np.testing.assert_allclose(y.data, _reduce(ref, reduction), rtol=1e-10)
    if weighted:
        check_grads(lambda x, t, w: F.binary_cross_entropy_with_logits(
            x, t, reduction=reduction, pos_weight=w), [x, t, pw])
    else:
        check_grads(lambda x, t: F.binary_cross_entropy_with_logits(x, t, reduction=reduction),
                    [x, t])


def test_bce_with_logits_gradient_is_sigmoid_minus_target():
    x = Tensor(np.array([-3.0, 0.0, 2.0]), requires_grad=True)
    t = np.array([0.0, 0.5, 1.0])
    (g,) = refgen.grad(F.binary_cross_entropy_with_logits(x, Tensor(t), reduction="sum"), [x])
    np.testing.assert_allclose(g.data, 1 / (1 + np.exp(-x.data)) - t, rtol=1e-12)


@given(seed=seeds, reduction=reductions)
def test_binary_cross_entropy(seed, reduction):
    r = np.random.default_rng(seed)
    p, t = r.uniform(0.05, 0.95, (3, 4)), r.random((3, 4))
    ref = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    y = F.binary_cross_entropy(Tensor(p), Tensor(t), reduction=reduction)
    np.testing.assert_allclose(y.data, _reduce(ref, reduction), rtol=1e-12)
    check_grads(lambda p, t: F.binary_cross_entropy(p, t, reduction=reduction), [p, t])


def test_binary_cross_entropy_clamps_logs_at_minus_100():
    p = Tensor(np.array([0.0, 1.0, 0.0, 1.0], np.float32), requires_grad=True)
    t = Tensor(np.array([1.0, 0.0, 0.0, 1.0], np.float32))
    y = F.binary_cross_entropy(p, t, reduction="none")
    np.testing.assert_array_equal(y.data, [100.0, 100.0, 0.0, 0.0])
    (g,) = refgen.grad(F.sum(y), [p])
    assert g.dtype == np.float32 and np.all(np.isfinite(g.data))


# --- cross-entropy / nll -----------------------------------------------------------------

@given(seed=seeds, n=st.integers(1, 4), c=st.integers(1, 5),
       spatial=st.lists(st.integers(1, 3), min_size=0, max_size=2), reduction=reductions,
       eps=st.sampled_from([0.0, 0.1, 0.5]))
def test_cross_entropy_formula(seed, n, c, spatial, reduction, eps):
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, c) + tuple(spatial)) * 2
    t = r.integers(0, c, (n,) + tuple(spatial))
    logp = _np_log_softmax(x, 1)
    picked = np.take_along_axis(logp, t[:, None], axis=1)[:, 0]
    # label smoothing: target (1 - eps) onehot + eps / C
    ref = -(1 - eps) * picked - eps * logp.mean(axis=1)
    y = F.cross_entropy(Tensor(x), t, reduction=reduction, label_smoothing=eps)
    np.testing.assert_allclose(y.data, _reduce(ref, reduction), rtol=1e-10, atol=1e-12)
    check_grads(lambda x: F.cross_entropy(x, t, reduction=reduction, label_smoothing=eps), [x])


@given(seed=seeds, n=st.integers(1, 4), c=st.integers(1, 5), reduction=reductions)
def test_cross_entropy_is_nll_of_log_softmax(seed, n, c, reduction):
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, c, 2))
    t = r.integers(0, c, (n, 2))
    a = F.cross_entropy(Tensor(x), Tensor(t), reduction=reduction)
    b = F.nll_loss(F.log_softmax(Tensor(x), 1), t, reduction=reduction)
    np.testing.assert_allclose(a.data, b.data, rtol=1e-13)
    check_grads(lambda lp: F.nll_loss(lp, t, reduction=reduction), [x])


def test_cross_entropy_ignore_index():
    r = np.random.default_rng(0)
    x = r.standard_normal((5, 3))
    t = np.array([0, -100, 2, 1, -100])
    keep = t != -100
    logp = _np_log_softmax(x, 1)
    per = np.where(keep, -logp[np.arange(5), np.where(keep, t, 0)], 0.0)
    none = F.cross_entropy(Tensor(x), t, reduction="none")
    np.testing.assert_allclose(none.data, per, rtol=1e-12)
    mean = F.cross_entropy(Tensor(x), t)
    np.testing.assert_allclose(mean.data, per.sum() / keep.sum(), rtol=1e-12)  # over kept only
    check_grads(lambda x: F.cross_entropy(x, t, label_smoothing=0.2), [x])
    ti = np.array([0, 7, 2, 1, 7])
    np.testing.assert_allclose(F.cross_entropy(Tensor(x), ti, ignore_index=7).data, mean.data)


def test_cross_entropy_probability_targets_and_unbatched():
    r = np.random.default_rng(1)
    x = r.standard_normal((4, 3))
    p = r.dirichlet(np.ones(3), 4)
    ref = -(p * _np_log_softmax(x, 1)).sum(1).mean()
    np.testing.assert_allclose(F.cross_entropy(Tensor(x), Tensor(p)).data, ref, rtol=1e-12)
    check_grads(lambda x, p: F.cross_entropy(x, p, label_smoothing=0.1), [x, p])
    # an index target equals its one-hot probability target
    t = np.array([2, 0, 1, 1])
    np.testing.assert_allclose(F.cross_entropy(Tensor(x), t, label_smoothing=0.3).data,
                               F.cross_entropy(Tensor(x), Tensor(np.eye(3)[t]),
                                               label_smoothing=0.3).data, rtol=1e-12)
    # unbatched: (C,) logits and a scalar target
    np.testing.assert_allclose(F.cross_entropy(Tensor(x[1]), np.array(0)).data,
                               -_np_log_softmax(x[1], 0)[0], rtol=1e-12)


def test_cross_entropy_errors():
    x = Tensor(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        F.cross_entropy(x, np.array([0, 3]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        F.cross_entropy(x, np.array([0, -1]))  # would silently wrap in NumPy indexing
    with pytest.raises(ValueError, match="does not match"):
        F.cross_entropy(x, np.array([0, 1, 2]))
    with pytest.raises(TypeError):
        F.nll_loss(x, np.array([0.5, 1.0]))


# --- gaussian nll ------------------------------------------------------------------------

@given(seed=seeds, reduction=reductions, full=st.booleans(), per_row=st.booleans())
def test_gaussian_nll_loss(seed, reduction, full, per_row):
    r = np.random.default_rng(seed)
    x, t = r.standard_normal((3, 4)), r.standard_normal((3, 4))
    v = r.uniform(0.2, 2.0, (3,) if per_row else (3, 4))
    vb = v[:, None] if per_row else v
    ref = 0.5 * (np.log(vb) + (x - t) ** 2 / vb) + (0.5 * np.log(2 * np.pi) if full else 0)
    y = F.gaussian_nll_loss(Tensor(x), Tensor(t), Tensor(v), full=full, reduction=reduction)
    np.testing.assert_allclose(y.data, _reduce(ref, reduction), rtol=1e-12)
    check_grads(lambda x, t, v: F.gaussian_nll_loss(x, t, v, full=full, reduction=reduction),
                [x, t, v])


def test_gaussian_nll_clamps_variance_in_value_only():
    v = Tensor(np.array([0.0, 1.0]), requires_grad=True)
    y = F.gaussian_nll_loss(Tensor(np.array([0.0, 1.0])), Tensor(np.zeros(2)), v,
                            eps=1e-3, reduction="sum")
    np.testing.assert_allclose(y.data, 0.5 * (np.log(1e-3) + 0.0) + 0.5 * (0 + 1), rtol=1e-12)
    (g,) = refgen.grad(y, [v])
    np.testing.assert_allclose(g.data, [0.5 / 1e-3, 0.5 * (1 - 1)], rtol=1e-12)
    with pytest.raises(ValueError, match="negative"):
        F.gaussian_nll_loss(Tensor(np.zeros(2)), Tensor(np.zeros(2)), Tensor(np.array([-1.0, 1.0])))
