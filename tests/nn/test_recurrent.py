"""The LSTM cell and layer: its equations on fixed inputs, gradients, the forget-gate bias."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refgen import nn
from refgen.autograd import Tensor
from refgen.testing import check_grads

pytestmark = pytest.mark.usefixtures("numpy_backend")

f64 = np.float64


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def _sig(a):
    return 1.0 / (1.0 + np.exp(-a))


def _cell_ref(x, h, c, w_ih, w_hh, b):
    """The LSTM equations written out in NumPy, gates in the order i, f, g, o."""
    a = x @ w_ih.T + h @ w_hh.T + b
    H = h.shape[1]
    i, f, g, o = _sig(a[:, :H]), _sig(a[:, H:2 * H]), np.tanh(a[:, 2 * H:3 * H]), _sig(a[:, 3 * H:])
    c_new = f * c + i * g
    return o * np.tanh(c_new), c_new


def test_cell_matches_its_equations_on_fixed_inputs():
    cell = nn.LSTMCell(3, 2, rng=0, dtype=f64)
    x, h, c = _x((4, 3), 1), _x((4, 2), 2), _x((4, 2), 3)
    h1, c1 = cell(Tensor(x), (Tensor(h), Tensor(c)))
    rh, rc = _cell_ref(x, h, c, cell.weight_ih.numpy(), cell.weight_hh.numpy(), cell.bias.numpy())
    np.testing.assert_allclose(h1.numpy(), rh, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(c1.numpy(), rc, rtol=1e-12, atol=1e-14)


def test_cell_by_hand_one_unit():
    """H = 1, I = 1, all weights set: every gate value computed by hand."""
    cell = nn.LSTMCell(1, 1, forget_bias=0.0, rng=0, dtype=f64)
    cell.weight_ih.data[:] = np.array([[0.5], [-1.0], [2.0], [0.25]])  # i, f, g, o
    cell.weight_hh.data[:] = np.array([[1.0], [0.5], [-0.5], [3.0]])
    cell.bias.data[:] = np.array([0.1, 0.2, -0.3, 0.4])
    x, h, c = 0.7, -0.2, 1.5
    a = np.array([0.5 * x + h + 0.1, -x + 0.5 * h + 0.2, 2 * x - 0.5 * h - 0.3, 0.25 * x + 3 * h + 0.4])
    i, f, g, o = _sig(a[0]), _sig(a[1]), np.tanh(a[2]), _sig(a[3])
    c_want = f * c + i * g
    h1, c1 = cell(Tensor(np.array([[x]])), (Tensor(np.array([[h]])), Tensor(np.array([[c]]))))
    assert abs(c1.item() - c_want) < 1e-14
    assert abs(h1.item() - o * np.tanh(c_want)) < 1e-14


def test_forget_bias_is_added_to_the_forget_quarter_only():
    a = nn.LSTMCell(3, 4, forget_bias=0.0, rng=5, dtype=f64).bias.numpy()
    b = nn.LSTMCell(3, 4, forget_bias=1.0, rng=5, dtype=f64).bias.numpy()
    np.testing.assert_allclose(b - a, np.r_[np.zeros(4), np.ones(4), np.zeros(8)], atol=1e-15)


def test_layer_equals_the_cell_unrolled_and_zero_state_is_none():
    lstm = nn.LSTM(3, 2, rng=1, dtype=f64)
    x = _x((2, 5, 3), 4)
    out, (hT, cT) = lstm(Tensor(x))
    h = c = np.zeros((2, 2))
    cell = lstm.cell
    for t in range(5):
        h, c = _cell_ref(x[:, t], h, c, cell.weight_ih.numpy(), cell.weight_hh.numpy(), cell.bias.numpy())
        np.testing.assert_allclose(out.numpy()[:, t], h, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(hT.numpy(), h, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(cT.numpy(), c, rtol=1e-12, atol=1e-14)
    # a given state continues the sequence: running 5 steps = 3 steps then 2 from their state
    o1, s1 = lstm(Tensor(x[:, :3]))
    o2, _ = lstm(Tensor(x[:, 3:]), s1)
    np.testing.assert_allclose(o2.numpy(), out.numpy()[:, 3:], rtol=1e-12, atol=1e-14)


def test_layer_rejects_a_flat_input():
    with pytest.raises(ValueError, match="batch, time, features"):
        nn.LSTM(3, 2, rng=0, dtype=f64)(Tensor(_x((2, 3))))


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 10_000))
def test_lstm_update_gradients(seed):
    """The gate equations, on generic pre-activations and cells (the op every LSTM here uses)."""
    def f(gates, c):
        h1, c1 = nn.lstm_update(gates, c, dim=1)
        return h1 * 1.3 + c1      # both outputs reach the checked scalar
    check_grads(f, [_x((2, 8, 3), seed), _x((2, 2, 3), seed + 1)], order=2)


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 10_000))
def test_layer_gradients_through_time_and_state(seed):
    """Through W x_t, U h_{t-1} at every step and the initial state (h_0, c_0)."""
    lstm = nn.LSTM(2, 3, rng=seed, dtype=f64)

    def f(x, h0, c0):
        out, (h, c) = lstm(x, (h0, c0))
        return out.sum() + (c * c).sum()
    check_grads(f, [_x((2, 4, 2), seed), _x((2, 3), seed + 1), _x((2, 3), seed + 2)], order=2)
