"""Volume-preserving rearrangements: squeeze (space to depth), flatten, order reversal.

Each only moves coordinates, so its Jacobian is a permutation matrix: log |det| = 0.

- Squeeze (RealNVP): (C, H, W) -> (4C, H/2, W/2), every 2x2 block of pixels becomes four
  channels, trading spatial size for channels so that channel masks and 1x1 convolutions
  can mix neighbouring pixels (refgen.functional.pixel_unshuffle).
- Flatten: (C, H, W) -> (C*H*W,), the flat latent every flow ends in.
- Reverse: flip the order of the features (channels), so that the next coupling or
  autoregressive layer sees the coordinates the previous one could not (MAF, RealNVP).
"""
from __future__ import annotations

import math

import refgen.functional as F
from refgen.autograd import as_tensor
from refgen.models.flows.base import FlowLayer, zero_logdet

__all__ = ["Squeeze", "Flatten", "Reverse"]


class Squeeze(FlowLayer):
    """(B, C, H, W) -> (B, 4C, H/2, W/2); log|det| = 0."""

    def forward(self, x):
        x = as_tensor(x)
        return F.pixel_unshuffle(x, 2), zero_logdet(x)

    def inverse(self, y):
        return F.pixel_shuffle(as_tensor(y), 2)


class Flatten(FlowLayer):
    """(B, *shape) -> (B, prod(shape)); log|det| = 0."""

    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def extra_repr(self):
        return f"shape={self.shape}"

    def forward(self, x):
        x = as_tensor(x)
        return F.reshape(x, (x.shape[0], math.prod(self.shape))), zero_logdet(x)

    def inverse(self, y):
        y = as_tensor(y)
        return F.reshape(y, (y.shape[0],) + self.shape)


class Reverse(FlowLayer):
    """Reverse the features (dim 1): a fixed permutation, its own inverse; log|det| = 0."""

    def forward(self, x):
        x = as_tensor(x)
        return F.flip(x, 1), zero_logdet(x)

    def inverse(self, y):
        return F.flip(as_tensor(y), 1)
