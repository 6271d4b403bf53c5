"""Encoder and decoder networks shared by the autoencoder, the VAEs and VQ-VAE.

Two architectures, both optionally conditioned on a class label (one-hot, concatenated to
the encoder's features and to the decoder's input):

- ``mlp``: flatten, Linear + activation per hidden size, then the heads.
- ``conv``: 4x4 stride-2 convolutions halve the image twice (28 -> 14 -> 7), a Linear to the
  hidden width, then the heads; the decoder mirrors it with transposed convolutions
  (output_padding chosen so that odd sizes such as 14 -> 7 -> 3 come back to 7 and 14).

The Gaussian encoder has two heads, one for the mean and one for the log-variance of
q(z | x) (the slides' "two output heads"); ``deterministic=True`` gives the autoencoder's
single head.
"""
from __future__ import annotations

import math

import refgen.functional as F
from refgen.autograd import as_tensor
from refgen.backend import xp
from refgen.nn import Conv2d, ConvTranspose2d, Linear, Module, ModuleList, Parameter, parse_hidden

__all__ = ["activation", "Encoder", "Decoder", "LinearEncoder", "ConvTrunk",
           "ConvHead", "conv_shapes", "one_hot"]

_ACTIVATIONS = {"relu": F.relu, "tanh": F.tanh, "softplus": F.softplus, "elu": F.elu,
                "silu": F.silu, "leaky_relu": F.leaky_relu}


def activation(name: str):
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; accepted: {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def one_hot(y, num_classes, dtype):
    """Integer labels (B,) -> (B, num_classes) constants; not differentiated."""
    idx = y.data if hasattr(y, "requires_grad") else xp.asarray(y)
    return as_tensor((idx.reshape(-1, 1) == xp.arange(num_classes)).astype(dtype))


def conv_shapes(hw, levels: int = 2) -> list:
    """Spatial sizes after each 4x4 / stride-2 / pad-1 convolution: H -> floor(H / 2)."""
    h, w = hw
    sizes = [(h, w)]
    for _ in range(levels):
        h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise ValueError(f"image of size {hw} is too small for {levels} stride-2 convolutions")
        sizes.append((h, w))
    return sizes


class ConvTrunk(Module):
    """(B, C, H, W) -> (B, c2, H/4, W/4) by two 4x4 stride-2 convolutions."""

    def __init__(self, in_channels, channels, act, rng):
        super().__init__()
        c1, c2 = channels
        self.conv1 = Conv2d(in_channels, c1, 4, stride=2, padding=1, rng=rng)
        self.conv2 = Conv2d(c1, c2, 4, stride=2, padding=1, rng=rng)
        self.act = act

    def forward(self, x):
        h = self.act(self.conv1(x))        # (B, c1, H/2, W/2)
        return self.act(self.conv2(h))     # (B, c2, H/4, W/4)


class ConvHead(Module):
    """(B, c2, h, w) -> (B, C_out, H, W): the transposed mirror of ConvTrunk."""

    def __init__(self, channels, out_channels, shapes, act, rng):
        super().__init__()
        c1, c2 = channels
        (h0, w0), (h1, w1), (h2, w2) = shapes
        # (H_in - 1) * 2 - 2 + 4 = 2 H_in; output_padding adds the odd pixel back
        self.up1 = ConvTranspose2d(c2, c1, 4, stride=2, padding=1,
                                   output_padding=(h1 - 2 * h2, w1 - 2 * w2), rng=rng)
        self.up2 = ConvTranspose2d(c1, out_channels, 4, stride=2, padding=1,
                                   output_padding=(h0 - 2 * h1, w0 - 2 * w1), rng=rng)
        self.act = act

    def forward(self, h):
        return self.up2(self.act(self.up1(h)))


class Encoder(Module):
    """x (B, *data_shape) [and labels] -> mean and log-variance (B, latent) of q(z | x).

    With ``deterministic=True`` there is one head and ``forward`` returns the code alone.
    """

    def __init__(self, data_shape, latent_dim, hidden=(512, 256), arch="mlp",
                 act="relu", num_classes=None, channels=(32, 64), deterministic=False,
                 rng=None):
        super().__init__()
        self.data_shape, self.arch = tuple(data_shape), arch
        self.num_classes, self.deterministic = num_classes, deterministic
        self.act = activation(act)
        hidden = parse_hidden(hidden)
        if arch == "mlp":
            width = math.prod(self.data_shape)
            self.trunk = None
        elif arch == "conv":
            if len(self.data_shape) != 3:
                raise ValueError(f"arch='conv' needs images (C, H, W), got {self.data_shape}")
            self.trunk = ConvTrunk(self.data_shape[0], channels, self.act, rng)
            h, w = conv_shapes(self.data_shape[1:])[-1]
            width = channels[1] * h * w
        else:
            raise ValueError(f"unknown arch {arch!r}; accepted: mlp, conv")
        width += num_classes or 0
        layers = []
        for size in hidden:
            layers.append(Linear(width, size, rng=rng))
            width = size
        self.layers = ModuleList(layers)
        self.mu_head = Linear(width, latent_dim, rng=rng)
        self.logvar_head = None if deterministic else Linear(width, latent_dim, rng=rng)

    def forward(self, x, y=None):
        x = as_tensor(x)
        h = x if self.trunk is None else self.trunk(x)
        h = F.flatten(h, 1)                                            # (B, features)
        if self.num_classes:
            h = F.cat([h, one_hot(y, self.num_classes, h.dtype)], 1)   # (B, features + classes)
        for layer in self.layers:
            h = self.act(layer(h))
        if self.deterministic:
            return self.mu_head(h)
        return self.mu_head(h), self.logvar_head(h)                    # two heads: mu, log sigma^2


class Decoder(Module):
    """z (..., latent) [and labels] -> (..., *data_shape): the parameters of p(x | z)
    (Bernoulli logits or Gaussian means), one per data dimension."""

    def __init__(self, data_shape, latent_dim, hidden=(256, 512), arch="mlp", act="relu",
                 num_classes=None, channels=(32, 64), rng=None):
        super().__init__()
        self.data_shape, self.arch, self.num_classes = tuple(data_shape), arch, num_classes
        self.act = activation(act)
        hidden = parse_hidden(hidden)
        width = latent_dim + (num_classes or 0)
        layers = []
        for size in hidden:
            layers.append(Linear(width, size, rng=rng))
            width = size
        self.layers = ModuleList(layers)
        if arch == "mlp":
            self.out = Linear(width, math.prod(self.data_shape), rng=rng)
            self.head = None
        elif arch == "conv":
            if len(self.data_shape) != 3:
                raise ValueError(f"arch='conv' needs images (C, H, W), got {self.data_shape}")
            shapes = conv_shapes(self.data_shape[1:])
            self.grid = (channels[1],) + shapes[-1]
            self.out = Linear(width, math.prod(self.grid), rng=rng)
            self.head = ConvHead(channels, self.data_shape[0], shapes, self.act, rng)
        else:
            raise ValueError(f"unknown arch {arch!r}; accepted: mlp, conv")

    def forward(self, z, y=None):
        z = as_tensor(z)
        lead = z.shape[:-1]
        h = F.reshape(z, (-1, z.shape[-1]))                             # (N, latent)
        if self.num_classes:
            yy = y.data if hasattr(y, "requires_grad") else xp.asarray(y)
            yy = xp.broadcast_to(yy, lead).reshape(-1)                  # labels for every z
            h = F.cat([h, one_hot(yy, self.num_classes, h.dtype)], 1)
        for layer in self.layers:
            h = self.act(layer(h))
        h = self.out(h)
        if self.head is not None:
            h = self.head(self.act(F.reshape(h, (-1,) + self.grid)))     # (N, C_out, H, W)
        return F.reshape(h, tuple(lead) + self.data_shape)


class LinearEncoder(Module):
    """q(z | x) = N(V x + c, diag(exp(logvar))): a linear mean and a log-variance that does
    not depend on x. For a linear-Gaussian decoder the exact posterior has this form."""

    def __init__(self, dim, latent_dim, rng=None, dtype=xp.float32):
        super().__init__()
        self.mean = Linear(dim, latent_dim, rng=rng, dtype=dtype)
        self.logvar = Parameter(xp.zeros((latent_dim,), dtype=dtype))

    def forward(self, x, y=None):
        mu = self.mean(as_tensor(x))                                   # (B, latent)
        return mu, F.broadcast_to(self.logvar, mu.shape)
