"""Binary masks that split an example into the half a coupling keeps and the half it changes.

One example is a vector (D,) or an image (C, H, W). A mask m has that shape; a coupling
layer keeps x * m and transforms x * (1 - m) as a function of x * m (coupling.py).

- checkerboard: images alternate pixel by pixel, m[c, h, w] = (h + w + parity) mod 2;
  vectors alternate feature by feature, m[d] = (d + parity) mod 2.
- channel: the first half of the channels (features, for vectors) when parity is 0, the
  second half when parity is 1 (RealNVP's masks after a squeeze; Glow's split).
"""
from __future__ import annotations

from refgen.backend import xp

__all__ = ["checkerboard_mask", "channel_mask"]


def checkerboard_mask(shape, parity: int = 0, dtype=xp.float32):
    """(D,) or (C, H, W) 0/1 mask, alternating features or pixels."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 1:
        return ((xp.arange(shape[0]) + parity) % 2).astype(dtype)
    if len(shape) != 3:
        raise ValueError(f"masks are for vectors (D,) or images (C, H, W), got {shape}")
    c, h, w = shape
    board = (xp.arange(h)[:, None] + xp.arange(w)[None, :] + parity) % 2   # (H, W)
    return xp.broadcast_to(board, (c, h, w)).astype(dtype)


def channel_mask(shape, parity: int = 0, dtype=xp.float32):
    """(D,) or (C, H, W) 0/1 mask: half the channels (features) set."""
    shape = tuple(int(s) for s in shape)
    c = shape[0]
    if c < 2:
        raise ValueError(f"a channel mask needs at least 2 channels, got shape {shape}")
    first = (xp.arange(c) < c // 2).astype(dtype)                            # (C,)
    keep = first if parity % 2 == 0 else 1 - first
    return xp.broadcast_to(keep.reshape((c,) + (1,) * (len(shape) - 1)), shape).astype(dtype)
