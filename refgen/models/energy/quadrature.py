"""Normalising a 2D energy by quadrature: log Z = log sum_grid exp(-E(x_ij)) dA.

A midpoint rule in float64 with a log-sum-exp: an n x n grid over [-L, L]^2, plus the band
between L and 2L on a grid half as fine. What lies beyond 2L is not counted, so the mass on
the band's outermost strip (|x|_inf > 1.8 L) is measured: it must be below ``max_edge`` of
the total, else the density has not decayed by the edge and the result is refused. Energy
models make it negligible with their quadratic envelope (base.py: with base_std = 3 and
L = 7 the strip starts 4.2 standard deviations out).
"""
from __future__ import annotations

import math

from refgen.autograd import Tensor, no_grad
from refgen.backend import xp

__all__ = ["grid_log_normalizer"]


def _midpoints(lo, hi, n):
    h = (hi - lo) / n
    return lo + h * (xp.arange(n, dtype=xp.float64) + 0.5), h


def _energies(energy, pts, dtype, chunk=1 << 15):
    out = []
    with no_grad():
        for i in range(0, len(pts), chunk):
            out.append(energy(Tensor(pts[i:i + chunk].astype(dtype))).data)
    return xp.concatenate(out).astype(xp.float64)


def _logsumexp(a):
    m = float(a.max())
    return m + math.log(float(xp.exp(a - m).sum()))


def grid_log_normalizer(energy, data_shape, limit=7.0, n=560, max_edge=1e-4, dtype=None):
    """(log Z, edge fraction) of exp(-energy(x)) for x in R^2, by grid quadrature.

    energy: Tensor (B, 2) -> Tensor (B,). Raises ValueError for data that is not 2D, and for
    an energy that leaves more than ``max_edge`` of its mass on the grid's outermost strip.
    """
    dtype = xp.float32 if dtype is None else dtype
    if tuple(data_shape) != (2,):
        raise ValueError(f"grid quadrature normalises 2D densities only; this model's examples "
                         f"have shape {tuple(data_shape)}")
    c, h = _midpoints(-limit, limit, int(n))
    grid = xp.stack(xp.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2)
    log_inside = _logsumexp(-_energies(energy, grid, dtype)) + 2.0 * math.log(h)
    c2, h2 = _midpoints(-2.0 * limit, 2.0 * limit, int(n) // 2)
    outer = xp.stack(xp.meshgrid(c2, c2, indexing="ij"), -1).reshape(-1, 2)
    r = xp.abs(outer).max(1)
    band = outer[r > limit]                                                # L < |x|_inf < 2L
    neg_e = -_energies(energy, band, dtype)
    log_band = _logsumexp(neg_e) + 2.0 * math.log(h2)
    log_z = float(xp.logaddexp(log_inside, log_band))
    strip = xp.abs(band).max(1) > 1.8 * limit                              # the outermost strip
    edge = math.exp(_logsumexp(neg_e[strip]) + 2.0 * math.log(h2) - log_z)
    if edge > max_edge:
        raise ValueError(f"the density leaves {edge:.2g} of its mass at the edge of the quadrature "
                         f"grid [-{2 * limit:g}, {2 * limit:g}]^2 (accepted: at most {max_edge:g}); "
                         "its log Z would miss what lies beyond")
    return log_z, edge
