"""Control images for ControlNet at MNIST scale: edge maps and outlines, and the data sets of
(control, image) pairs built from them.

Every function takes a batch of images (N, C, H, W) (or (N, H, W)) as a backend array, so
the same code scores images a model generates, on the CPU or the GPU.

    sobel      ink u = (x + 1) / 2 (images in [-1, 1]), zero-padded (the background),
               g_x = u * K,  g_y = u * K^T,   K = [1 2 1]^T [-1 0 1]   (3x3 cross-correlation)
               m = sqrt(g_x^2 + g_y^2) / 4: 1 across a straight step from 0 to 1
    edges      e = [m > threshold]  (threshold 1/4), in {0, 1}: a band two pixels wide along
               every step of the ink, one pixel on each side
    fill       the silhouette: the ink mask [u > 1/2] with its enclosed holes filled (the
               background pixels that no 4-connected path joins to the frame's border)
    outline    the silhouette's boundary: pixels of the silhouette with a 4-neighbour outside it
    edge_iou   |A and B| / |A or B| of two edge maps, per image (1 where both are empty)

Data sets (``load``; x the target image in [-1, 1], y the control (N, 1, H, W) in {0, 1}):

    mnist-edges, mnist-14-edges   control edges(x), target the digit x
    mnist-fill, mnist-14-fill     control outline(fill(x)), target the filled silhouette
                                  2 fill(x) - 1 (the analogue of ControlNet's Fill50K: a
                                  shape's outline in, the filled shape out)
"""
from __future__ import annotations

import numpy as np

from refgen import backend
from refgen.backend import xp

from .datasets import Dataset, load as load_base

__all__ = ["sobel", "edges", "fill", "outline", "edge_iou", "NAMES", "EDGE_THRESHOLD", "load"]

EDGE_THRESHOLD = 0.25
NAMES = {"mnist-edges": ("mnist", "edges"), "mnist-14-edges": ("mnist-14", "edges"),
         "mnist-fill": ("mnist", "fill"), "mnist-14-fill": ("mnist-14", "fill")}


def _neighbour(p, dy: int, dx: int, h: int, w: int):
    """The (H, W) window of the padded p (..., H + 2, W + 2) shifted by (dy, dx)."""
    return p[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]


def _pad(u, value=0):
    return xp.pad(u, [(0, 0)] * (u.ndim - 2) + [(1, 1), (1, 1)], constant_values=value)


def sobel(x):
    """Gradient magnitude m (same shape as x) of images x in [-1, 1], scaled so that a
    straight step of the ink from 0 to 1 gives 1."""
    x = xp.asarray(x)
    u = (x + 1.0) / 2.0                                                   # ink in [0, 1]
    h, w = u.shape[-2:]
    p = _pad(u)                                                           # (..., H + 2, W + 2)

    def at(dy, dx):
        return _neighbour(p, dy, dx, h, w)
    gx = (at(-1, 1) - at(-1, -1)) + 2 * (at(0, 1) - at(0, -1)) + (at(1, 1) - at(1, -1))
    gy = (at(1, -1) - at(-1, -1)) + 2 * (at(1, 0) - at(-1, 0)) + (at(1, 1) - at(-1, 1))
    return xp.sqrt(gx * gx + gy * gy) / 4.0


def edges(x, threshold: float = EDGE_THRESHOLD):
    """Edge map in {0, 1} (dtype of x) of images x in [-1, 1]: sobel(x) > threshold."""
    m = sobel(x)
    return (m > threshold).astype(m.dtype)


def fill(x):
    """The filled silhouette in {0, 1}: the ink mask (x > 0, i.e. u > 1/2) with every hole
    that the frame's border cannot reach through 4-neighbours filled. Vectorised over the
    batch; the loop runs over flood-fill rounds (at most H W), not over pixels."""
    x = xp.asarray(x)
    ink = x > 0
    h, w = ink.shape[-2:]
    outside = _pad(~ink, True)                                            # background, the border ring included
    reach = _pad(xp.zeros_like(ink), True)                                # start: the border ring
    while True:
        grown = reach.copy()
        inner = grown[..., 1:-1, 1:-1]
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            inner |= _neighbour(reach, dy, dx, h, w)
        grown &= outside
        if bool((grown == reach).all()):
            break
        reach = grown
    return (~reach[..., 1:-1, 1:-1]).astype(x.dtype)


def outline(mask):
    """The boundary of a {0, 1} mask: its pixels with a 4-neighbour outside it (the frame
    counts as outside)."""
    mask = xp.asarray(mask)
    m = mask > 0.5
    h, w = m.shape[-2:]
    p = _pad(m, False)
    interior = m.copy()
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        interior &= _neighbour(p, dy, dx, h, w)
    return (m & ~interior).astype(mask.dtype)


def edge_iou(a, b):
    """(N,) intersection over union of two batches of {0, 1} edge maps (1 where both are empty)."""
    a, b = xp.asarray(a) > 0.5, xp.asarray(b) > 0.5
    axes = tuple(range(1, a.ndim))
    inter = (a & b).sum(axis=axes)
    union = (a | b).sum(axis=axes)
    return xp.where(union > 0, inter / xp.maximum(union, 1), 1.0)


def _pairs(images, task: str, chunk: int = 5000):
    """(targets, controls) as host arrays for the task, computed on the backend in chunks."""
    xs, cs = [], []
    for i in range(0, len(images), chunk):
        x = backend.asarray(images[i:i + chunk])
        if task == "edges":
            c = edges(x)
        else:
            f = fill(x)
            x, c = 2.0 * f - 1.0, outline(f)
        xs.append(backend.to_numpy(x))
        cs.append(backend.to_numpy(c))
    return xs, cs


def load(name: str, split: str, data_dir=None, download: bool = True):
    """The Dataset ``name`` (one of NAMES): x the targets, y the controls (see the docstring)."""
    if name not in NAMES:
        raise ValueError(f"unknown control data set {name!r}; accepted: {', '.join(NAMES)}")
    base, task = NAMES[name]
    ds = load_base(base, split, data_dir=data_dir, download=download)
    xs, cs = _pairs(ds.x, task)
    x, c = np.concatenate(xs).astype(np.float32), np.concatenate(cs).astype(np.float32)
    return Dataset(name, split, x, c, "continuous", x.shape[1:], value_range=(-1.0, 1.0))
