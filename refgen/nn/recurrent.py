"""The LSTM (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000).

From the four pre-activations a = W x_t + U h_{t-1} + b, split in the order (i, f, g, o):

    i_t = sigmoid(a_i)      input gate
    f_t = sigmoid(a_f)      forget gate
    g_t = tanh(a_g)         candidate cell
    o_t = sigmoid(a_o)      output gate
    c_t = f_t * c_{t-1} + i_t * g_t
    h_t = o_t * tanh(c_t)

:func:`lstm_update` is these six lines on any pre-activation map whose ``dim`` holds the
4H gate channels, so convolutional LSTMs (PixelRNN's Row and Diagonal LSTMs, whose W and U
are convolutions) reuse it unchanged.

The forget gate's bias starts at ``forget_bias`` (1 by default; Gers et al. 2000, Jozefowicz
et al. 2015): f_t starts near sigmoid(1) = 0.73, so the cell keeps its memory early in
training instead of halving it at every step.
"""
from __future__ import annotations

import math

import refgen.functional as F
from refgen.autograd import as_tensor
from refgen.backend import xp
from refgen.nn import init
from refgen.nn.module import Module, Parameter

__all__ = ["lstm_update", "add_forget_bias", "LSTMCell", "LSTM"]


def lstm_update(gates, c_prev, dim: int = 1):
    """(h_t, c_t) from the pre-activations ``gates`` (4H along ``dim``, order i, f, g, o) and
    the previous cell c_{t-1} (H along ``dim``, or None for zeros)."""
    a_i, a_f, a_g, a_o = F.chunk(as_tensor(gates), 4, dim=dim)
    i, f, o = F.sigmoid(a_i), F.sigmoid(a_f), F.sigmoid(a_o)
    g = F.tanh(a_g)
    c = i * g if c_prev is None else f * c_prev + i * g
    h = o * F.tanh(c)
    return h, c


def add_forget_bias(bias, value: float):
    """Add ``value`` to the forget-gate quarter of a (4H,) gate bias, in place."""
    h = bias.shape[0] // 4
    bias.data[h:2 * h] += value


class LSTMCell(Module):
    """One step: (x_t (B, I), (h, c) each (B, H) or None) -> (h_t, c_t).

    weight_ih (4H, I), weight_hh (4H, H), bias (4H,): torch's shapes and its U(+-1/sqrt(H))
    initialisation, one bias instead of torch's two (their sum is all the equations use)."""

    def __init__(self, input_size: int, hidden_size: int, forget_bias: float = 1.0, rng=None,
                 dtype=xp.float32):
        super().__init__()
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.forget_bias = float(forget_bias)
        g = init.get_rng(rng)
        bound = 1.0 / math.sqrt(self.hidden_size)
        h4 = 4 * self.hidden_size
        self.weight_ih = Parameter(xp.zeros((h4, self.input_size), dtype=dtype))
        self.weight_hh = Parameter(xp.zeros((h4, self.hidden_size), dtype=dtype))
        self.bias = Parameter(xp.zeros((h4,), dtype=dtype))
        for p in (self.weight_ih, self.weight_hh, self.bias):
            init.uniform_(p, -bound, bound, rng=g)
        add_forget_bias(self.bias, self.forget_bias)

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}, forget_bias={self.forget_bias}"

    def gates(self, x, h_prev):
        """a = W x + U h_{t-1} + b: (B, 4H)."""
        a = F.linear(x, self.weight_ih, self.bias)
        return a if h_prev is None else a + F.linear(h_prev, self.weight_hh)

    def forward(self, x, state=None):
        h_prev, c_prev = (None, None) if state is None else state
        return lstm_update(self.gates(as_tensor(x), h_prev), c_prev, dim=-1)


class LSTM(Module):
    """A sequence (B, T, I) -> (outputs (B, T, H), (h_T, c_T)), one cell over time.

    W x_t for every t is one matrix product before the loop; only U h_{t-1} is sequential."""

    def __init__(self, input_size: int, hidden_size: int, forget_bias: float = 1.0, rng=None,
                 dtype=xp.float32):
        super().__init__()
        self.cell = LSTMCell(input_size, hidden_size, forget_bias, rng=rng, dtype=dtype)

    def forward(self, x, state=None):
        x = as_tensor(x)
        if x.ndim != 3:
            raise ValueError(f"LSTM takes (batch, time, features); got shape {tuple(x.shape)}")
        cell = self.cell
        wx = F.linear(x, cell.weight_ih, cell.bias)                        # (B, T, 4H)
        h, c = (None, None) if state is None else state
        outs = []
        for t in range(x.shape[1]):
            a = wx[:, t] if h is None else wx[:, t] + F.linear(h, cell.weight_hh)
            h, c = lstm_update(a, c, dim=-1)
            outs.append(h)
        if not outs:
            raise ValueError("LSTM needs at least one time step")
        return F.stack(outs, dim=1), (h, c)

