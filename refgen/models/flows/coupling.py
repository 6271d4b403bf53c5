"""Coupling layers (NICE, RealNVP, Glow): change half of x as a function of the other half.

With a binary mask m (masks.py), x_a = m * x is kept and the rest is transformed by
functions s, t of x_a alone, computed by any network (nets.py):

    additive (NICE):   y = x_a + (1 - m) * (x + t(x_a))
    affine (RealNVP):  y = x_a + (1 - m) * (x * exp(s(x_a)) + t(x_a))

Ordering the kept coordinates first, the Jacobian is block triangular,

    dy/dx = [[ I,        0            ],
             [ d./dx_a,  diag(exp(s)) ]],

so its determinant is the product of the diagonal whatever the networks are:

    log |det dy/dx| = sum_{m=0} s(x_a)       (0 for the additive coupling: volume preserved)

and the inverse needs no inversion of a network, since x_a = y_a is known from y:

    x = y_a + (1 - m) * (y - t(y_a)) * exp(-s(y_a)).

The same code serves vectors (B, D) with an MLP and images (B, C, H, W) with a CNN; the
network's output has twice the channels (features) of x: (raw s, t) stacked on dim 1.
The log-scale is kept bounded, s = scale * tanh(raw s) with a learned per-channel
``scale`` (RealNVP's choice), so one layer cannot blow up early in training.
"""
from __future__ import annotations

import refgen.functional as F
from refgen.autograd import Tensor, as_tensor
from refgen.backend import xp
from refgen.models.flows.base import FlowLayer, zero_logdet
from refgen.nn import Parameter

__all__ = ["AdditiveCoupling", "AffineCoupling"]


class _Coupling(FlowLayer):
    def __init__(self, mask, net):
        super().__init__()
        self.register_buffer("mask", xp.asarray(mask))   # (D,) or (C, H, W), fixed
        self.net = net

    def _masks(self):
        m = Tensor(self.mask)
        return m, 1 - m

    def extra_repr(self):
        return f"shape={tuple(self.mask.shape)}, kept={int(self.mask.sum())}"


class AdditiveCoupling(_Coupling):
    """NICE: y = x_a + (1 - m) * (x + t(x_a)); log|det| = 0.  ``net``: x -> t, same shape."""

    def forward(self, x):
        x = as_tensor(x)
        m, rest = self._masks()
        t = self.net(x * m)
        return x + rest * t, zero_logdet(x)

    def inverse(self, y):
        y = as_tensor(y)
        m, rest = self._masks()
        return y - rest * self.net(y * m)           # y_a = x_a, so t is recomputed exactly


class AffineCoupling(_Coupling):
    """RealNVP / Glow: y = x_a + (1 - m) * (x exp(s) + t); log|det| = sum of s over the
    changed half. ``net``: x -> (raw s, t) stacked on dim 1 (twice x's channels)."""

    def __init__(self, mask, net):
        super().__init__(mask, net)
        shape = tuple(self.mask.shape)
        per_channel = (shape[0],) + (1,) * (len(shape) - 1)    # (D,) or (C, 1, 1)
        self.scale = Parameter(xp.ones(per_channel, dtype=self.mask.dtype))

    def _scale_shift(self, x_a):
        m, rest = self._masks()
        raw, t = F.chunk(self.net(x_a), 2, dim=1)
        log_s = rest * (self.scale * F.tanh(raw))   # s = 0 on the kept half
        return log_s, rest * t

    def forward(self, x):
        x = as_tensor(x)
        m, _ = self._masks()
        log_s, t = self._scale_shift(x * m)
        y = x * F.exp(log_s) + t                    # kept half: x * 1 + 0
        return y, F.sum_except_batch(log_s)

    def inverse(self, y):
        y = as_tensor(y)
        m, _ = self._masks()
        log_s, t = self._scale_shift(y * m)
        return (y - t) * F.exp(-log_s)
