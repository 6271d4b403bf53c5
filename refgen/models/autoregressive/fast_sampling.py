"""Fast sampling of convolutional autoregressive models (Ramachandran et al. 2017, "Fast
Generation for Convolutional Autoregressive Models"): every layer is computed once at every
position, not once per sampled pixel.

Why a cached value is final. Every layer of a PixelCNN is causal: its value at position p
depends on the inputs at positions before p in raster order only (and, with colour groups,
on the earlier channels of p). During sampling those inputs are already drawn when p is
reached and are never redrawn, so the value of every layer at p, computed once then, is the
value the full network would give on the finished image. A layer at p reads the layer
below inside its kernel window; the taps it keeps are all at positions <= p, whose values
are in the cache; the taps its mask drops read cache entries not yet written (zeros) and
weigh them 0.

The cost per sampled sub-pixel is one position of each layer (one row of the gated
PixelCNN's vertical stack per image row), so an image costs about one pass of the network
instead of H W C passes.

``ConvCache`` holds the zero-padded input of one stride-1 convolution, filled position by
position (or row by row) as sampling goes, and gives the convolution's output at one
position or along one row. ``pointwise`` is a 1x1 convolution at one position or along a
row. The models' ``_cached_logits`` (pixelcnn.py, gated_pixelcnn.py) chain them.
"""
from __future__ import annotations

import refgen.functional as F
from refgen.backend import xp

__all__ = ["ConvCache", "pointwise", "conv_at", "relu"]


class ConvCache:
    """The input of one stride-1 convolution, zero-padded, written as it becomes final.

    weight (O, C, kh, kw) (a masked convolution's W * M) and bias (O,) as raw arrays; the
    input (n, C, H, W) is padded by ``top`` rows above, ``left`` columns on the left, and
    kh - 1 - top below, kw - 1 - left on the right, so the output has the input's size and
    out[i, j] = sum_{a, b} W[:, :, a, b] . in_padded[i + a, j + b].
    """

    def __init__(self, weight, bias, n: int, height: int, width: int, top: int, left: int):
        self.weight, self.bias = weight, bias
        self.kh, self.kw = weight.shape[2:]
        self.top, self.left = top, left
        self.buf = xp.zeros((n, weight.shape[1], height + self.kh - 1, width + self.kw - 1),
                            dtype=weight.dtype)               # (n, C, H + kh - 1, W + kw - 1)

    def put(self, i: int, j: int, value):
        """The input at position (i, j): value (n, C)."""
        self.buf[:, :, self.top + i, self.left + j] = value

    def put_row(self, i: int, value):
        """The input on row i: value (n, C, W)."""
        self.buf[:, :, self.top + i, self.left:self.left + value.shape[-1]] = value

    def at(self, i: int, j: int):
        """The output at (i, j), (n, O): the kernel window dotted with W."""
        window = self.buf[:, :, i:i + self.kh, j:j + self.kw]                # (n, C, kh, kw)
        return xp.tensordot(window, self.weight, axes=([1, 2, 3], [1, 2, 3])) + self.bias

    def row(self, i: int):
        """The output along row i, (n, O, W): the convolution of the kh input rows it sees."""
        strip = self.buf[:, :, i:i + self.kh]                               # (n, C, kh, W + kw - 1)
        return F.conv2d(strip, self.weight, self.bias).data[:, :, 0]


def pointwise(weight, bias, v):
    """A 1x1 convolution (weight (O, C, 1, 1)) at one position, v (n, C) -> (n, O), or along a
    row, v (n, C, W) -> (n, O, W)."""
    w = weight[:, :, 0, 0]                                                  # (O, C)
    if v.ndim == 2:
        return v @ w.T + bias
    return w @ v + bias[:, None]


def conv_at(conv, v):
    """An unmasked 1x1 Conv2d module at one position or along a row (see ``pointwise``)."""
    return pointwise(conv.weight.data, conv.bias.data, v)


def relu(a):
    return F.relu(a).data
