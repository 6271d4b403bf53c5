"""Generator and discriminator networks: MLPs for 2D data, DCGAN-style convnets for MNIST.

Generator G(z, y):  input = [z, embed(y)] (embed only for a conditional model)
  mlp   Linear + (BatchNorm) + ReLU per hidden size, then Linear to the data dimension.
  conv  (Radford et al., 2016) Linear to (2 ch, 7, 7), BatchNorm, ReLU, then 4x4 stride-2
        transposed convolutions doubling the side (7 -> 14 -> 28), BatchNorm + ReLU
        between them, tanh at the end (images in [-1, 1]).

Discriminator D(x, y), returning one raw score per D input (B / pack,):
  packing   (Lin et al., 2018) ``pack`` = m consecutive examples form one D input:
            (B, d) -> (B / m, m d) for vectors, (B, C, H, W) -> (B / m, m C, H, W) for images.
  trunk     mlp: the packed vector; conv: 4x4 stride-2 convolutions with LeakyReLU(0.2)
            (28 -> 14 -> 7), flattened.
  labels    'concat' (Mirza & Osindero, 2014): [trunk features, embed(y_1..y_m)];
            'projection' (Miyato & Koyama, 2018): score += <embed(y), h>.
  hidden    Linear + (norm) + LeakyReLU(0.2) per hidden size -> h; score = Linear(h)
            (``features`` returns h, which an InfoGAN's Q also reads; ``score`` maps it).
  norm      'none', 'batch' (BatchNorm after each hidden Linear / second convolution) or
            'spectral' (every Linear and Conv2d spectrally normalized).
"""
from __future__ import annotations

import math

import refgen.functional as F
from refgen.nn import (BatchNorm, Conv2d, ConvTranspose2d, Embedding, Linear, Module,
                       ModuleList, spectral_norm)

__all__ = ["Generator", "Discriminator", "NORMS"]

NORMS = ("none", "batch", "spectral")


def _side(data_shape):
    c, h, w = data_shape
    if h != w or h not in (14, 28):
        raise ValueError(f"the conv GAN takes 28x28 or 14x14 images, got {tuple(data_shape)}")
    return 2 if h == 28 else 1   # stride-2 levels between 7x7 and the image


class Generator(Module):
    """z (B, z_dim) [, y (B,)] -> x (B, *data_shape)."""

    def __init__(self, data_shape, z_dim, hidden=(128, 128), arch="mlp", norm="none",
                 num_classes=None, embed_dim=16, channels=64, rng=None):
        super().__init__()
        self.data_shape, self.arch, self.norm = tuple(data_shape), arch, norm
        self.embed = Embedding(num_classes, embed_dim, rng=rng) if num_classes else None
        d_in = z_dim + (embed_dim if num_classes else 0)
        bn = norm == "batch"
        if arch == "mlp":
            sizes = [d_in] + list(hidden)
            self.layers = ModuleList(Linear(a, b, rng=rng) for a, b in zip(sizes, sizes[1:]))
            self.norms = ModuleList(BatchNorm(b) for b in hidden) if bn else None
            self.out = Linear(sizes[-1], math.prod(self.data_shape), rng=rng)
        else:
            levels = _side(self.data_shape)
            c0 = channels * 2 ** (levels - 1)
            self.c0 = c0
            self.fc = Linear(d_in, c0 * 49, rng=rng)
            chans = [c0 // 2 ** i for i in range(levels)] + [self.data_shape[0]]
            self.ups = ModuleList(ConvTranspose2d(a, b, 4, stride=2, padding=1, rng=rng)
                                  for a, b in zip(chans, chans[1:]))
            self.norms = ModuleList(BatchNorm(c) for c in chans[:-1]) if bn else None

    def forward(self, z, y=None):
        if self.embed is not None:
            z = F.cat([z, self.embed(y)], dim=1)                     # [z, embed(y)]
        if self.arch == "mlp":
            h = z
            for i, layer in enumerate(self.layers):
                h = layer(h)
                h = F.relu(self.norms[i](h) if self.norms is not None else h)
            return F.reshape(self.out(h), (z.shape[0],) + self.data_shape)
        h = F.reshape(self.fc(z), (z.shape[0], self.c0, 7, 7))        # (B, 2ch, 7, 7)
        for i, up in enumerate(self.ups):
            h = F.relu(self.norms[i](h) if self.norms is not None else h)
            h = up(h)                                                # side doubles
        return F.tanh(h)                                             # (B, C, H, W)


class Discriminator(Module):
    """x (B, *data_shape) [, y (B,)] -> raw scores (B / pack,)."""

    def __init__(self, data_shape, hidden=(128, 128), arch="mlp", norm="none", pack=1,
                 num_classes=None, cond="concat", embed_dim=16, channels=64, rng=None):
        super().__init__()
        self.data_shape, self.arch, self.pack, self.cond = tuple(data_shape), arch, int(pack), cond
        sn = norm == "spectral"

        def wrap(layer):
            return spectral_norm(layer, rng=rng) if sn else layer

        if arch == "mlp":
            self.convs, feat = None, math.prod(self.data_shape) * self.pack
        else:
            levels = _side(self.data_shape)
            chans = [self.data_shape[0] * self.pack] + [channels * 2 ** i for i in range(levels)]
            self.convs = ModuleList(wrap(Conv2d(a, b, 4, stride=2, padding=1, rng=rng))
                                    for a, b in zip(chans, chans[1:]))
            self.conv_norm = BatchNorm(chans[-1]) if norm == "batch" and levels > 1 else None
            feat = chans[-1] * 49
        self.embed = None
        if num_classes and cond == "concat":
            self.embed = Embedding(num_classes, embed_dim, rng=rng)
            feat += embed_dim * self.pack
        sizes = [feat] + list(hidden)
        self.layers = ModuleList(wrap(Linear(a, b, rng=rng)) for a, b in zip(sizes, sizes[1:]))
        self.norms = (ModuleList(BatchNorm(b) for b in hidden[1:])
                      if norm == "batch" and arch == "mlp" else None)   # not on the input layer
        self.head_features = sizes[-1]                              # what the head reads
        self.head = wrap(Linear(sizes[-1], 1, rng=rng))
        self.proj = (Embedding(num_classes, sizes[-1], rng=rng)
                     if num_classes and cond == "projection" else None)

    def packed(self, x):
        """(B, *shape) -> (B / m, m * shape[0], *shape[1:]): m examples per D input."""
        b, m = x.shape[0], self.pack
        if b % m:
            raise ValueError(f"batch of {b} examples cannot be packed in groups of pack={m}; "
                             f"use a batch size that is a multiple of {m}")
        return F.reshape(x, (b // m, m * x.shape[1]) + tuple(x.shape[2:]))

    def features(self, x, y=None):
        """h (B / m, hidden[-1]): the last hidden layer, which the score (and an InfoGAN's
        code posterior) reads."""
        h = self.packed(x)
        if self.convs is not None:
            for i, conv in enumerate(self.convs):
                h = conv(h)
                if i == len(self.convs) - 1 and self.conv_norm is not None:
                    h = self.conv_norm(h)
                h = F.leaky_relu(h, 0.2)
        h = F.reshape(h, (h.shape[0], -1))                           # (B / m, features)
        if self.embed is not None:
            e = self.embed(y)                                        # (B, E)
            h = F.cat([h, F.reshape(e, (h.shape[0], -1))], dim=1)    # (B / m, feat + m E)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if self.norms is not None and i > 0:
                h = self.norms[i - 1](h)
            h = F.leaky_relu(h, 0.2)
        return h

    def score(self, h, y=None):
        """The raw score of the features h: (B / m,)."""
        score = F.reshape(self.head(h), (h.shape[0],))               # (B / m,)
        if self.proj is not None:
            score = score + F.sum(self.proj(y) * h, dim=1)           # + <embed(y), h>
        return score

    def forward(self, x, y=None):
        return self.score(self.features(x, y), y)
