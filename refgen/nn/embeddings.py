"""Sinusoidal embeddings of a time step or position, and the learned time (+ class) embedding.

Sinusoidal embedding (the Transformer's positional encoding, applied to a time t):

    emb(t)_i = cos(t w_i),  emb(t)_{i + d/2} = sin(t w_i),   w_i = 10000^(-i / (d/2)),  i < d/2

TimeEmbedding maps it through Linear, SiLU, Linear and adds a learned label embedding with
num_classes + 1 rows, the last the null label of classifier-free guidance.
"""
from __future__ import annotations

import math

import refgen.functional as F
from refgen.autograd import Tensor
from refgen.backend import xp
from refgen.nn.layers import Embedding, Linear
from refgen.nn.module import Module

__all__ = ["timestep_embedding", "TimeEmbedding"]


def timestep_embedding(t, dim: int, dtype=None):
    """(B,) times -> (B, dim) sinusoids, a constant Tensor (dim even)."""
    if dim % 2:
        raise ValueError(f"timestep_embedding needs an even dim (cos and sin halves), got {dim}")
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
                raise ValueError("this network is class-conditional: pass labels y (the null "
                                 f"label {self.label.num_embeddings - 1} for unconditional)")
            e = e + self.label(y)
        return e
