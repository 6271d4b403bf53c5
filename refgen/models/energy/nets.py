"""Energy networks E_theta(x) -> (B,): an MLP for vectors, a small conv net for images.

Smooth activations (SiLU) throughout: score matching differentiates the energy twice in x,
and Langevin follows its gradient, so ReLU's piecewise-linear energy (zero Hessian, kinked
gradient) would be the wrong choice here.
"""
from __future__ import annotations


import refgen.functional as F
from refgen.nn import Conv2d, Linear, Module, ModuleList, init

__all__ = ["MLPEnergy", "ConvEnergy", "energy_net"]


class MLPEnergy(Module):
    """(B, D) -> (B,): Linear layers of sizes ``hidden`` with SiLU between, a scalar out."""

    def __init__(self, dim: int, hidden=(128, 128), out_features: int = 1, rng=None):
        super().__init__()
        g = init.get_rng(rng)
        sizes = [int(dim), *[int(h) for h in hidden], int(out_features)]
        self.layers = ModuleList([Linear(a, b, rng=g) for a, b in zip(sizes[:-1], sizes[1:])])
        self.out_features = int(out_features)

    def forward(self, x):
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.silu(x)
        return x.squeeze(1) if self.out_features == 1 else x          # (B,) or (B, K)


class ConvEnergy(Module):
    """(B, C, H, W) -> (B,) (or (B, K) logits): stride-2 3x3 convs with SiLU, then a linear
    head on the flattened map: C -> ch -> 2ch -> 4ch at H/8 (28 -> 14 -> 7 -> 4)."""

    def __init__(self, shape, channels: int = 32, out_features: int = 1, rng=None):
        super().__init__()
        g = init.get_rng(rng)
        c, h, w = (int(s) for s in shape)
        chans = [c, channels, 2 * channels, 4 * channels]
        self.convs = ModuleList([Conv2d(a, b, 3, stride=2, padding=1, rng=g)
                                 for a, b in zip(chans[:-1], chans[1:])])
        for _ in range(3):
            h, w = (h + 1) // 2, (w + 1) // 2
        self.head = Linear(chans[-1] * h * w, int(out_features), rng=g)
        self.out_features = int(out_features)

    def forward(self, x):
        for conv in self.convs:
            x = F.silu(conv(x))
        x = self.head(x.reshape(x.shape[0], -1))                      # (B, C*h*w) -> (B, K)
        return x.squeeze(1) if self.out_features == 1 else x


def energy_net(data_shape, hidden, channels, out_features=1, rng=None):
    """The MLP for vectors, the conv net for images (C, H, W)."""
    if len(data_shape) == 1:
        return MLPEnergy(data_shape[0], hidden, out_features, rng)
    if len(data_shape) == 3:
        return ConvEnergy(data_shape, channels, out_features, rng)
    raise ValueError(f"energy models take vectors or images (C, H, W); got shape {tuple(data_shape)}")
