"""PixelCNN (van den Oord, Kalchbrenner & Kavukcuoglu 2016): masked convolutions over pixels.

    p(x) = prod_{i=1}^{H W} prod_{c=1}^{C} p(x_{i,c} | x_{<i}, x_{i,<c})   (raster order)

A stack of convolutions whose kernels are masked (masks.py::pixelcnn_mask) so that the
output at pixel i sees only pixels before i: type A in the first layer (the centre tap off),
type B after it (the centre on: features at i already depend on x_<i only). All H W
conditionals come from one forward pass. Sampling draws the H W C sub-pixels one at a time;
the default sampler computes each layer once at each position, reusing what earlier pixels
computed (fast_sampling.py), instead of running the whole network for every sub-pixel.

The blind spot: stacking masked k x k kernels grows the receptive field as a cone that
leans left; a pixel up and to the right (row i - a, column j + b with b > a (k//2)) is never
reached however deep the stack. gated_pixelcnn.py removes it with two stacks.

Per-pixel likelihood (shared with the gated model): ``levels=2`` is one Bernoulli logit per
sub-pixel on {0, 1} data; ``levels=L > 2`` is an L-way categorical (softmax) on data in
[-1, 1] holding the levels k / (L - 1) * 2 - 1 (L = 256 for 8-bit 'mnist').
"""
from __future__ import annotations


import refgen.functional as F
from refgen.autograd import Tensor, as_tensor, no_grad
from refgen.backend import xp
from refgen.models import register
from refgen.models.autoregressive.fast_sampling import ConvCache, pointwise, relu
from refgen.models.autoregressive.masks import pixelcnn_mask
from refgen.models.base import DataSpec
from refgen.nn import Conv2d, Module, ModuleList, init

__all__ = ["MaskedConv2d", "PixelModel", "PixelCNN"]


class MaskedConv2d(Conv2d):
    """A 'same'-padded k x k convolution with weight W * M, M a raster-order mask (A or B)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, mask_type: str,
                 data_channels: int = 1, rng=None, dtype=xp.float32):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                         rng=rng, dtype=dtype)
        self.mask_type = mask_type
        self.register_buffer("mask", pixelcnn_mask(out_channels, in_channels, kernel_size,
                                                   kernel_size, mask_type, data_channels).astype(dtype))

    def masked_weight(self):
        """W * M, (out, in, k, k)."""
        return self.weight * self.mask

    def forward(self, x):
        return F.conv2d(x, self.masked_weight(), self.bias, padding=self.padding)

    def cache(self, n: int, height: int, width: int):
        """A ConvCache of this layer's input for sampling n images of height x width."""
        r = self.padding
        return ConvCache(self.masked_weight().data, self.bias.data, n, height, width, r, r)

    def at(self, v):
        """A 1x1 masked convolution applied to v (n, in) at one position -> (n, out)."""
        return pointwise(self.masked_weight().data, self.bias.data, v)

    def extra_repr(self):
        return super().extra_repr() + f", mask={self.mask_type}"


class PixelModel(Module):
    """What every raster-order pixel model shares: the per-pixel likelihood, the loss and the
    sampler. Subclasses define ``logits(x) -> (B, C, K, H, W)`` (K = 1 for levels=2, else L)."""

    data_spec = DataSpec(kinds=("binary", "continuous"), ndims=(3,))
    # evaluation's FID draws 100 samples, not 10,000: a coarse, high-biased check; these
    # models are judged by their test NLL (the cached sampler draws about 24 images a CPU
    # second for the 28x28 gated default, so 10,000 would take some 7 minutes on one core)
    eval_samples = 100

    def _setup(self, data_shape, levels, seed):
        self.data_shape = tuple(int(s) for s in data_shape)
        if len(self.data_shape) != 3:
            raise ValueError(f"{type(self).__name__} models images (C, H, W); got {self.data_shape}")
        self.levels = int(levels)
        if self.levels < 2:
            raise ValueError(f"levels must be at least 2, got {levels}")
        self.k = 1 if self.levels == 2 else self.levels  # logits per sub-pixel

    def extra_repr(self):
        return f"data_shape={self.data_shape}, levels={self.levels}"

    # data <-> level index k in {0..L-1}
    def _targets(self, x):
        if self.levels == 2:
            ok = bool(((x == 0) | (x == 1)).all())
            what = "binary {0, 1} data"
        else:
            ok = bool(((x >= -1) & (x <= 1)).all())
            what = "data in [-1, 1]"
        if not ok:
            raise ValueError(f"{self.registry_name} with levels={self.levels} needs {what}"
                             + ("; use --set levels=256 for 8-bit images" if self.levels == 2 else ""))
        if self.levels == 2:
            return x
        return F.to_levels(x, self.levels)

    def _values(self, k, dtype):
        if self.levels == 2:
            return k.astype(dtype)
        return F.from_levels(k, self.levels, dtype)

    def logits(self, x):
        raise NotImplementedError

    def log_prob(self, x):
        """Exact log p(x) in nats: (B, C, H, W) -> (B,), one forward pass."""
        x = as_tensor(x)
        t = self._targets(x.data)
        logits = self.logits(x)                                            # (B, C, K, H, W)
        if self.k == 1:   # log Bern(x; sigmoid(l))
            lp = -F.binary_cross_entropy_with_logits(logits[:, :, 0], t, reduction="none")
        else:             # log softmax(l)_k; cross_entropy wants the classes in dim 1
            lp = -F.cross_entropy(F.transpose(logits, 1, 2), t, reduction="none")  # (B, C, H, W)
        return F.sum_except_batch(lp)

    def loss(self, batch, rng):
        """Mean NLL, nats per image."""
        return -self.log_prob(batch.x).mean()

    samplers = ("full",)   # the first is the default; a subclass with _cached_logits adds 'cached'

    def sample(self, n, cond=None, *, rng, sampler=None):
        """n images, one sub-pixel at a time in raster order (row, column, channel).

        sampler: 'cached' (the PixelCNNs' default) computes every layer once at every position
        and keeps it (fast_sampling.py: about one network pass an image); 'full' runs the
        network on rows 0..i for every sub-pixel (row i's logits depend on rows <= i only;
        H W C passes). Both draw the same images from the same rng."""
        sampler = self.samplers[0] if sampler is None else sampler
        if sampler not in self.samplers:
            raise ValueError(f"{self.registry_name} sampler must be one of {self.samplers}, "
                             f"got {sampler!r}")
        c, h, w = self.data_shape
        dtype = next(self.parameters()).dtype
        x = xp.zeros((int(n), c, h, w), dtype=dtype)
        with no_grad():
            logits_at = self._cached_logits(x) if sampler == "cached" else self._full_logits(x)
            for i in range(h):
                for j in range(w):
                    for ch in range(c):
                        x[:, ch, i, j] = self._values(_draw(logits_at(i, j, ch), rng), dtype)
        return x

    def _full_logits(self, x):
        """logits_at(i, j, ch) -> (n, K) by a pass of the whole network over rows 0..i of x,
        the image being sampled (it holds every draw before (i, j, ch))."""
        return lambda i, j, ch: self.logits(Tensor(x[:, :, :i + 1])).data[:, ch, :, i, j]

    def _cached_logits(self, x):
        """The same logits_at(i, j, ch), called in raster order, computing each layer at
        (i, j) only from caches of the positions before it (subclasses that list 'cached'
        in ``samplers``)."""
        raise NotImplementedError


def _draw(logits, rng):
    """One level per row of logits (n, K): Bernoulli(sigmoid) for K = 1, else Gumbel-max."""
    if logits.shape[1] == 1:
        return F.bernoulli_logits(logits[:, 0], rng)
    return F.gumbel_max(logits, rng, axis=1)                              # k ~ Cat(softmax)


class _ResidualBlock(Module):
    """x + 1x1(h -> 2h)(relu(3x3 B(h -> h)(relu(1x1(2h -> h)(relu(x)))))), all masked B."""

    def __init__(self, channels, kernel, data_channels, rng):
        super().__init__()
        half = channels // 2
        self.reduce = MaskedConv2d(channels, half, 1, "B", data_channels, rng=rng)
        self.conv = MaskedConv2d(half, half, kernel, "B", data_channels, rng=rng)
        self.expand = MaskedConv2d(half, channels, 1, "B", data_channels, rng=rng)

    def forward(self, x):
        y = self.expand(F.relu(self.conv(F.relu(self.reduce(F.relu(x))))))
        return x + y


@register("pixelcnn")
class PixelCNN(PixelModel):
    """Type A k x k conv, ``blocks`` residual blocks of type B convs, a 1x1 head.

    channels: feature maps (2h in the paper's residual block); first_kernel: the type A
    kernel; kernel: the type B kernel inside the blocks; levels: 2 (Bernoulli) or 256.
    Colour images work too: channel groups in every mask order R, G, B within a pixel.
    one_hot (levels > 2): the network reads each sub-pixel as a one-hot vector of its level
    instead of one number, for values that are categories rather than intensities (the code
    indices of the VQ-VAE prior, where code 3 is no nearer code 4 than code 20).
    """

    default_train = dict(steps=3000, batch_size=16, lr=1e-3, schedule="cosine")
    samplers = ("cached", "full")

    def __init__(self, data_shape, *, seed=0, channels: int = 64, blocks: int = 6,
                 first_kernel: int = 7, kernel: int = 3, head_channels: int = 64,
                 levels: int = 2, one_hot: bool = False):
        super().__init__()
        self._setup(data_shape, levels, seed)
        c = self.data_shape[0]
        self.one_hot = bool(one_hot)
        if self.one_hot and self.levels == 2:
            raise ValueError("one_hot needs levels > 2 (a binary pixel is its own one-hot code)")
        if channels % (2 * c) or head_channels % c:
            raise ValueError(f"channels ({channels}) must be a multiple of 2 x data channels "
                             f"({c}) and head_channels ({head_channels}) of {c}")
        g = init.get_rng(int(seed))
        c_in = c * self.levels if self.one_hot else c
        self.input_conv = MaskedConv2d(c_in, channels, first_kernel, "A", c, rng=g)
        self.blocks = ModuleList(_ResidualBlock(channels, kernel, c, g) for _ in range(int(blocks)))
        self.head1 = MaskedConv2d(channels, head_channels, 1, "B", c, rng=g)
        self.head2 = MaskedConv2d(head_channels, c * self.k, 1, "B", c, rng=g)

    def logits(self, x):
        """(B, C, H, W) -> (B, C, K, H, W); logits at pixel i depend on x_<i only."""
        x = as_tensor(x)
        b, c, h, w = x.shape
        if self.one_hot:  # levels k (B, C, H, W) -> one-hot (B, C*L, H, W), channel-major groups
            onehot = xp.eye(self.levels, dtype=x.dtype)[self._targets(x.data)]   # (B, C, H, W, L)
            x = Tensor(xp.moveaxis(onehot, -1, 2).reshape(b, c * self.levels, h, w))
        y = self.input_conv(x)
        for block in self.blocks:
            y = block(y)
        y = self.head2(F.relu(self.head1(F.relu(y))))                    # (B, C*K, H, W)
        return F.reshape(y, (b, c, self.k, h, w))                        # channel-major groups

    def _encode(self, v):
        """The network's input at one position from its values v (n, C): v, or the one-hot
        vectors of the levels (n, C * L), channel-major as in ``logits``."""
        if not self.one_hot:
            return v
        onehot = xp.eye(self.levels, dtype=v.dtype)[F.to_levels(v, self.levels)]  # (n, C, L)
        return onehot.reshape(v.shape[0], -1)

    def _cached_logits(self, x):
        n, c, h, w = x.shape
        first = self.input_conv.cache(n, h, w)
        inner = [block.conv.cache(n, h, w) for block in self.blocks]

        def logits_at(i, j, ch):
            if (i, j) != (0, 0):  # the previous position's last channel was drawn after its call
                pi, pj = (i, j - 1) if j else (i - 1, w - 1)
                first.put(pi, pj, self._encode(x[:, :, pi, pj]))
            first.put(i, j, self._encode(x[:, :, i, j]))   # channels >= ch: not drawn, masked off
            y = first.at(i, j)                                                 # (n, channels)
            for block, cache in zip(self.blocks, inner):
                cache.put(i, j, relu(block.reduce.at(relu(y))))                # (n, channels / 2)
                y = y + block.expand.at(relu(cache.at(i, j)))
            out = self.head2.at(relu(self.head1.at(relu(y))))                  # (n, C * K)
            return out.reshape(n, c, self.k)[:, ch]
        return logits_at
