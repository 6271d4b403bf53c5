"""Improved precision and recall (Kynkaanniemi et al. 2019, "Improved Precision and Recall
Metric for Assessing Generative Models"), on any features.

Each set of features approximates its distribution's manifold by a union of balls: around
every point phi of the set a ball whose radius is the distance from phi to its k-th nearest
neighbour in the same set (phi itself not counted; k = 3 as in the paper). A point is inside
a set's manifold when it lies in at least one of those balls (distance <= radius):

    f(phi, Phi) = 1  if ||phi - phi'|| <= ||phi' - NN_k(phi', Phi)|| for some phi' in Phi,

    precision = mean over generated phi_g of f(phi_g, Phi_real)     how many samples look real
    recall    = mean over real phi_r      of f(phi_r, Phi_gen)      how much of the data is made

Precision falls when samples leave the data (bad images), recall when the model misses part
of the data (mode dropping). Both depend on the sizes of the sets (more points, smaller
balls), so the paper, and refgen.metrics.evaluate, compare equally many real and generated
features.

All pairwise distances are needed, so they are computed ``chunk`` query rows at a time as
squared distances ||a||^2 + ||b||^2 - 2 a.b (clipped at 0): memory is O(chunk x N), 40 MB
for 10,000 x 10,000 at the default chunk of 500.
"""
from __future__ import annotations

import numpy as np

from refgen.backend import to_numpy

__all__ = ["knn_radii", "in_manifold", "precision_recall", "DEFAULT_K"]

DEFAULT_K = 3


def _sq_dists(a, b, bb):
    """Squared distances between the rows of a (c, d) and b (n, d), given bb = ||b||^2: (c, n)."""
    return np.maximum(np.einsum("ij,ij->i", a, a)[:, None] + bb[None, :] - 2.0 * (a @ b.T), 0.0)


def knn_radii(points, k: int = DEFAULT_K, chunk: int = 500):
    """Distance from each of ``points`` (N, d) to its k-th nearest other point: (N,)."""
    p = np.asarray(to_numpy(points), dtype=np.float64)
    if not 1 <= k < len(p):
        raise ValueError(f"k must be between 1 and N - 1 = {len(p) - 1}, got {k}")
    pp = np.einsum("ij,ij->i", p, p)
    out = np.empty(len(p))
    for i in range(0, len(p), chunk):
        d2 = _sq_dists(p[i:i + chunk], p, pp)                   # (c, N)
        d2[np.arange(d2.shape[0]), np.arange(i, i + d2.shape[0])] = 0.0   # itself: exactly 0
        # sorted, index 0 is the point itself, so index k is its k-th nearest neighbour
        out[i:i + chunk] = np.partition(d2, k, axis=1)[:, k]
    return np.sqrt(out)


def in_manifold(queries, points, radii, chunk: int = 500):
    """Whether each of ``queries`` (M, d) lies within radii[j] of some points[j]: (M,) bool."""
    q = np.asarray(to_numpy(queries), dtype=np.float64)
    p = np.asarray(to_numpy(points), dtype=np.float64)
    r2 = np.asarray(radii, dtype=np.float64) ** 2                # (N,)
    pp = np.einsum("ij,ij->i", p, p)
    out = np.empty(len(q), dtype=bool)
    for i in range(0, len(q), chunk):
        out[i:i + chunk] = (_sq_dists(q[i:i + chunk], p, pp) <= r2[None, :]).any(axis=1)
    return out


def precision_recall(generated, real, k: int = DEFAULT_K, chunk: int = 500):
    """(precision, recall) of ``generated`` (M, d) against ``real`` (N, d) features, k-NN
    manifolds with the given k (1 <= k < min(M, N)); Python floats in [0, 1]."""
    g = np.asarray(to_numpy(generated), dtype=np.float64)
    r = np.asarray(to_numpy(real), dtype=np.float64)
    if g.ndim != 2 or r.ndim != 2 or g.shape[1] != r.shape[1]:
        raise ValueError(f"features must be (M, d) and (N, d), got {g.shape} and {r.shape}")
    if not (np.isfinite(g).all() and np.isfinite(r).all()):
        raise ValueError("features contain NaN or inf")
    k, chunk = int(k), max(1, int(chunk))
    if not 1 <= k < min(len(g), len(r)):
        raise ValueError(f"k must be between 1 and min(M, N) - 1 = {min(len(g), len(r)) - 1}, "
                         f"got {k}")
    precision = in_manifold(g, r, knn_radii(r, k, chunk), chunk).mean()
    recall = in_manifold(r, g, knn_radii(g, k, chunk), chunk).mean()
    return float(precision), float(recall)
