"""The classifier f_phi(y | x_t, t) of classifier guidance, trained on noisy inputs.

    loss = E_{t ~ U{1..T}, x_0, y, eps} [ -log f_phi(y | x_t, t) ],
    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps                              (3)

Its gradient grad_{x_t} log f_phi(y | x_t, t) steers a diffusion model's eps, eq. (25)
(refgen.models.diffusion.guidance). Vectors: an MLP with the time embedding in each block;
images: a U-Net's down path (ResBlocks, downsampling, attention at the lowest resolution),
then global average pooling and a linear layer. Not registered as a generative model: train it
with refgen.train.train(..., samples=False) and pass it to DDPM.sample(classifier=...).
"""
from __future__ import annotations

import refgen.functional as F
from refgen.autograd import as_tensor
from refgen.backend import xp
from refgen.models.diffusion.process import q_sample
from refgen.models.diffusion.schedule import make_schedule
from refgen.nn import (AttnBlock, Conv2d, Downsample, GroupNorm, Linear, MLPBlock, Module,
                       ModuleList, ResBlock, TimeEmbedding, apply_blocks, default_channel_mult,
                       group_count, init)

__all__ = ["NoisyClassifier"]


class NoisyClassifier(Module):
    """(x_t (B, *data_shape), t (B,)) -> class logits (B, num_classes)."""

    def __init__(self, data_shape, num_classes: int, *, seed=0, schedule: str = "linear",
                 T: int = 1000, hidden: int = 128, depth: int = 3, channels: int = 32,
                 channel_mult=None, groups: int = 8):
        super().__init__()
        self.data_shape = tuple(int(d) for d in data_shape)
        self.num_classes = int(num_classes)
        self.schedule, self.T = make_schedule(schedule, T), int(T)
        g = init.get_rng(int(seed))
        self.image = len(self.data_shape) == 3
        if self.image:
            c_in, size = self.data_shape[0], self.data_shape[-1]
            mult = tuple(channel_mult) if channel_mult else default_channel_mult(size)
            ch = int(channels)
            self.embed = TimeEmbedding(ch, 4 * ch, rng=g)
            self.conv_in = Conv2d(c_in, ch, 3, padding=1, rng=g)
            self.blocks = ModuleList()
            c = ch
            for level, m in enumerate(mult):
                self.blocks.append(ResBlock(c, ch * m, 4 * ch, groups, rng=g))
                c = ch * m
                if level < len(mult) - 1:
                    self.blocks.append(Downsample(c, rng=g))
            self.blocks.append(AttnBlock(c, 1, groups, rng=g))
            self.norm = GroupNorm(group_count(c, groups), c)
            self.head = Linear(c, self.num_classes, rng=g)
        else:
            self.embed = TimeEmbedding(hidden, hidden, rng=g)
            self.inp = Linear(self.data_shape[0], hidden, rng=g)
            self.blocks = ModuleList([MLPBlock(hidden, hidden, rng=g) for _ in range(depth)])
            self.head = Linear(hidden, self.num_classes, rng=g)

    def forward(self, x, t):
        t = xp.broadcast_to(xp.asarray(t, dtype=xp.int64), (x.shape[0],))
        e = self.embed(t)
        if self.image:
            h = self.conv_in(x)                                           # (B, ch, H, W)
            h = apply_blocks(self.blocks, h, e)
            h = F.mean(F.silu(self.norm(h)), (2, 3))                      # (B, c, h, w) -> (B, c)
        else:
            h = self.inp(x)                                               # (B, hidden)
            for b in self.blocks:
                h = b(h, e)
            h = F.silu(h)
        return self.head(h)                                               # (B, num_classes)

    def loss(self, batch, rng):
        """Cross-entropy of the label given x_t at one t ~ U{1..T} per example."""
        x0 = as_tensor(batch.x)
        if batch.y is None:
            raise ValueError("the noisy classifier needs labelled data")
        t = rng.integers(1, self.T + 1, size=x0.shape[0])
        eps = rng.standard_normal(x0.shape, dtype=x0.dtype)
        xt = q_sample(self.schedule, x0, t, eps)                          # (3)
        return F.cross_entropy(self(xt, t), xp.asarray(batch.y).astype(xp.int64))
