"""Activation normalisation (Glow): a per-channel affine map initialised from the data.

    y = x * exp(log_s) + b        per channel c, at every pixel (or per feature of a vector)

The Jacobian is diagonal with exp(log_s_c) repeated at each of the H*W pixels, so

    log |det dy/dx| = H * W * sum_c log_s_c          (H = W = 1 for vectors)

Data-dependent initialisation: on the first forward pass in training mode, log_s and b are
set so that this batch's output has zero mean and unit variance per channel,

    log_s = -log(std_c + eps),  b = -mean_c * exp(log_s),

after which both are ordinary learned parameters. The ``initialized`` buffer is saved with
the weights, so a loaded model is not initialised again.
"""
from __future__ import annotations

import math

import refgen.functional as F
from refgen.autograd import as_tensor
from refgen.backend import xp
from refgen.models.flows.base import FlowLayer, constant_logdet
from refgen.nn import Parameter

__all__ = ["ActNorm"]


class ActNorm(FlowLayer):
    """Per-channel scale and shift; ``shape`` is one example's shape, (D,) or (C, H, W)."""

    def __init__(self, shape, eps: float = 1e-6, dtype=xp.float32):
        super().__init__()
        shape = tuple(int(s) for s in shape)
        per_channel = (shape[0],) + (1,) * (len(shape) - 1)        # (D,) or (C, 1, 1)
        self.pixels = math.prod(shape[1:])                          # H * W (1 for vectors)
        self.eps = eps
        self.log_s = Parameter(xp.zeros(per_channel, dtype=dtype))
        self.b = Parameter(xp.zeros(per_channel, dtype=dtype))
        self.register_buffer("initialized", xp.zeros((), dtype=xp.int8))

    def extra_repr(self):
        return f"channels={self.log_s.shape[0]}, initialized={bool(self.initialized)}"

    def initialize(self, x):
        """Set log_s and b from the batch x (B, C, ...) so that the output is standardised."""
        data = x.data if hasattr(x, "data") else x
        axes = (0,) + tuple(range(2, data.ndim))                    # all but the channel axis
        mean = data.mean(axis=axes).reshape(self.b.shape)
        std = data.std(axis=axes).reshape(self.b.shape)
        log_s = -xp.log(std + self.eps)
        self.log_s.data = log_s.astype(self.log_s.dtype)
        self.b.data = (-mean * xp.exp(log_s)).astype(self.b.dtype)
        self.initialized = xp.ones((), dtype=xp.int8)

    def forward(self, x):
        x = as_tensor(x)
        if self.training and not bool(self.initialized):
            self.initialize(x)
        y = x * F.exp(self.log_s) + self.b
        return y, constant_logdet(self.pixels * self.log_s.sum(), x)   # H W sum_c log s_c

    def inverse(self, y):
        y = as_tensor(y)
        return (y - self.b) * F.exp(-self.log_s)
