"""PixelRNN (van den Oord, Kalchbrenner & Kavukcuoglu 2016): two-dimensional LSTMs over pixels.

The same factorisation as the PixelCNN, p(x) = prod_i p(x_i | x_<i) in raster order, with
the features computed by LSTM layers whose state runs over the image:

- Row LSTM: the state is one row; row i's gates are (paper, eq. 3)

      [o, f, i, g] = [sigmoid, sigmoid, sigmoid, tanh](K^ss * h_{i-1} + K^is * x_i)
      c_i = f . c_{i-1} + i . g,   h_i = o . tanh(c_i)

  with K^is a 1 x k input-to-state convolution over row i, masked so that pixel j sees
  columns <= j (type B), computed for every row at once, and K^ss a 1 x k (k = 3)
  state-to-state convolution of the row above. The context is a triangle above the pixel.
- Diagonal BiLSTM: the image is skewed (row i shifted right by i) so that each column of
  the skewed map is a diagonal of the image; the state runs over these diagonals, left to
  right. K^is is 1 x 1; K^ss is a 2 x 1 convolution of the previous diagonal, so the state
  at (i, j) reads the states at (i, j - 1) and (i - 1, j). A second LSTM scans right to
  left (the image flipped); its state at (i, j) reads (i, j + 1), a future pixel, so its
  output map is shifted down one row before the two are added: the pixel then sees the
  whole rows above and the pixels to its left, its full context.

Each LSTM layer is residual: 2h features in, h hidden states, a 1 x 1 convolution back to 2h,
added to the input (paper, Figure 4). Before them a k x k convolution masked type A (the
PixelCNN's, so pixel i never sees x_i); after them two 1 x 1 layers and the per-pixel
likelihood (Bernoulli for levels=2, an L-way softmax otherwise) of pixelcnn.PixelModel,
with its log_prob, loss and raster-order sampler.

Vectorised over the batch and the whole row (Row LSTM) or diagonal (Diagonal BiLSTM): the
Python loop is over the H rows or H + W - 1 diagonals, the RNN's time steps.
"""
from __future__ import annotations

import refgen.functional as F
from refgen.autograd import Tensor, as_tensor
from refgen.backend import xp
from refgen.models import register
from refgen.models.autoregressive.masks import pixelcnn_mask
from refgen.models.autoregressive.pixelcnn import MaskedConv2d, PixelModel
from refgen.nn import Conv2d, Module, ModuleList, init
from refgen.nn.recurrent import add_forget_bias, lstm_update

__all__ = ["skew", "unskew", "RowLSTM", "DiagonalLSTM", "DiagonalBiLSTM", "PixelRNN"]


def skew(x):
    """(B, C, H, W) -> (B, C, H, W + H - 1): out[..., i, i + j] = x[..., i, j], zeros elsewhere.

    Row i padded to length W + H and the rows read back at length W + H - 1: each row
    then starts one place further right than the one above."""
    b, c, h, w = x.shape
    flat = F.reshape(F.pad(x, (0, h)), (b, c, h * (w + h)))               # (B, C, H (W + H))
    return F.reshape(flat[:, :, :h * (w + h - 1)], (b, c, h, w + h - 1))


def unskew(y, width: int):
    """The inverse of :func:`skew`: (B, C, H, W + H - 1) -> (B, C, H, W), out[i, j] = y[i, i + j]."""
    b, c, h, n = y.shape
    flat = F.pad(F.reshape(y, (b, c, h * n)), (0, h))                     # (B, C, H (n + 1))
    return F.reshape(flat, (b, c, h, n + 1))[:, :, :, :width]


class _RowMaskedConv(Conv2d):
    """A 1 x k convolution along the row, masked type B: pixel j sees columns <= j."""

    def __init__(self, in_channels, out_channels, k, rng, dtype):
        super().__init__(in_channels, out_channels, (1, k), padding=(0, k // 2), rng=rng, dtype=dtype)
        self.register_buffer("mask", pixelcnn_mask(out_channels, in_channels, 1, k, "B").astype(dtype))

    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


def _zeros(b, c, h, w, like):
    return Tensor(xp.zeros((b, c, h, w), dtype=like.dtype))


class RowLSTM(Module):
    """(B, C_in, H, W) -> hidden states (B, h, H, W), one row per time step."""

    def __init__(self, in_channels, hidden, k=3, forget_bias=1.0, rng=None, dtype=xp.float32):
        super().__init__()
        self.hidden = int(hidden)
        self.input_to_state = _RowMaskedConv(in_channels, 4 * hidden, k, rng, dtype)
        self.state_to_state = Conv2d(hidden, 4 * hidden, (1, k), padding=(0, k // 2), rng=rng,
                                     dtype=dtype)
        add_forget_bias(self.state_to_state.bias, forget_bias)

    def forward(self, x):
        x = as_tensor(x)
        b, _, n_rows, w = x.shape
        a_is = self.input_to_state(x)                                       # (B, 4h, H, W)
        h = c = _zeros(b, self.hidden, 1, w, x)                             # h_{-1} = c_{-1} = 0
        rows = []
        for i in range(n_rows):
            gates = a_is[:, :, i:i + 1] + self.state_to_state(h)            # (B, 4h, 1, W)
            h, c = lstm_update(gates, c)
            rows.append(h)
        return F.cat(rows, dim=2)


class DiagonalLSTM(Module):
    """One direction, left to right: (B, C_in, H, W) -> (B, h, H, W); the state at (i, j)
    reads the states at (i, j - 1) and (i - 1, j), one diagonal per time step."""

    def __init__(self, in_channels, hidden, forget_bias=1.0, rng=None, dtype=xp.float32):
        super().__init__()
        self.hidden = int(hidden)
        self.input_to_state = Conv2d(in_channels, 4 * hidden, 1, rng=rng, dtype=dtype)
        self.state_to_state = Conv2d(hidden, 4 * hidden, (2, 1), rng=rng, dtype=dtype)
        add_forget_bias(self.state_to_state.bias, forget_bias)

    def forward(self, x):
        x = as_tensor(x)
        b, _, n_rows, w = x.shape
        a_is = skew(self.input_to_state(x))                                 # (B, 4h, H, W + H - 1)
        h = c = _zeros(b, self.hidden, n_rows, 1, x)
        cols = []
        for t in range(a_is.shape[3]):
            above = F.pad(h, (0, 0, 1, 0))                                  # (B, h, H + 1, 1)
            gates = a_is[:, :, :, t:t + 1] + self.state_to_state(above)     # 2 x 1: rows i - 1, i
            h, c = lstm_update(gates, c)
            cols.append(h)
        return unskew(F.cat(cols, dim=3), w)


class DiagonalBiLSTM(Module):
    """Left-to-right plus right-to-left shifted down one row: (B, C_in, H, W) -> (B, h, H, W)."""

    def __init__(self, in_channels, hidden, forget_bias=1.0, rng=None, dtype=xp.float32):
        super().__init__()
        self.forward_dir = DiagonalLSTM(in_channels, hidden, forget_bias, rng, dtype)
        self.backward_dir = DiagonalLSTM(in_channels, hidden, forget_bias, rng, dtype)

    def forward(self, x):
        x = as_tensor(x)
        h_left = self.forward_dir(x)
        h_right = F.flip(self.backward_dir(F.flip(x, 3)), 3)                # (i, j) saw (i, >= j)
        h_right = F.pad(h_right[:, :, :-1], (0, 0, 1, 0))                   # now rows < i only
        return h_left + h_right


class _Residual(Module):
    """x + 1x1(h -> 2h)(LSTM(x)): 2h feature maps in and out."""

    def __init__(self, lstm, hidden, channels, rng):
        super().__init__()
        self.lstm = lstm
        self.out = MaskedConv2d(hidden, channels, 1, "B", rng=rng)

    def forward(self, x):
        return x + self.out(self.lstm(x))


@register("pixelrnn")
class PixelRNN(PixelModel):
    """Row LSTM (variant='row') or Diagonal BiLSTM (variant='diagonal') PixelRNN.

    hidden: h, the LSTM state size (feature maps are 2h); layers: residual LSTM layers;
    first_kernel: the type A convolution; row_kernel: k of the Row LSTM's 1 x k
    convolutions; head_channels: the 1 x 1 output layer; levels: 2 (Bernoulli, binary
    data) or L > 2 (softmax, data in [-1, 1], 256 for 8-bit images); forget_bias: the
    LSTMs' initial forget-gate bias. One-channel images (the masks of several colour
    channels would also have to split the LSTM's gates into channel groups).
    """

    default_train = dict(steps=3000, batch_size=16, lr=1e-3, schedule="cosine")

    def __init__(self, data_shape, *, seed=0, variant: str = "diagonal", hidden: int = 16,
                 layers: int = 2, first_kernel: int = 7, row_kernel: int = 3,
                 head_channels: int = 32, levels: int = 2, forget_bias: float = 1.0):
        super().__init__()
        self._setup(data_shape, levels, seed)
        c = self.data_shape[0]
        if c != 1:
            raise ValueError(f"pixelrnn models one-channel images (1, H, W); got {self.data_shape}")
        if variant not in ("row", "diagonal"):
            raise ValueError(f"variant must be 'row' or 'diagonal', got {variant!r}")
        self.variant = variant
        g = init.get_rng(int(seed))
        channels = 2 * int(hidden)
        self.input_conv = MaskedConv2d(c, channels, first_kernel, "A", c, rng=g)

        def lstm():
            if variant == "row":
                return RowLSTM(channels, hidden, row_kernel, forget_bias, rng=g)
            return DiagonalBiLSTM(channels, hidden, forget_bias, rng=g)
        self.layers = ModuleList(_Residual(lstm(), hidden, channels, g) for _ in range(int(layers)))
        self.head1 = MaskedConv2d(channels, head_channels, 1, "B", c, rng=g)
        self.head2 = MaskedConv2d(head_channels, c * self.k, 1, "B", c, rng=g)

    def extra_repr(self):
        return super().extra_repr() + f", variant={self.variant!r}"

    def logits(self, x):
        """(B, 1, H, W) -> (B, 1, K, H, W); logits at pixel i depend on x_<i only."""
        x = as_tensor(x)
        b, c, h, w = x.shape
        y = self.input_conv(x)
        for layer in self.layers:
            y = layer(y)
        y = self.head2(F.relu(self.head1(F.relu(y))))                      # (B, K, H, W)
        return F.reshape(y, (b, c, self.k, h, w))
