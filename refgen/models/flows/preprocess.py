"""Bijections from image data in [0, 1] to an unbounded space, with their log-determinants.

A density on the unbounded space pulled back through one of these is an exact density on
[0, 1]^D, so test NLLs and bits/dim are those of the data as given, not of a transformed copy.

- LogitTransform (RealNVP, MAF): s = alpha + (1 - 2 alpha) x, y = logit(s) = log s - log(1 - s).
  dy/dx = (1 - 2 alpha) / (s (1 - s)) elementwise, so

      log |det dy/dx| = sum_d [log(1 - 2 alpha) - log s_d - log(1 - s_d)].

  alpha > 0 keeps the pixels 0 and 1 at a finite y.
- Shift (Glow): y = x - 1/2, log|det| = 0.
"""
from __future__ import annotations

import math

import refgen.functional as F
from refgen.autograd import as_tensor
from refgen.models.flows.base import FlowLayer, zero_logdet

__all__ = ["LogitTransform", "Shift"]


class LogitTransform(FlowLayer):
    """x in [0, 1] -> logit(alpha + (1 - 2 alpha) x)."""

    def __init__(self, alpha: float = 0.05):
        super().__init__()
        if not 0.0 < alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
        self.alpha = float(alpha)

    def extra_repr(self):
        return f"alpha={self.alpha}"

    def forward(self, x):
        x = as_tensor(x)
        s = self.alpha + (1.0 - 2.0 * self.alpha) * x
        log_s, log_1ms = F.log(s), F.log(1.0 - s)
        logdet = F.sum_except_batch(math.log(1.0 - 2.0 * self.alpha) - log_s - log_1ms)
        return log_s - log_1ms, logdet

    def inverse(self, y):
        return (F.sigmoid(as_tensor(y)) - self.alpha) / (1.0 - 2.0 * self.alpha)


class Shift(FlowLayer):
    """x -> x - 1/2 (centres [0, 1] data); log|det| = 0."""

    def forward(self, x):
        x = as_tensor(x)
        return x - 0.5, zero_logdet(x)

    def inverse(self, y):
        return as_tensor(y) + 0.5
