"""Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN
Decoders"): two stacks instead of one masked kernel, so there is no blind spot.

- The vertical stack sees every row above: its (k//2 + 1) x k kernel covers rows i - k//2 .. i
  (the current row too), and before it reaches the horizontal stack its output is shifted
  down one row, so the horizontal stack at row i only receives rows < i, all columns.
- The horizontal stack sees the current row to the left: a 1 x (k//2 + 1) kernel covering
  columns j - k//2 .. j (the first layer drops column j: type A).
Together they cover every pixel before (i, j) in raster order; the receptive field grows
as a rectangle above plus a segment to the left, not as a left-leaning cone.

Each layer is gated, with a residual connection on the horizontal stack:

    v  = W_v * v_in                                 (B, 2h, H, W)
    hh = W_h * h_in + W_vh shift_down(v)
    v_out = tanh(v_1) . sigmoid(v_2)                (split along channels)
    h_out = h_in + W_o (tanh(hh_1) . sigmoid(hh_2))

Only one data channel (grey-scale images) is supported: splitting the gates into colour
groups is left out.

Sampling (the cached sampler, fast_sampling.py): the vertical stack on row i - 1 sees rows
<= i - 1 only, so at the start of row i it is computed for the whole row, once; the
horizontal stack is then computed at one position per sampled pixel.

Conditioning (the paper's conditional PixelCNN, eq. 5 with a spatial map s = m(h)): a layer
built with ``cond_channels`` adds V_v * s and V_h * s (1x1 convolutions) to the gates' inputs,

    v_out = tanh(v_1 + V_1 s) . sigmoid(v_2 + V_2 s),   the same for hh,

so every position may read the whole map s (it is given, not generated); VQ-VAE-2's bottom
prior reads the upsampled top codes this way (refgen/models/vae/vqvae2.py).
"""
from __future__ import annotations

import refgen.functional as F
from refgen.autograd import as_tensor
from refgen.backend import xp
from refgen.models import register
from refgen.models.autoregressive.fast_sampling import ConvCache, conv_at, relu
from refgen.models.autoregressive.pixelcnn import PixelModel
from refgen.nn import Conv2d, Module, ModuleList, init

__all__ = ["GatedLayer", "GatedPixelCNN"]


def _gate(a):
    """tanh(a_1) * sigmoid(a_2), the halves of (B, 2h, H, W) along channels -> (B, h, H, W)."""
    h = a.shape[1] // 2
    return F.tanh(a[:, :h]) * F.sigmoid(a[:, h:])


def _shift_down(a):
    """Row i gets row i - 1 (row 0 gets zeros): the vertical stack's view becomes rows < i."""
    return F.pad(a, (0, 0, 1, 0))[:, :, :-1]


class GatedLayer(Module):
    """One layer of both stacks; ``first`` makes the horizontal kernel type A (no centre)."""

    def __init__(self, in_channels: int, channels: int, kernel: int, first: bool, rng=None,
                 cond_channels: int = 0):
        super().__init__()
        self.first, self.r = first, kernel // 2
        self.v_conv = Conv2d(in_channels, 2 * channels, (self.r + 1, kernel), rng=rng)
        self.h_conv = Conv2d(in_channels, 2 * channels, (1, self.r + 1), rng=rng)
        self.v_to_h = Conv2d(2 * channels, 2 * channels, 1, rng=rng)
        self.h_out = Conv2d(channels, channels, 1, rng=rng)
        mask = xp.ones(self.h_conv.weight.shape, dtype=self.h_conv.weight.dtype)
        if first:
            mask[..., -1] = 0  # the centre tap: x_i must not see itself
        self.register_buffer("h_mask", mask)
        if cond_channels:  # V_v, V_h of the conditional gates
            self.v_cond = Conv2d(cond_channels, 2 * channels, 1, rng=rng)
            self.h_cond = Conv2d(cond_channels, 2 * channels, 1, rng=rng)

    def h_weight(self):
        """The horizontal kernel times its mask, (2h, in, 1, r + 1)."""
        return self.h_conv.weight * self.h_mask

    def forward(self, v_in, h_in, cond=None):
        r = self.r
        v = self.v_conv(F.pad(v_in, (r, r, r, 0)))                   # rows i-r..i, cols j-r..j+r
        hh = F.conv2d(F.pad(h_in, (r, 0, 0, 0)), self.h_weight(),
                      self.h_conv.bias)                              # row i, cols j-r..j (A: ..j-1)
        hh = hh + self.v_to_h(_shift_down(v))                        # + rows < i
        if cond is not None:                                         # + V s, s (B, c_s, H, W)
            v, hh = v + self.v_cond(cond), hh + self.h_cond(cond)
        h_out = self.h_out(_gate(hh))
        return _gate(v), (h_out if self.first else h_in + h_out)


@register("gated-pixelcnn")
class GatedPixelCNN(PixelModel):
    """``layers`` gated layers (the first with a ``first_kernel`` x ``first_kernel`` reach,
    type A), then a ReLU / 1x1 / ReLU / 1x1 head on the horizontal stack.

    The defaults are the CPU-hour recipe of benchmarks/pixelcnn_mnist.py for 28x28 MNIST
    (docs/autoregressive.md; benchmarks/results/gated_pixelcnn_mnist_1h_reach27.json): a
    27x27 first layer (the papers use 7x7) sees 14 rows above and 13 columns either side on
    its own, 25 rows after 12 layers, for about 1.8 times the multiply-adds of a 3x3 layer
    (its input has one channel); 12 layers of 24 channels; peak learning rate 6e-3.
    benchmarks/pixelcnn_recipe.py measures what each of these buys."""

    default_train = dict(steps=7800, batch_size=16, lr=6e-3, warmup=200, schedule="cosine")
    samplers = ("cached", "full")

    def __init__(self, data_shape, *, seed=0, channels: int = 24, layers: int = 12,
                 first_kernel: int = 27, kernel: int = 3, head_channels: int = 64,
                 levels: int = 2):
        super().__init__()
        self._setup(data_shape, levels, seed)
        c = self.data_shape[0]
        if c != 1:
            raise ValueError(f"gated-pixelcnn models one-channel images; got {c} channels")
        g = init.get_rng(int(seed))
        self.layers = ModuleList(
            [GatedLayer(c, channels, first_kernel, True, rng=g)]
            + [GatedLayer(channels, channels, kernel, False, rng=g) for _ in range(int(layers) - 1)])
        self.head1 = Conv2d(channels, head_channels, 1, rng=g)
        self.head2 = Conv2d(head_channels, c * self.k, 1, rng=g)

    def logits(self, x):
        """(B, 1, H, W) -> (B, 1, K, H, W); logits at pixel i depend on exactly x_<i."""
        x = as_tensor(x)
        b, c, h, w = x.shape
        v, hs = x, x
        for layer in self.layers:
            v, hs = layer(v, hs)
        y = self.head2(F.relu(self.head1(F.relu(hs))))
        return F.reshape(y, (b, c, self.k, h, w))

    def _cached_logits(self, x):
        n, _, h, w = x.shape
        vert = [ConvCache(L.v_conv.weight.data, L.v_conv.bias.data, n, h, w, L.r, L.r)
                for L in self.layers]                    # padded (r, r, r, 0) as in forward
        horiz = [ConvCache(L.h_weight().data, L.h_conv.bias.data, n, h, w, 0, L.r)
                 for L in self.layers]                   # padded (r, 0, 0, 0)
        above = [None] * len(self.layers)    # v_to_h(shift_down(v)) on the current row (n, 2h, W)

        def logits_at(i, j, ch):
            if j == 0:  # a new row: rows < i are final, and so is the vertical stack on row i - 1
                v = x[:, :, i - 1] if i else None                              # (n, 1, W)
                for k, (layer, cache) in enumerate(zip(self.layers, vert)):
                    if i:
                        cache.put_row(i - 1, v)
                        a = cache.row(i - 1)                                   # (n, 2h, W)
                        v = _gate(a).data
                    else:  # row 0 gets shift_down's zero row
                        a = xp.zeros((n, layer.v_to_h.in_channels, w), dtype=x.dtype)
                    above[k] = conv_at(layer.v_to_h, a)
            else:       # x at (i, j - 1) was drawn after the last call
                horiz[0].put(i, j - 1, x[:, :, i, j - 1])
            hs = x[:, :, i, j]                                                 # (n, 1)
            for layer, cache, a in zip(self.layers, horiz, above):
                cache.put(i, j, hs)
                hh = cache.at(i, j) + a[:, :, j]                               # (n, 2h)
                out = conv_at(layer.h_out, _gate(hh).data)
                hs = out if layer.first else hs + out
            y = conv_at(self.head2, relu(conv_at(self.head1, relu(hs))))       # (n, K)
            return y.reshape(n, 1, self.k)[:, ch]
        return logits_at
