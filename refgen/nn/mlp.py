"""The MLP denoiser for vector (2D toy) data: x (B, D) -> (B, D_out).

The time embedding (refgen.nn.TimeEmbedding: sinusoids of t through an MLP, plus the class
label's embedding when there is one; index num_classes is the null label of classifier-free
guidance) is added inside every residual block (refgen.nn.MLPBlock):

    h = W_in x;   h <- h + W_2 silu(W_1 silu(h) + W_e e);   out = W_out silu(h)

W_out starts at zero, so an untrained denoiser predicts 0 (for eps: "no noise").
"""
from __future__ import annotations

import refgen.functional as F
from refgen.backend import xp
from refgen.nn import Linear, MLPBlock, Module, ModuleList, TimeEmbedding, init

__all__ = ["MLPDenoiser"]


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
