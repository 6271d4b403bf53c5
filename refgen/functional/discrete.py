"""Draws of discrete values, and the map between [-1, 1] and integer levels. Plain arrays
in and out: nothing here is differentiated.

    gumbel_max        k = argmax_k (l_k + G_k),  G_k = -log(-log U_k),  U_k ~ U(0, 1)
                      is a draw from Cat(softmax(l))                (Gumbel 1954; Maddison et al. 2014)
    bernoulli_logits  b = [U < sigmoid(l)] ~ Bernoulli(sigmoid(l))
    to_levels         x in [-1, 1] -> k = round((x + 1) (L - 1) / 2) in {0, ..., L-1}
    from_levels       k -> 2 k / (L - 1) - 1, the inverse on the grid
"""
from __future__ import annotations

from refgen.backend import xp

__all__ = ["gumbel_max", "bernoulli_logits", "to_levels", "from_levels"]


def gumbel_max(logits, rng, axis: int = -1):
    """One category index per slice of ``logits`` along ``axis``, k ~ Cat(softmax(logits)).

    rng: a generator (refgen.backend.default_rng); the uniforms are float64. -inf logits are
    never drawn.
    """
    u = rng.random(logits.shape, dtype=xp.float64)
    return xp.argmax(logits - xp.log(-xp.log(u + 1e-300) + 1e-300), axis=axis)   # + G_k


def bernoulli_logits(logits, rng, dtype=xp.int64):
    """[U < sigmoid(logits)] elementwise, as ``dtype``."""
    p = 0.5 + 0.5 * xp.tanh(0.5 * xp.asarray(logits).astype(xp.float64))     # sigmoid, no overflow
    return (rng.random(p.shape, dtype=xp.float64) < p).astype(dtype)


def to_levels(x, levels: int):
    """Values in [-1, 1] -> int64 level ids 0..levels-1 (nearest grid point; clipped)."""
    k = xp.rint((xp.asarray(x) + 1.0) * 0.5 * (levels - 1))
    return xp.clip(k, 0, levels - 1).astype(xp.int64)


def from_levels(k, levels: int, dtype=xp.float32):
    """Level ids 0..levels-1 -> their values in [-1, 1], 2 k / (levels - 1) - 1."""
    return (xp.asarray(k) * (2.0 / (levels - 1)) - 1.0).astype(dtype)
