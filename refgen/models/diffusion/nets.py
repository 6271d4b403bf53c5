"""The time embedding every denoiser shares, and the MLP denoiser for vector (2D toy) data.

Sinusoidal time embedding (the Transformer's positional encoding, applied to t):

    emb(t)_i = cos(t w_i),  emb(t)_{i + d/2} = sin(t w_i),   w_i = 10000^(-i / (d/2)),  i < d/2

MLP denoiser: x (B, D) -> (B, D_out). The embedding of t (and of the class label, when there
is one; index num_classes is the null label of classifier-free guidance) is added inside every
residual block:

    h = W_in x;   h <- h + W_2 silu(W_1 silu(h) + W_e e);   out = W_out silu(h)

W_out starts at zero, so an untrained denoiser predicts 0 (for eps: "no noise").
"""
from __future__ import annotations

import math

import refgen.functional as F
from refgen.autograd import Tensor
from refgen.backend import xp
from refgen.nn import Embedding, Linear, Module, ModuleList, init

__all__ = ["timestep_embedding", "TimeEmbedding", "MLPBlock", "MLPDenoiser"]


def timestep_embedding(t, dim: int, dtype=None):
    """(B,) times -> (B, dim) sinusoids, a constant Tensor (dim even)."""
    half = dim // 2
    freqs = xp.exp(-math.log(10000.0) * xp.arange(half, dtype=xp.float64) / half)   # (dim/2,)
    args = xp.asarray(t, dtype=xp.float64).reshape(-1, 1) * freqs                   # (B, dim/2)
    emb = xp.concatenate([xp.cos(args), xp.sin(args)], axis=1)                      # (B, dim)
    return Tensor(emb.astype(dtype or xp.float32))


class TimeEmbedding(Module):
    """t (and a label y) -> a learned (B, out_dim) vector: sinusoids, Linear, SiLU, Linear,
    plus a label embedding (num_classes + 1 rows, the last the null label)."""

    def __init__(self, base_dim: int, out_dim: int, num_classes=None, rng=None, dtype=xp.float32):
        super().__init__()
        self.base_dim = base_dim
        self.lin1 = Linear(base_dim, out_dim, rng=rng, dtype=dtype)
        self.lin2 = Linear(out_dim, out_dim, rng=rng, dtype=dtype)
        self.label = Embedding(num_classes + 1, out_dim, rng=rng, dtype=dtype) if num_classes else None

    def forward(self, t, y=None):
        e = self.lin2(F.silu(self.lin1(timestep_embedding(t, self.base_dim, self.lin1.weight.dtype))))
        if self.label is not None:
            if y is None:
                raise ValueError("this denoiser is class-conditional: pass labels y (the null "
                                 f"label {self.label.num_embeddings - 1} for unconditional)")
            e = e + self.label(y)
        return e


class MLPBlock(Module):
    """h + W_2 silu(W_1 silu(h) + W_e e): a residual block conditioned on the embedding e."""

    def __init__(self, width: int, emb_dim: int, rng=None, dtype=xp.float32):
        super().__init__()
        self.lin1 = Linear(width, width, rng=rng, dtype=dtype)
        self.emb = Linear(emb_dim, width, rng=rng, dtype=dtype)
        self.lin2 = Linear(width, width, rng=rng, dtype=dtype)

    def forward(self, h, e):
        return h + self.lin2(F.silu(self.lin1(F.silu(h)) + self.emb(e)))


class MLPDenoiser(Module):
    """(x (B, D), t (B,), y (B,) or None) -> (B, out_dim)."""

    def __init__(self, dim: int, out_dim: int, hidden: int = 128, depth: int = 3,
                 num_classes=None, rng=None, dtype=xp.float32):
        super().__init__()
        rng = init.get_rng(rng)
        self.embed = TimeEmbedding(hidden, hidden, num_classes, rng=rng, dtype=dtype)
        self.inp = Linear(dim, hidden, rng=rng, dtype=dtype)
        self.blocks = ModuleList([MLPBlock(hidden, hidden, rng=rng, dtype=dtype) for _ in range(depth)])
        self.out = Linear(hidden, out_dim, rng=rng, dtype=dtype)
        init.zeros_(self.out.weight)
        init.zeros_(self.out.bias)

    def forward(self, x, t, y=None, rng=None):
        e = self.embed(t, y)                                              # (B, hidden)
        h = self.inp(x)                                                   # (B, D) -> (B, hidden)
        for block in self.blocks:
            h = block(h, e)
        return self.out(F.silu(h))                                        # (B, out_dim)
