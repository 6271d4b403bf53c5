"""Data augmentation for image batches: random translations.

    random_shift   each image moved by its own integer offset (dy, dx), each drawn uniformly
                   from {-s, ..., s}: the image is padded by s pixels on every side with its
                   edge values and the (H, W) window at (s + dy, s + dx) is kept, the
                   "random crop after padding" of the classifiers JEM builds on (Grathwohl et
                   al. 2020 pad CIFAR-10 by 4; MNIST's border is background, so the edge values
                   are the background's)

Backend arrays in and out, so the same code runs on the CPU or the GPU.
"""
from __future__ import annotations

from refgen.backend import xp

__all__ = ["random_shift"]


def random_shift(x, shift: int, rng):
    """x (B, C, H, W) -> (B, C, H, W), image b translated by offsets drawn from ``rng``:
    out[b, c, i, j] = pad(x)[b, c, s + dy_b + i, s + dx_b + j] (s = shift, edge padding)."""
    shift = int(shift)
    if shift < 0:
        raise ValueError(f"shift must be >= 0, got {shift}")
    if x.ndim != 4:
        raise ValueError(f"random_shift takes images (B, C, H, W), got shape {tuple(x.shape)}")
    if shift == 0:
        return x
    b, c, h, w = x.shape
    p = xp.pad(x, [(0, 0), (0, 0), (shift, shift), (shift, shift)], mode="edge")
    off = rng.integers(0, 2 * shift + 1, size=(2, b))                    # s + dy, s + dx
    rows = off[0][:, None] + xp.arange(h)[None, :]                       # (B, H)
    cols = off[1][:, None] + xp.arange(w)[None, :]                       # (B, W)
    return p[xp.arange(b)[:, None, None, None], xp.arange(c)[None, :, None, None],
             rows[:, None, :, None], cols[:, None, None, :]]             # (B, C, H, W)
